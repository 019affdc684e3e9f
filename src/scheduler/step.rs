//! The step calls: one per destination of the result and one per different kind of step.
//!
//! | call | result goes to | step |
//! | --- | --- | --- |
//! | [`step`](DdimScheduler::step) | new arrays | deterministic (eta = 0), the one-line call |
//! | [`step_with`](DdimScheduler::step_with) | new arrays | with [`StepOptions`] |
//! | [`step_into`](DdimScheduler::step_into) | the caller's buffers | with options |
//! | [`step_in_place`](DdimScheduler::step_in_place) | the sample itself | with options |
//! | [`inverse_step`](DdimScheduler::inverse_step) | new arrays | DDIM inversion |
//! | [`step_batch`](DdimScheduler::step_batch) | new arrays | one timestep per batch item |
//!
//! Every call checks all its arguments first, then realises the noise source, computes the
//! step's scalars and runs the kernel once (per batch item when thresholding or when items sit
//! at different timesteps).

use ndarray::{Array, ArrayRef, ArrayViewD, Axis, Dimension, IxDyn, Slice};

use super::DdimScheduler;
use crate::checks::{one_timestep_per_item, same_shape};
use crate::coefficients::{check_eta, StepScalars};
use crate::float::Arithmetic;
use crate::kernel::{fused_step, over_items, Noise, Target, Update, X0Bounds};
use crate::noise::NoiseSource;
use crate::threshold::{item_threshold, keep_for_next_step};
use crate::{DdimError, DdimFloat};

/// The options of a step: `eta`, where its noise comes from, and
/// `use_clipped_model_output`. [`Default`] is deterministic DDIM (eta = 0, no noise).
///
/// Build one per step (it borrows the noise source):
///
/// ```
/// use ddim::ndarray::Array2;
/// use ddim::{DdimConfig, DdimScheduler, NoiseSource, StepOptions, TorchGenerator};
///
/// let mut scheduler = DdimScheduler::new(DdimConfig::default())?;
/// scheduler.set_timesteps(10)?;
/// let mut generator = TorchGenerator::manual_seed(0);
/// let mut latents: Array2<f32> = generator.randn((1, 16));
/// for &t in scheduler.timesteps() {
///     let eps = &latents * 0.1; // the model
///     let options = StepOptions {
///         eta: 0.5,
///         noise: NoiseSource::Torch(&mut generator),
///         ..Default::default()
///     };
///     scheduler.step_in_place(&eps, t, &mut latents, options)?;
/// }
/// # Ok::<(), ddim::DdimError>(())
/// ```
#[derive(Debug, Default)]
pub struct StepOptions<'a, T> {
    /// Weight of the fresh noise, `eta` of DDIM paper eq. 16: `sigma_t = eta *
    /// sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t)) * sqrt(1 - alpha_bar_t / alpha_bar_prev)`.
    /// 0 is deterministic DDIM, 1 is the DDPM posterior. Must be finite and `>= 0`; `> 0` needs
    /// a noise source.
    pub eta: f64,
    /// Where the noise comes from when `eta > 0` (see [`NoiseSource`]).
    pub noise: NoiseSource<'a, T>,
    /// Re-derive the noise prediction from the clipped or thresholded `x0`
    /// (`eps = (sample - sqrt(alpha_bar_t) * x0) / sqrt(1 - alpha_bar_t)`) instead of using the
    /// model's own. Without clipping or thresholding it changes nothing but rounding.
    pub use_clipped_model_output: bool,
}

/// The result of one step.
#[derive(Debug, Clone, PartialEq)]
pub struct DdimSchedulerOutput<T, D: Dimension> {
    /// `x_{t-1}`: the sample at the previous timestep, the next input of the loop.
    pub prev_sample: Array<T, D>,
    /// The predicted clean sample `x0` at this step, after clipping or thresholding; useful for
    /// previews.
    pub pred_original_sample: Array<T, D>,
}

