//! [`DdimScheduler`]: turns a timestep into the scalars of the DDIM update and applies them.

use std::path::Path;

use ndarray::{Array, ArrayBase, ArrayView, Axis, Data, Dimension, Slice};

use crate::config::{DdimConfig, TimestepSpacing};
use crate::kernel::weighted_sum;
use crate::schedule::Schedule;
use crate::step::StepOptions;
use crate::timesteps::{check_custom, inference_timesteps};
use crate::{DdimError, DdimFloat};

/// The scalars of one DDIM step, in float32, computed with the reference's float32 operations.
///
/// [`DdimScheduler::step`] applies them to arrays; they are public for callers who apply the
/// update themselves, for example on GPU tensors, and for checking a port against the
/// reference. With `a = alpha_bar`, `a' = alpha_bar_prev` and `s = sigma`, the step is
/// (DDIM paper eq. 12)
///
/// ```text
/// x0   = (sample - sqrt(1 - a) * eps) / sqrt(a)          for epsilon prediction
/// prev = sqrt(a') * x0 + direction * eps + s * noise,     direction = sqrt(1 - a' - s^2)
/// ```
///
/// # Example
///
/// ```
/// use ddim::{DdimConfig, DdimScheduler, StepOptions};
///
/// let mut scheduler = DdimScheduler::new(DdimConfig::default())?;
/// scheduler.set_timesteps(10)?;
/// let k = scheduler.step_scalars(900, &StepOptions::default())?;
/// assert_eq!(k.prev_timestep, Some(800));
/// assert_eq!(k.alpha_bar, scheduler.alphas_cumprod()[900]);
/// assert_eq!(k.sigma, 0.0); // eta = 0
/// assert!((k.direction - (1.0 - k.alpha_bar_prev).sqrt()).abs() < 1e-7);
/// # Ok::<(), ddim::DdimError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepScalars {
    /// The timestep stepped from.
    pub timestep: usize,
    /// The timestep stepped to, `timestep - num_train_timesteps / num_inference_steps`, or
    /// `None` when that is below 0 (the last step, which moves to `final_alpha_cumprod`).
    pub prev_timestep: Option<usize>,
    /// `alpha_bar` at `timestep`.
    pub alpha_bar: f32,
    /// `alpha_bar` at `prev_timestep`, or [`DdimScheduler::final_alpha_cumprod`].
    pub alpha_bar_prev: f32,
    /// `sqrt(alpha_bar)`.
    pub sqrt_alpha_bar: f32,
    /// `sqrt(1 - alpha_bar)`.
    pub sqrt_one_minus_alpha_bar: f32,
    /// `sqrt(alpha_bar_prev)`.
    pub sqrt_alpha_bar_prev: f32,
    /// `sigma = eta * sqrt((1 - a') / (1 - a) * (1 - a / a'))` (DDIM paper eq. 16); 0 when
    /// `eta == 0`.
    pub sigma: f32,
    /// `sqrt(1 - alpha_bar_prev - sigma^2)`, with the difference clamped at 0 where rounding
    /// makes it negative (the reference returns NaN there).
    pub direction: f32,
}

