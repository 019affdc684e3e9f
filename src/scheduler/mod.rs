//! [`DdimScheduler`]: the model's noise schedule, the inference timesteps, and the calls that
//! step a sample along them.
//!
//! - this file: construction, timesteps, and the scalars of a step ([`StepScalars`]);
//! - `step`: the step calls, one per destination (new arrays, caller buffers, in place) and one
//!   per different kind of step (inverse, per-item batch), all funnelled into the kernel;
//! - `noising`: `add_noise` and `get_velocity`, the forward process;
//! - `pipeline`: the pipelines' arithmetic around the scheduler (img2img strength, SDXL's
//!   base/refiner split, the inpainting blend);
//! - `slices`: the step and `add_noise` over plain slices with a shape.

use std::path::Path;

use ndarray::{Array, ArrayRef, Dimension};

use crate::coefficients::{check_eta, AffineStep, StepScalars};
use crate::config::{DdimConfig, TimestepSpacing};
use crate::schedule::Schedule;
use crate::timesteps::{check_custom, inference_timesteps};
use crate::{DdimError, DdimFloat};

mod noising;
mod pipeline;
mod slices;
mod step;

pub use pipeline::PartialSchedule;
pub(crate) use slices::check_len as check_slice_len;
pub use step::{DdimSchedulerOutput, StepOptions};

/// The DDIM sampler, with the behaviour and numbers of diffusers' `DDIMScheduler`.
///
/// Build it from a model's `scheduler_config.json` ([`DdimScheduler::from_pretrained`]) or a
/// [`DdimConfig`], call [`set_timesteps`](DdimScheduler::set_timesteps), then for every timestep
/// run the model on [`scale_model_input`](DdimScheduler::scale_model_input) and feed its output
/// to [`step`](DdimScheduler::step). Array methods are generic over the element type
/// ([`DdimFloat`]: `f32`, `f64`, and with the `half` feature `half::f16` and `half::bf16`), any
/// dimensionality, owned arrays and views. The scheduler is `Send + Sync + Clone` and stepping
/// takes `&self`, so one scheduler can serve many threads.
///
/// # Example
///
/// ```
/// use ddim::ndarray::Array4;
/// use ddim::{DdimConfig, DdimScheduler};
///
/// let mut scheduler = DdimScheduler::new(DdimConfig::default())?;
/// scheduler.set_timesteps(10)?;
/// assert_eq!(scheduler.timesteps(), &[900, 800, 700, 600, 500, 400, 300, 200, 100, 0]);
///
/// let mut latents = Array4::<f32>::from_elem((1, 4, 8, 8), 0.5) * scheduler.init_noise_sigma();
/// for &t in scheduler.timesteps() {
///     let input = scheduler.scale_model_input(&latents, t);
///     let eps = &input * 0.1; // stands in for the model
///     latents = scheduler.step(&eps, t, &latents)?.prev_sample;
/// }
/// assert!(latents.iter().all(|v| v.is_finite()));
/// # Ok::<(), ddim::DdimError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct DdimScheduler {
    config: DdimConfig,
    schedule: Schedule,
    timesteps: Vec<usize>,
    num_inference_steps: Option<usize>,
    /// Whether steps move to the next timestep of `timesteps` (custom schedules, quadratic
    /// spacing, `step_along_schedule`) rather than `T / n` timesteps back.
    along_schedule: bool,
}