impl<T: DdimFloat, D: Dimension> DdimSchedulerOutput<T, D> {
    /// Zero-filled arrays of the given shape, for example as the buffers of
    /// [`DdimScheduler::step_into`].
    ///
    /// ```
    /// use ddim::ndarray::ShapeBuilder;
    ///
    /// let out = ddim::DdimSchedulerOutput::<f32, _>::zeros((1, 4, 64, 64));
    /// assert_eq!(out.prev_sample.shape(), &[1, 4, 64, 64]);
    /// assert!(out.pred_original_sample.iter().all(|&v| v == 0.0));
    ///
    /// // Both arrays get the memory order asked for (column-major here).
    /// let out = ddim::DdimSchedulerOutput::<f64, _>::zeros((2, 3).f());
    /// assert!(out.prev_sample.t().is_standard_layout());
    /// assert!(out.pred_original_sample.t().is_standard_layout());
    /// ```
    pub fn zeros<Sh: ndarray::ShapeBuilder<Dim = D>>(shape: Sh) -> Self {
        // Two fresh zero arrays rather than one and its copy: `f32` and `f64` zeros come from
        // zeroed allocations, which need no pass over the memory.
        let shape = shape.into_shape_with_order();
        DdimSchedulerOutput {
            prev_sample: Array::from_elem(shape.clone(), T::ZERO),
            pred_original_sample: Array::from_elem(shape, T::ZERO),
        }
    }
}

/// Which step: from one timestep, its inversion, or one timestep per batch item.
#[derive(Clone, Copy)]
enum When<'a> {
    Forward(usize),
    Inverse(usize),
    PerItem(&'a [usize]),
}

impl DdimScheduler {
    /// One deterministic DDIM step (eta = 0, DDIM paper eq. 12) from `timestep` to the previous
    /// timestep of the schedule; the one-line call of a sampling loop.
    ///
    /// With `alpha_bar_t` at `timestep` and `alpha_bar_prev` at
    /// [`prev_timestep`](DdimScheduler::prev_timestep)`(timestep)` (or
    /// [`final_alpha_cumprod`](DdimScheduler::final_alpha_cumprod) past the last one): `x0` and
    /// `eps` are read from the model output according to the prediction type, `x0` is
    /// thresholded or clipped if configured, and
    /// `prev_sample = sqrt(alpha_bar_prev) * x0 + sqrt(1 - alpha_bar_prev) * eps`.
    ///
    /// `timestep` may be any training timestep, on the schedule or not, as in the reference
    /// (unless steps move along the schedule). The arrays may be owned arrays or views of any
    /// layout and dimensionality; the result is two new arrays.
    /// [`step_with`](DdimScheduler::step_with) takes options (eta, noise),
    /// [`step_into`](DdimScheduler::step_into) and [`step_in_place`](DdimScheduler::step_in_place)
    /// write into buffers instead.
    ///
    /// # Errors
    ///
    /// [`DdimError::TimestepsNotSet`] before `set_timesteps`; [`DdimError::TimestepOutOfRange`]
    /// for `timestep >= num_train_timesteps`; [`DdimError::TimestepNotInSchedule`] for a
    /// timestep off a schedule that steps move along; [`DdimError::ShapeMismatch`] when the
    /// shapes of `model_output` and `sample` differ; [`DdimError::TooFewAxes`] when
    /// thresholding an array with fewer than two axes (batch and features).
    ///
    /// # Example
    ///
    /// ```
    /// use ddim::ndarray::Array4;
    /// use ddim::{DdimConfig, DdimScheduler};
    ///
    /// let mut scheduler = DdimScheduler::new(DdimConfig::default())?;
    /// scheduler.set_timesteps(10)?;
    /// let mut latents = Array4::<f32>::from_elem((1, 4, 8, 8), 0.5);
    /// for &t in scheduler.timesteps() {
    ///     let eps = &latents * 0.1; // the model
    ///     let out = scheduler.step(&eps, t, &latents)?;
    ///     latents = out.prev_sample;
    /// }
    /// assert!(scheduler.step(&latents, 999, &latents.view()).is_ok()); // views work too
    /// # Ok::<(), ddim::DdimError>(())
    /// ```
    pub fn step<T: DdimFloat, D: Dimension>(
        &self,
        model_output: &ArrayRef<T, D>,
        timestep: usize,
        sample: &ArrayRef<T, D>,
    ) -> Result<DdimSchedulerOutput<T, D>, DdimError> {
        self.step_with(model_output, timestep, sample, StepOptions::default())
    }