/// The DDIM sampler, with the behaviour and numbers of diffusers' `DDIMScheduler`.
///
/// Build it from a model's `scheduler_config.json` ([`DdimScheduler::from_pretrained`]) or a
/// [`DdimConfig`], call [`set_timesteps`](DdimScheduler::set_timesteps), then for every timestep
/// run the model on [`scale_model_input`](DdimScheduler::scale_model_input) and feed its output
/// to [`step`](DdimScheduler::step). Array methods are generic over `f32` and `f64`, any
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
    /// [`DdimError::InvalidConfig`] when the config fails [`DdimConfig::validate`] or its betas
    /// fall outside `[0, 1)`.
    pub fn new(config: DdimConfig) -> Result<Self, DdimError> {
        let schedule = Schedule::new(&config)?;
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
    /// use ddim::{DdimConfig, DdimScheduler, StepOptions};
    ///
    /// let mut scheduler = DdimScheduler::new(DdimConfig::default())?;
    /// scheduler.set_custom_timesteps(&[999, 700, 300, 50])?;
    /// let k = scheduler.step_scalars(700, &StepOptions::default())?;
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
    pub fn scale_model_input<T, S, D>(
        &self,
        sample: &ArrayBase<S, D>,
        timestep: usize,
    ) -> Array<T, D>
    where
        T: DdimFloat,
        S: Data<Elem = T>,
        D: Dimension,
    {
        let _ = timestep;
        sample.to_owned()
    }

    /// Diffuses clean samples to the given timesteps, one per batch item (axis 0):
    /// `sqrt(alpha_bar_t) * original_samples + sqrt(1 - alpha_bar_t) * noise` (DDPM eq. 4).
    ///
    /// The square roots are taken in the element type, as the reference does here.
    ///
    /// # Errors
    ///
    /// [`DdimError::ShapeMismatch`] when the shapes differ; [`DdimError::TooFewAxes`] for a
    /// 0-dimensional array; [`DdimError::BatchSizeMismatch`] unless there is one timestep per
    /// batch item; [`DdimError::TimestepOutOfRange`] for a timestep `>= num_train_timesteps`.
    ///
    /// # Example
    ///
    /// ```
    /// use ddim::ndarray::array;
    /// use ddim::{DdimConfig, DdimScheduler};
    ///
    /// let scheduler = DdimScheduler::new(DdimConfig::default())?;
    /// let x0 = array![[1.0f32, -1.0], [0.5, 0.0]];
    /// let noise = array![[0.0f32, 0.0], [1.0, 1.0]];
    /// let noisy = scheduler.add_noise(&x0, &noise, &[0, 999])?;
    /// assert!((noisy[[0, 0]] - 1.0).abs() < 1e-4); // almost no noise at t = 0
    /// assert!((noisy[[1, 1]] - 1.0).abs() < 1e-2); // almost only noise at t = 999
    /// # Ok::<(), ddim::DdimError>(())
    /// ```
    pub fn add_noise<T, S1, S2, D>(
        &self,
        original_samples: &ArrayBase<S1, D>,
        noise: &ArrayBase<S2, D>,
        timesteps: &[usize],
    ) -> Result<Array<T, D>, DdimError>
    where
        T: DdimFloat,
        S1: Data<Elem = T>,
        S2: Data<Elem = T>,
        D: Dimension,
    {
        self.per_item_blend(
            original_samples.view(),
            noise.view(),
            timesteps,
            |sa, sb| (sa, sb),
        )
    }

    /// The velocity target of v-prediction models for the given timesteps, one per batch item
    /// (axis 0): `sqrt(alpha_bar_t) * noise - sqrt(1 - alpha_bar_t) * sample`
    /// (Salimans and Ho 2022, section 4).
    ///
    /// # Errors
    ///
    /// As [`add_noise`](DdimScheduler::add_noise).
    pub fn get_velocity<T, S1, S2, D>(
        &self,
        sample: &ArrayBase<S1, D>,
        noise: &ArrayBase<S2, D>,
        timesteps: &[usize],
    ) -> Result<Array<T, D>, DdimError>
    where
        T: DdimFloat,
        S1: Data<Elem = T>,
        S2: Data<Elem = T>,
        D: Dimension,
    {
        self.per_item_blend(sample.view(), noise.view(), timesteps, |sa, sb| (-sb, sa))
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
    /// [`DdimError::InvalidEta`], and as [`prev_timestep`](DdimScheduler::prev_timestep).
    pub fn step_scalars(
        &self,
        timestep: usize,
        options: &StepOptions,
    ) -> Result<StepScalars, DdimError> {
        let eta = options.checked_eta()?;
        let prev_timestep = self.prev_timestep(timestep)?;
        let alpha_bar = self.alpha_bar(timestep)?;
        let alpha_bar_prev = self.alpha_bar_or_final(prev_timestep)?;
        Ok(scalars(
            timestep,
            prev_timestep,
            alpha_bar,
            alpha_bar_prev,
            eta,
        ))
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
        Ok(scalars(timestep, source, alpha_bar, alpha_bar_prev, 0.0))
    }

    /// `alpha_bar` at `timestep`, or the final (inversion: initial) one for `None`.
    fn alpha_bar_or_final(&self, timestep: Option<usize>) -> Result<f32, DdimError> {
        match timestep {
            Some(t) => self.alpha_bar(t),
            None => Ok(self.schedule.final_alpha_cumprod),
        }
    }

    /// `w_a * a + w_b * b` per batch item, with `(w_a, w_b) = weights(sqrt(alpha_bar_t),
    /// sqrt(1 - alpha_bar_t))` in the element type; `b` is the noise.
    fn per_item_blend<T, D>(
        &self,
        a: ArrayView<'_, T, D>,
        b: ArrayView<'_, T, D>,
        timesteps: &[usize],
        weights: impl Fn(T, T) -> (T, T),
    ) -> Result<Array<T, D>, DdimError>
    where
        T: DdimFloat,
        D: Dimension,
    {
        check_same_shape("noise", b.shape(), a.shape())?;
        if a.ndim() == 0 {
            return Err(DdimError::TooFewAxes {
                operation: "per-batch-item timesteps (axis 0 is the batch)",
                found: 0,
                required: 1,
            });
        }
        let batch_size = a.len_of(Axis(0));
        if timesteps.len() != batch_size {
            return Err(DdimError::BatchSizeMismatch {
                count: timesteps.len(),
                batch_size,
            });
        }
        let alphas = timesteps
            .iter()
            .map(|&t| self.alpha_bar(t).map(T::from_f32))
            .collect::<Result<Vec<T>, _>>()?;
        let mut out = Array::from_elem(a.raw_dim(), T::ZERO);
        for (i, alpha) in alphas.into_iter().enumerate() {
            let item = Slice::from(i..=i);
            let (wa, wb) = weights(alpha.sqrt(), (T::ONE - alpha).sqrt());
            weighted_sum(
                wa,
                a.slice_axis(Axis(0), item),
                wb,
                b.slice_axis(Axis(0), item),
                out.slice_axis_mut(Axis(0), item),
            );
        }
        Ok(out)
    }
}

/// The scalars of a step between two noise levels, with the reference's float32 operations.
fn scalars(
    timestep: usize,
    prev_timestep: Option<usize>,
    alpha_bar: f32,
    alpha_bar_prev: f32,
    eta: f64,
) -> StepScalars {
    let beta = 1.0 - alpha_bar;
    let beta_prev = 1.0 - alpha_bar_prev;
    // Not evaluated at eta = 0, where sigma is 0 whatever the tables.
    let sigma = if eta > 0.0 {
        let variance = non_negative((beta_prev / beta) * (1.0 - alpha_bar / alpha_bar_prev));
        eta as f32 * variance.sqrt()
    } else {
        0.0
    };
    StepScalars {
        timestep,
        prev_timestep,
        alpha_bar,
        alpha_bar_prev,
        sqrt_alpha_bar: alpha_bar.sqrt(),
        sqrt_one_minus_alpha_bar: beta.sqrt(),
        sqrt_alpha_bar_prev: alpha_bar_prev.sqrt(),
        sigma,
        direction: non_negative(beta_prev - sigma * sigma).sqrt(),
    }
}

/// Clamps a value that can only be negative through rounding to 0 (NaN passes through).
fn non_negative(x: f32) -> f32 {
    if x < 0.0 {
        0.0
    } else {
        x
    }
}

/// Checks that `found` (of the array called `name`) equals the sample's shape.
pub(crate) fn check_same_shape(
    name: &'static str,
    found: &[usize],
    expected: &[usize],
) -> Result<(), DdimError> {
    if found == expected {
        Ok(())
    } else {
        Err(DdimError::ShapeMismatch {
            name,
            found: found.to_vec(),
            reference_name: "sample",
            expected: expected.to_vec(),
        })
    }
}