impl DdimScheduler {
    /// Builds a scheduler from a configuration.
    ///
    /// # Errors
    ///
    /// [`DdimError::InvalidConfig`] when the config fails [`DdimConfig::validate`] (a key out
    /// of range, or a noise schedule that cannot be used).
    ///
    /// # Example
    ///
    /// ```
    /// use ddim::{DdimConfig, DdimScheduler, PredictionType};
    ///
    /// let config = DdimConfig { prediction_type: PredictionType::VPrediction, ..Default::default() };
    /// let scheduler = DdimScheduler::new(config)?;
    /// assert_eq!(scheduler.alphas_cumprod().len(), 1000);
    /// assert!(DdimScheduler::new(DdimConfig { num_train_timesteps: 0, ..Default::default() }).is_err());
    /// # Ok::<(), ddim::DdimError>(())
    /// ```
    pub fn new(config: DdimConfig) -> Result<Self, DdimError> {
        let schedule = config.schedule()?;
        Ok(DdimScheduler {
            config,
            schedule,
            timesteps: Vec::new(),
            num_inference_steps: None,
            along_schedule: false,
        })
    }

    /// Builds a scheduler from a diffusers model on disk.
    ///
    /// `path` may be a `scheduler_config.json` file, a folder holding one, or a model folder
    /// holding `scheduler/scheduler_config.json` (the layout of the Hugging Face hub).
    ///
    /// # Errors
    ///
    /// [`DdimError::ConfigNotFound`] listing the files looked for; then as
    /// [`DdimConfig::from_file`] and [`DdimScheduler::new`].
    ///
    /// # Example
    ///
    /// ```no_run
    /// let scheduler = ddim::DdimScheduler::from_pretrained("models/stable-diffusion-v1-5")?;
    /// # Ok::<(), ddim::DdimError>(())
    /// ```
    pub fn from_pretrained(path: impl AsRef<Path>) -> Result<Self, DdimError> {
        const FILE: &str = "scheduler_config.json";
        let path = path.as_ref();
        let tried = vec![
            path.to_path_buf(),
            path.join(FILE),
            path.join("scheduler").join(FILE),
        ];
        match tried.iter().find(|candidate| candidate.is_file()) {
            Some(file) => Self::new(DdimConfig::from_file(file)?),
            None => Err(DdimError::ConfigNotFound {
                path: path.to_path_buf(),
                tried,
            }),
        }
    }

    /// The configuration the scheduler was built from.
    pub fn config(&self) -> &DdimConfig {
        &self.config
    }

    /// `beta_t` for every training timestep, float32 as in the reference.
    pub fn betas(&self) -> &[f32] {
        &self.schedule.betas
    }