    /// A step with options: `eta` and its noise source (DDIM paper eq. 12 with `sigma_t` of
    /// eq. 16: `prev_sample` gains `sigma_t * noise` and the direction term becomes
    /// `sqrt(1 - alpha_bar_prev - sigma_t^2) * eps`), and `use_clipped_model_output`.
    ///
    /// If rounding makes `1 - alpha_bar_prev - sigma_t^2` negative (eta = 1 at a
    /// zero-terminal-SNR schedule's first step), it is taken as 0; the reference returns NaN
    /// there. For `eta > 1` the same clamp applies. A [`NoiseSource::Rng`] or
    /// [`NoiseSource::Torch`] generator draws nothing when `eta == 0`, and is left untouched
    /// when the call fails.
    ///
    /// # Errors
    ///
    /// As [`step`](DdimScheduler::step), plus [`DdimError::InvalidEta`] for a negative or
    /// non-finite eta, [`DdimError::MissingNoise`] for `eta > 0` without a noise source, and
    /// [`DdimError::ShapeMismatch`] for given noise of another shape.
    ///
    /// # Example
    ///
    /// ```
    /// use ddim::ndarray::Array2;
    /// use ddim::{DdimConfig, DdimScheduler, NoiseSource, StepOptions};
    ///
    /// let mut scheduler = DdimScheduler::new(DdimConfig::default())?;
    /// scheduler.set_timesteps(20)?;
    /// let sample = Array2::<f64>::zeros((2, 3));
    /// let eps = Array2::<f64>::ones((2, 3));
    /// let noise = Array2::<f64>::from_elem((2, 3), 0.3);
    /// let options = StepOptions { eta: 1.0, noise: NoiseSource::given(&noise), ..Default::default() };
    /// let out = scheduler.step_with(&eps, 500, &sample, options)?;
    /// let k = scheduler.step_scalars(500, 1.0)?;
    /// let x0 = out.pred_original_sample[[0, 0]];
    /// let expected = f64::from(k.sqrt_alpha_bar_prev) * x0
    ///     + f64::from(k.direction) * 1.0
    ///     + f64::from(k.sigma) * 0.3;
    /// assert!((out.prev_sample[[0, 0]] - expected).abs() < 1e-12);
    /// # Ok::<(), ddim::DdimError>(())
    /// ```
    pub fn step_with<T: DdimFloat, D: Dimension>(
        &self,
        model_output: &ArrayRef<T, D>,
        timestep: usize,
        sample: &ArrayRef<T, D>,
        options: StepOptions<'_, T>,
    ) -> Result<DdimSchedulerOutput<T, D>, DdimError> {
        self.to_new_arrays(model_output, When::Forward(timestep), sample, options)
    }

    /// A step with options that writes `prev_sample` and `pred_original_sample` into the
    /// caller's buffers (owned arrays or mutable views of the sample's shape) instead of
    /// allocating: once a call of a given shape has run on a thread, further calls of that
    /// shape make no heap allocation, whatever the noise source, except that arrays of more
    /// than four axes allocate their index vectors.
    ///
    /// Dynamic thresholding needs scratch space for one batch item (one integer per element);
    /// it lives in a thread-local buffer, so the scheduler itself stays immutable and can be
    /// shared by any number of threads. The buffer is reused from step to step and gives its
    /// memory back when a step needs far less than it holds: between steps a thread keeps at
    /// most four times the last thresholded item's elements, or 65,536 elements if that is
    /// more (256 KiB for `f32` and 16-bit types, 512 KiB for `f64`).
    ///
    /// # Errors
    ///
    /// As [`step_with`](DdimScheduler::step_with), and [`DdimError::ShapeMismatch`] when a
    /// buffer's shape is not the sample's. On error the buffers are left untouched.
    ///
    /// # Example
    ///
    /// ```
    /// use ddim::ndarray::Array4;
    /// use ddim::{DdimConfig, DdimScheduler, DdimSchedulerOutput, StepOptions};
    ///
    /// let mut scheduler = DdimScheduler::new(DdimConfig::default())?;
    /// scheduler.set_timesteps(10)?;
    /// let mut latents = Array4::<f32>::from_elem((1, 4, 8, 8), 0.5);
    /// let mut out = DdimSchedulerOutput::zeros(latents.raw_dim());
    /// for &t in scheduler.timesteps() {
    ///     let eps = &latents * 0.1; // the model
    ///     let (prev, x0) = (&mut out.prev_sample, &mut out.pred_original_sample);
    ///     scheduler.step_into(&eps, t, &latents, StepOptions::default(), prev, x0)?;
    ///     std::mem::swap(&mut latents, &mut out.prev_sample);
    /// }
    /// # Ok::<(), ddim::DdimError>(())
    /// ```
    pub fn step_into<T: DdimFloat, D: Dimension>(
        &self,
        model_output: &ArrayRef<T, D>,
        timestep: usize,
        sample: &ArrayRef<T, D>,
        options: StepOptions<'_, T>,
        prev_sample: &mut ArrayRef<T, D>,
        pred_original_sample: &mut ArrayRef<T, D>,
    ) -> Result<(), DdimError> {
        same_shape("prev_sample", prev_sample.shape(), "sample", sample.shape())?;
        let x0_shape = pred_original_sample.shape();
        same_shape("pred_original_sample", x0_shape, "sample", sample.shape())?;
        let target = Target::Separate {
            sample: sample.view().into_dyn(),
            prev_sample: prev_sample.view_mut().into_dyn(),
            pred_original_sample: pred_original_sample.view_mut().into_dyn(),
        };
        let m = model_output.view().into_dyn();
        self.run(m, When::Forward(timestep), target, options)
    }

    /// A step with options that overwrites `sample` with `prev_sample`, for loops that keep a
    /// single latent buffer; `pred_original_sample` is not kept (use
    /// [`step_into`](DdimScheduler::step_into) for it). Allocation-free as `step_into`.
    ///
    /// # Errors
    ///
    /// As [`step_with`](DdimScheduler::step_with). On error the sample is left untouched.
    ///
    /// # Example
    ///
    /// ```
    /// use ddim::ndarray::Array4;
    /// use ddim::{DdimConfig, DdimScheduler, StepOptions};
    ///
    /// let mut scheduler = DdimScheduler::new(DdimConfig::default())?;
    /// scheduler.set_timesteps(10)?;
    /// let mut latents = Array4::<f32>::from_elem((1, 4, 8, 8), 0.5);
    /// for &t in scheduler.timesteps() {
    ///     let eps = &latents * 0.1; // the model
    ///     scheduler.step_in_place(&eps, t, &mut latents, StepOptions::default())?;
    /// }
    /// # Ok::<(), ddim::DdimError>(())
    /// ```
    pub fn step_in_place<T: DdimFloat, D: Dimension>(
        &self,
        model_output: &ArrayRef<T, D>,
        timestep: usize,
        sample: &mut ArrayRef<T, D>,
        options: StepOptions<'_, T>,
    ) -> Result<(), DdimError> {
        let target = Target::InPlace(sample.view_mut().into_dyn());
        let m = model_output.view().into_dyn();
        self.run(m, When::Forward(timestep), target, options)
    }