    /// `alpha_bar_t = prod_{s <= t} (1 - beta_s)` for every training timestep: the fraction of
    /// signal variance left at `t`. Decreasing, in `[0, 1]`.
    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.schedule.alphas_cumprod
    }

    /// The `alpha_bar` that the last step moves to: 1 when `set_alpha_to_one`, else `alpha_bar_0`.
    pub fn final_alpha_cumprod(&self) -> f32 {
        self.schedule.final_alpha_cumprod
    }

    /// Standard deviation of the initial noise: always 1 for DDIM. Multiply the initial
    /// Gaussian latents by it, as diffusers pipelines do.
    pub fn init_noise_sigma(&self) -> f32 {
        1.0
    }

    /// Chooses `num_inference_steps` timesteps for the sampling loop, following the config's
    /// `timestep_spacing` (and `steps_offset` for `leading`).
    ///
    /// The timesteps are those of the reference, with two exceptions that keep every timestep
    /// inside `0..num_train_timesteps`: `trailing` spacing drops the `-1` that the reference
    /// appends for some step counts (61 of 1000, for example), so there are always exactly
    /// `num_inference_steps` of them; `leading` spacing refuses a `steps_offset` that would
    /// reach `num_train_timesteps`.
    ///
    /// # Errors
    ///
    /// [`DdimError::InvalidNumInferenceSteps`] unless `1 <= num_inference_steps <=
    /// num_train_timesteps`; [`DdimError::ScheduleOutOfRange`] for such a `leading` schedule.
    /// On error the previous timesteps are kept.
    ///
    /// # Example
    ///
    /// ```
    /// use ddim::{DdimConfig, DdimScheduler, TimestepSpacing};
    ///
    /// let config = DdimConfig { timestep_spacing: TimestepSpacing::Trailing, ..Default::default() };
    /// let mut scheduler = DdimScheduler::new(config)?;
    /// scheduler.set_timesteps(4)?;
    /// assert_eq!(scheduler.timesteps(), &[999, 749, 499, 249]);
    /// assert!(scheduler.set_timesteps(0).is_err());
    /// # Ok::<(), ddim::DdimError>(())
    /// ```
    pub fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<(), DdimError> {
        self.timesteps = inference_timesteps(&self.config, num_inference_steps)?;
        self.num_inference_steps = Some(num_inference_steps);
        self.along_schedule = self.config.step_along_schedule
            || self.config.timestep_spacing == TimestepSpacing::Quadratic;
        Ok(())
    }

    /// Uses the caller's timesteps as the schedule: strictly decreasing, each below
    /// `num_train_timesteps`. Every step then moves to the next timestep of this list (the last
    /// to [`final_alpha_cumprod`](DdimScheduler::final_alpha_cumprod)), and
    /// [`num_inference_steps`](DdimScheduler::num_inference_steps) is the list's length.
    ///
    /// # Errors
    ///
    /// [`DdimError::InvalidTimesteps`] for an empty list, a timestep `>= num_train_timesteps`
    /// or a list that is not strictly decreasing. On error the previous schedule is kept.
    ///
    /// # Example
    ///
    /// ```
    /// use ddim::{DdimConfig, DdimScheduler};
    ///
    /// let mut scheduler = DdimScheduler::new(DdimConfig::default())?;
    /// scheduler.set_custom_timesteps(&[999, 700, 300, 50])?;
    /// let k = scheduler.step_scalars(700, 0.0)?;
    /// assert_eq!(k.prev_timestep, Some(300));
    /// assert!(scheduler.set_custom_timesteps(&[10, 20]).is_err());
    /// # Ok::<(), ddim::DdimError>(())
    /// ```
    pub fn set_custom_timesteps(&mut self, timesteps: &[usize]) -> Result<(), DdimError> {
        check_custom(timesteps, self.config.num_train_timesteps)?;
        self.timesteps = timesteps.to_vec();
        self.num_inference_steps = Some(timesteps.len());
        self.along_schedule = true;
        Ok(())
    }

    /// The timestep a step from `timestep` moves to: `timestep - num_train_timesteps /
    /// num_inference_steps` (the reference's rule), or, when steps move along the schedule
    /// (custom timesteps, `quadratic` spacing, [`DdimConfig::step_along_schedule`]), the next
    /// timestep of the schedule. `None` past the end, where the step moves to
    /// [`final_alpha_cumprod`](DdimScheduler::final_alpha_cumprod).
    ///
    /// # Errors
    ///
    /// [`DdimError::TimestepsNotSet`], [`DdimError::TimestepOutOfRange`], and
    /// [`DdimError::TimestepNotInSchedule`] when steps move along a schedule that does not hold
    /// `timestep`.
    ///
    /// # Example
    ///
    /// ```
    /// use ddim::{DdimConfig, DdimScheduler};
    ///
    /// let mut scheduler = DdimScheduler::new(DdimConfig::default())?;
    /// scheduler.set_timesteps(10)?;
    /// assert_eq!(scheduler.prev_timestep(900)?, Some(800));
    /// assert_eq!(scheduler.prev_timestep(50)?, None); // the last step
    /// scheduler.set_custom_timesteps(&[999, 600, 10])?;
    /// assert_eq!(scheduler.prev_timestep(600)?, Some(10));
    /// # Ok::<(), ddim::DdimError>(())
    /// ```
    pub fn prev_timestep(&self, timestep: usize) -> Result<Option<usize>, DdimError> {
        let n = self.num_inference_steps.ok_or(DdimError::TimestepsNotSet)?;
        self.alpha_bar(timestep)?;
        if !self.along_schedule {
            return Ok(timestep.checked_sub(self.config.num_train_timesteps / n));
        }
        let position = self.schedule_position(timestep)?;
        Ok(self.timesteps.get(position + 1).copied())
    }

    /// Where `timestep` sits in the (strictly decreasing) schedule.
    fn schedule_position(&self, timestep: usize) -> Result<usize, DdimError> {
        self.timesteps
            .binary_search_by(|probe| timestep.cmp(probe))
            .map_err(|_| DdimError::TimestepNotInSchedule { timestep })
    }

    /// The inference timesteps, in the descending order the loop visits them; empty before
    /// [`set_timesteps`](DdimScheduler::set_timesteps).
    pub fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    /// The step count of the last successful [`set_timesteps`](DdimScheduler::set_timesteps).
    pub fn num_inference_steps(&self) -> Option<usize> {
        self.num_inference_steps
    }

    /// The model input at `timestep`: DDIM does not scale it, so this is a copy of `sample`.
    /// Call it anyway, so that the loop stays correct under other schedulers' conventions.
    ///
    /// ```
    /// use ddim::ndarray::Array2;
    /// use ddim::{DdimConfig, DdimScheduler};
    ///
    /// let scheduler = DdimScheduler::new(DdimConfig::default())?;
    /// let latents = Array2::<f32>::ones((1, 4));
    /// assert_eq!(scheduler.scale_model_input(&latents, 999), latents);
    /// # Ok::<(), ddim::DdimError>(())
    /// ```
    #[must_use]
    pub fn scale_model_input<T: DdimFloat, D: Dimension>(
        &self,
        sample: &ArrayRef<T, D>,
        timestep: usize,
    ) -> Array<T, D> {
        let _ = timestep;
        sample.to_owned()
    }

    /// `alpha_bar` at a training timestep.
    fn alpha_bar(&self, timestep: usize) -> Result<f32, DdimError> {
        self.schedule
            .alphas_cumprod
            .get(timestep)
            .copied()
            .ok_or(DdimError::TimestepOutOfRange {
                timestep,
                num_train_timesteps: self.config.num_train_timesteps,
            })
    }

    /// The float32 scalars of a step from `timestep` with `options` (see [`StepScalars`]).
    ///
    /// # Errors
    ///
    /// [`DdimError::InvalidEta`] for a negative or non-finite `eta`, and as
    /// [`prev_timestep`](DdimScheduler::prev_timestep).
    ///
    /// # Example
    ///
    /// ```
    /// use ddim::{DdimConfig, DdimScheduler};
    ///
    /// let mut scheduler = DdimScheduler::new(DdimConfig::default())?;
    /// scheduler.set_timesteps(50)?;
    /// let deterministic = scheduler.step_scalars(500, 0.0)?;
    /// let stochastic = scheduler.step_scalars(500, 1.0)?;
    /// assert_eq!(deterministic.sigma, 0.0);
    /// assert!(stochastic.sigma > 0.0 && stochastic.direction < deterministic.direction);
    /// assert!(scheduler.step_scalars(500, -1.0).is_err());
    /// # Ok::<(), ddim::DdimError>(())
    /// ```
    pub fn step_scalars(&self, timestep: usize, eta: f64) -> Result<StepScalars, DdimError> {
        let eta = check_eta(eta)?;
        let prev_timestep = self.prev_timestep(timestep)?;
        let alpha_bar = self.alpha_bar(timestep)?;
        let alpha_bar_prev = self.alpha_bar_or_final(prev_timestep)?;
        Ok(StepScalars::between(
            timestep,
            prev_timestep,
            alpha_bar,
            alpha_bar_prev,
            eta,
        ))
    }

    /// The step from `timestep` as an affine map of the sample, the model output and the noise
    /// ([`AffineStep`]), for applying it to tensors this crate cannot reach: a GPU tensor of
    /// candle, tch or burn takes two multiply-adds per step, and nothing is copied to the host.
    ///
    /// The coefficients cover every prediction type and `eta` (with `use_clipped_model_output`
    /// irrelevant: without clipping it changes nothing but rounding). Where the step itself
    /// divides by zero (epsilon prediction at the last timestep of a zero-terminal-SNR schedule,
    /// where `alpha_bar = 0`), coefficients are infinite or NaN, as the step's results are.
    ///
    /// # Errors
    ///
    /// [`DdimError::NotAffine`] naming the option when `clip_sample` or `thresholding` is on
    /// (they clamp `x0`, so the step is not affine); then as
    /// [`step_scalars`](DdimScheduler::step_scalars).
    ///
    /// # Example
    ///
    /// ```
    /// use ddim::ndarray::Array1;
    /// use ddim::{DdimConfig, DdimScheduler, PredictionType};
    ///
    /// let config = DdimConfig {
    ///     clip_sample: false,
    ///     prediction_type: PredictionType::VPrediction,
    ///     ..Default::default()
    /// };
    /// let mut scheduler = DdimScheduler::new(config)?;
    /// scheduler.set_timesteps(25)?;
    /// let (x, v) = (Array1::from(vec![0.3f32, -1.2]), Array1::from(vec![0.5f32, 0.1]));
    /// let t = scheduler.timesteps()[3];
    ///
    /// // What a device tensor would do: two multiply-adds with scalars.
    /// let a = scheduler.affine_step(t, 0.0)?;
    /// let prev = &x * a.prev_from_sample as f32 + &v * a.prev_from_model_output as f32;
    /// let x0 = &x * a.x0_from_sample as f32 + &v * a.x0_from_model_output as f32;
    ///
    /// let out = scheduler.step(&v, t, &x)?;
    /// assert!(prev.iter().zip(&out.prev_sample).all(|(a, b)| (a - b).abs() < 1e-5));
    /// assert!(x0.iter().zip(&out.pred_original_sample).all(|(a, b)| (a - b).abs() < 1e-5));
    /// # Ok::<(), ddim::DdimError>(())
    /// ```
    pub fn affine_step(&self, timestep: usize, eta: f64) -> Result<AffineStep, DdimError> {
        let option = if self.config.thresholding {
            Some("thresholding")
        } else if self.config.clip_sample {
            Some("clip_sample")
        } else {
            None
        };
        if let Some(option) = option {
            return Err(DdimError::NotAffine { option });
        }
        let scalars = self.step_scalars(timestep, eta)?;
        Ok(scalars.affine(self.config.prediction_type))
    }

    /// The float32 scalars of an inversion step to `timestep` (see
    /// [`inverse_step`](DdimScheduler::inverse_step)): the roles of the two noise levels swap,
    /// so `alpha_bar` is the level the sample is at (`prev_timestep`'s, or
    /// [`final_alpha_cumprod`](DdimScheduler::final_alpha_cumprod) below the first training
    /// timestep) and `alpha_bar_prev` the level it moves to (`timestep`'s); `sigma` is 0.
    ///
    /// # Errors
    ///
    /// As [`prev_timestep`](DdimScheduler::prev_timestep).
    pub fn inverse_step_scalars(&self, timestep: usize) -> Result<StepScalars, DdimError> {
        let source = self.prev_timestep(timestep)?;
        let alpha_bar = self.alpha_bar_or_final(source)?;
        let alpha_bar_prev = self.alpha_bar(timestep)?;
        Ok(StepScalars::between(
            timestep,
            source,
            alpha_bar,
            alpha_bar_prev,
            0.0,
        ))
    }

    /// `alpha_bar` at `timestep`, or the final (inversion: initial) one for `None`.
    fn alpha_bar_or_final(&self, timestep: Option<usize>) -> Result<f32, DdimError> {
        match timestep {
            Some(t) => self.alpha_bar(t),
            None => Ok(self.schedule.final_alpha_cumprod),
        }
    }
}