    /// One DDIM inversion step (DDIM paper section 4.3, as diffusers' `DDIMInverseScheduler`
    /// takes it), moving `sample` up the noise schedule to `timestep`: from the noise level of
    /// [`prev_timestep`](DdimScheduler::prev_timestep)`(timestep)` (or, below the first
    /// training timestep, the initial `alpha_bar`: 1 with `set_alpha_to_one`, else
    /// `alpha_bar_0`, the reference inverse scheduler's reading of that key), with `x0` and
    /// `eps` read from `model_output` at that lower level and
    /// `prev_sample = sqrt(alpha_bar_t) * x0 + sqrt(1 - alpha_bar_t) * eps`.
    ///
    /// An inversion loop visits the schedule in ascending order:
    /// `for &t in scheduler.timesteps().iter().rev()`, evaluating the model at `t` as the
    /// reference does. Like the reference, inversion is deterministic and applies
    /// `clip_sample` but not dynamic thresholding. Unlike it, it also works with `linspace`
    /// spacing and never starts from the spurious timestep `-1` of `trailing` spacing.
    ///
    /// # Errors
    ///
    /// As [`step`](DdimScheduler::step).
    ///
    /// # Example
    ///
    /// ```
    /// use ddim::ndarray::Array2;
    /// use ddim::{DdimConfig, DdimScheduler};
    ///
    /// let mut scheduler = DdimScheduler::new(DdimConfig { clip_sample: false, ..Default::default() })?;
    /// scheduler.set_timesteps(25)?;
    /// let image = Array2::<f32>::from_elem((1, 8), 0.5);
    /// let mut latent = image.clone();
    /// for &t in scheduler.timesteps().iter().rev() {
    ///     let eps = &latent * 0.0; // the model's noise prediction at t
    ///     latent = scheduler.inverse_step(&eps, t, &latent)?.prev_sample;
    /// }
    /// # Ok::<(), ddim::DdimError>(())
    /// ```
    pub fn inverse_step<T: DdimFloat, D: Dimension>(
        &self,
        model_output: &ArrayRef<T, D>,
        timestep: usize,
        sample: &ArrayRef<T, D>,
    ) -> Result<DdimSchedulerOutput<T, D>, DdimError> {
        let options = StepOptions::default();
        self.to_new_arrays(model_output, When::Inverse(timestep), sample, options)
    }

    /// One step of a batch whose items sit at different timesteps, one per item of axis 0 (a
    /// server batching requests at different points of their loops): item `i` takes exactly
    /// the step [`step_with`](DdimScheduler::step_with) would take from `timesteps[i]`, with
    /// the same options (drawn noise is drawn for the whole batch in row-major order, item after
    /// item).
    ///
    /// diffusers' `DDIMParallelScheduler.batch_step_no_noise` does the deterministic case,
    /// except that for items past the last step it uses `alpha_bar = 1` whatever
    /// `set_alpha_to_one` says; here those items follow the config, as `step` does.
    ///
    /// # Errors
    ///
    /// As [`step_with`](DdimScheduler::step_with) for every timestep (all checked before
    /// anything is computed), plus [`DdimError::BatchSizeMismatch`] unless there is one timestep
    /// per batch item and [`DdimError::TooFewAxes`] for 0-dimensional arrays.
    ///
    /// # Example
    ///
    /// ```
    /// use ddim::ndarray::{s, Array2};
    /// use ddim::{DdimConfig, DdimScheduler, StepOptions};
    ///
    /// let mut scheduler = DdimScheduler::new(DdimConfig::default())?;
    /// scheduler.set_timesteps(10)?;
    /// let (eps, x) = (Array2::<f32>::zeros((2, 4)), Array2::<f32>::ones((2, 4)));
    /// let batch = scheduler.step_batch(&eps, &[900, 100], &x, StepOptions::default())?;
    /// let alone = scheduler.step(&eps.slice(s![1..2, ..]), 100, &x.slice(s![1..2, ..]))?;
    /// assert_eq!(batch.prev_sample.row(1), alone.prev_sample.row(0));
    /// # Ok::<(), ddim::DdimError>(())
    /// ```
    pub fn step_batch<T: DdimFloat, D: Dimension>(
        &self,
        model_output: &ArrayRef<T, D>,
        timesteps: &[usize],
        sample: &ArrayRef<T, D>,
        options: StepOptions<'_, T>,
    ) -> Result<DdimSchedulerOutput<T, D>, DdimError> {
        self.to_new_arrays(model_output, When::PerItem(timesteps), sample, options)
    }

    /// Steps into new arrays: the pass appends each result, in row-major order, to a vector
    /// of the right capacity, which then becomes the array (no zero-filling of memory that is
    /// about to be overwritten).
    fn to_new_arrays<T: DdimFloat, D: Dimension>(
        &self,
        model_output: &ArrayRef<T, D>,
        when: When<'_>,
        sample: &ArrayRef<T, D>,
        options: StepOptions<'_, T>,
    ) -> Result<DdimSchedulerOutput<T, D>, DdimError> {
        let len = sample.len();
        let (mut prev, mut x0) = (Vec::with_capacity(len), Vec::with_capacity(len));
        let target = Target::Fresh {
            sample: sample.view().into_dyn(),
            prev_sample: &mut prev,
            pred_original_sample: &mut x0,
        };
        self.run(model_output.view().into_dyn(), when, target, options)?;
        let into_array = |name, values: Vec<T>| {
            let values_len = values.len();
            Array::from_shape_vec(sample.raw_dim(), values).map_err(|_| {
                // Unreachable: every pass appends one value per element of the sample.
                DdimError::SliceLength {
                    name,
                    len: values_len,
                    shape: sample.shape().to_vec(),
                    expected: Some(len),
                }
            })
        };
        Ok(DdimSchedulerOutput {
            prev_sample: into_array("prev_sample", prev)?,
            pred_original_sample: into_array("pred_original_sample", x0)?,
        })
    }

    /// Every step ends here: all checks first, then the noise, then the kernel.
    fn run<T: DdimFloat>(
        &self,
        model_output: ArrayViewD<'_, T>,
        when: When<'_>,
        target: Target<'_, T>,
        options: StepOptions<'_, T>,
    ) -> Result<(), DdimError> {
        // Owned, and without allocation for up to four axes.
        let sample_dim: IxDyn = target.sample().raw_dim();
        let sample_shape = sample_dim.slice();
        same_shape("model_output", model_output.shape(), "sample", sample_shape)?;
        let eta = check_eta(options.eta)?;
        let thresholding = self.thresholds(when);
        if thresholding && sample_shape.len() < 2 {
            return Err(DdimError::TooFewAxes {
                operation: "dynamic thresholding (batch axis and at least one feature axis)",
                found: sample_shape.len(),
                required: 2,
            });
        }
        // The scalars of a single step, or a check of every item's before anything is written.
        let single = match when {
            When::Forward(t) => Some(self.step_scalars(t, eta)?),
            When::Inverse(t) => Some(self.inverse_step_scalars(t)?),
            When::PerItem(timesteps) => {
                one_timestep_per_item(timesteps.len(), sample_shape)?;
                // An empty batch is checked like any other call.
                self.num_inference_steps()
                    .ok_or(DdimError::TimestepsNotSet)?;
                for &t in timesteps {
                    self.step_scalars(t, eta)?;
                }
                None
            }
        };
        let drawn = eta > 0.0;
        let StepOptions {
            noise: source,
            use_clipped_model_output,
            ..
        } = options;
        let clipped = use_clipped_model_output && !matches!(when, When::Inverse(_));
        // Realise the noise source (nothing is drawn at eta = 0, as in the reference).
        let mut torch_draw;
        let mut rng_draw;
        let noise = match source {
            NoiseSource::None if drawn => return Err(DdimError::MissingNoise { eta }),
            NoiseSource::None => Noise::Zero,
            NoiseSource::Given(z) => {
                same_shape("variance_noise", z.shape(), "sample", sample_shape)?;
                if drawn {
                    Noise::Given(z)
                } else {
                    Noise::Zero
                }
            }
            NoiseSource::Rng(rng) if drawn => {
                // Drawn in the compute type: a 16-bit step draws what an `f32` step draws.
                rng_draw = move |block: &mut [T::Compute]| {
                    block
                        .iter_mut()
                        .for_each(|z| *z = T::Compute::standard_normal(rng));
                };
                Noise::Drawn(&mut rng_draw)
            }
            NoiseSource::Torch(generator) if drawn => {
                // torch's `randn` of the sample's shape and type, drawn block by block as the
                // pass visits the elements (in row-major order), without a temporary array.
                let mut stream = generator.normal_stream::<T>(sample_shape.iter().product());
                torch_draw = move |block: &mut [T::Compute]| stream.fill(block, T::widen);
                Noise::Drawn(&mut torch_draw)
            }
            NoiseSource::Rng(_) | NoiseSource::Torch(_) => Noise::Zero,
        };
        match (single, when) {
            (Some(scalars), _) => {
                self.apply(&scalars, clipped, thresholding, model_output, target, noise);
            }
            (None, When::PerItem(timesteps)) => {
                let (mut target, mut noise) = (target, noise);
                for (i, &t) in timesteps.iter().enumerate() {
                    let item = Slice::from(i..=i);
                    let scalars = self.step_scalars(t, eta)?;
                    self.apply(
                        &scalars,
                        clipped,
                        thresholding,
                        model_output.slice_axis(Axis(0), item),
                        target.item(item),
                        noise.item(item),
                    );
                }
            }
            // Only per-item steps have no single set of scalars.
            (None, When::Forward(_) | When::Inverse(_)) => {}
        }
        Ok(())
    }

    /// Whether a step of this kind applies dynamic thresholding (inversion does not, as in the
    /// reference).
    fn thresholds(&self, when: When<'_>) -> bool {
        self.config().thresholding && !matches!(when, When::Inverse(_))
    }

    /// One step with known scalars and checked arguments: the update's scalars, then one fused
    /// pass (per batch item, after a pass that finds the item's threshold, when thresholding).
    /// Scalars, clamping bounds and the threshold are in the compute type.
    fn apply<T: DdimFloat>(
        &self,
        scalars: &StepScalars,
        use_clipped_model_output: bool,
        thresholding: bool,
        model_output: ArrayViewD<'_, T>,
        target: Target<'_, T>,
        noise: Noise<'_, T>,
    ) {
        let config = self.config();
        let update: Update<T::Compute> = scalars
            .update(config.prediction_type, use_clipped_model_output)
            .widen();
        if !thresholding {
            let bounds = if config.clip_sample {
                X0Bounds::symmetric(T::Compute::from_f64(config.clip_sample_range))
            } else {
                X0Bounds::unbounded()
            };
            fused_step(&update, &bounds, model_output, target, noise);
            return;
        }
        let max_value = T::Compute::from_f64(config.sample_max_value);
        let ratio = config.dynamic_thresholding_ratio;
        // Each item on its own: its threshold, then its pass. Parts of the batch may run on
        // other threads (feature `parallel`), each with that thread's scratch buffer.
        over_items(
            model_output,
            target,
            noise,
            &|model_output, mut target, mut noise| {
                T::Compute::with_scratch(|scratch| {
                    let items = model_output.len_of(Axis(0));
                    for i in 0..items {
                        let item = Slice::from(i..=i);
                        let m = model_output.slice_axis(Axis(0), item);
                        let item_target = target.item(item);
                        let sample = item_target.sample();
                        let s = item_threshold(&update, &m, &sample, ratio, max_value, scratch);
                        let bounds = X0Bounds::threshold(s);
                        fused_step(&update, &bounds, m, item_target, noise.item(item));
                    }
                    let item_len = model_output.len().checked_div(items).unwrap_or(0);
                    keep_for_next_step::<T::Compute>(scratch, item_len);
                })
            },
        );
    }
}
