//! The DDIM step in its three noise flavours (none, given, drawn) and three destinations
//! (new arrays, caller-owned buffers, the sample itself), all funnelled into one core.

use ndarray::{Array, ArrayBase, ArrayView, Axis, Data, DataMut, Dimension, Slice};
use rand::Rng;

use crate::config::PredictionType;
use crate::kernel::{fused_step, Form, Noise, StepCoefficients, Target, X0Bounds};
use crate::scheduler::{check_same_shape, StepScalars};
use crate::threshold::dynamic_threshold;
use crate::{DdimError, DdimFloat, DdimScheduler};

/// Options of a stochastic or clipped step. [`Default`] is deterministic DDIM.
///
/// ```
/// let options = ddim::StepOptions { eta: 1.0, ..Default::default() };
/// assert!(!options.use_clipped_model_output);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StepOptions {
    /// Weight of the fresh noise, `eta` of DDIM paper eq. 16: `sigma_t = eta *
    /// sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t)) * sqrt(1 - alpha_bar_t / alpha_bar_prev)`.
    /// 0 is deterministic DDIM, 1 is the DDPM posterior. Must be finite and `>= 0`.
    pub eta: f64,
    /// Re-derive the noise prediction from the clipped or thresholded `x0`
    /// (`eps = (sample - sqrt(alpha_bar_t) * x0) / sqrt(1 - alpha_bar_t)`) instead of using the
    /// model's own. Without clipping or thresholding it changes nothing but rounding.
    pub use_clipped_model_output: bool,
}

impl StepOptions {
    /// `eta`, if it is finite and `>= 0`.
    pub(crate) fn checked_eta(&self) -> Result<f64, DdimError> {
        let eta = self.eta;
        if eta.is_finite() && eta >= 0.0 {
            Ok(eta)
        } else {
            Err(DdimError::InvalidEta { eta })
        }
    }
}

/// The result of one step; also the caller-owned buffers of the `step_into` methods.
#[derive(Debug, Clone, PartialEq)]
pub struct DdimSchedulerOutput<T, D: Dimension> {
    /// `x_{t-1}`: the sample at the previous timestep, the next input of the loop.
    pub prev_sample: Array<T, D>,
    /// The predicted clean sample `x0` at this step, after clipping or thresholding; useful for
    /// previews.
    pub pred_original_sample: Array<T, D>,
}

impl<T: DdimFloat, D: Dimension> DdimSchedulerOutput<T, D> {
    /// Zero-filled buffers of the given shape, for [`DdimScheduler::step_into`].
    ///
    /// ```
    /// let out = ddim::DdimSchedulerOutput::<f32, _>::zeros((1, 4, 64, 64));
    /// assert_eq!(out.prev_sample.shape(), &[1, 4, 64, 64]);
    /// ```
    pub fn zeros<Sh: ndarray::ShapeBuilder<Dim = D>>(shape: Sh) -> Self {
        let prev_sample = Array::from_elem(shape, T::ZERO);
        let pred_original_sample = prev_sample.clone();
        DdimSchedulerOutput {
            prev_sample,
            pred_original_sample,
        }
    }
}

/// Noise that is either a given array or nothing at all.
type FixedNoise<'a, T, D> = Noise<'a, T, D, fn() -> T>;

/// Which step: from one timestep, its inversion, or one timestep per batch item.
#[derive(Clone, Copy)]
enum When<'a> {
    Forward(usize),
    Inverse(usize),
    PerItem(&'a [usize]),
}

/// No noise: deterministic steps.
fn no_noise<'a, T: DdimFloat, D>() -> FixedNoise<'a, T, D> {
    Noise::Zero
}

/// Caller-provided noise, read only when `eta > 0` but always checked against the sample.
fn given_noise<'a, T: DdimFloat, S: Data<Elem = T>, D: Dimension>(
    options: &StepOptions,
    noise: &'a ArrayBase<S, D>,
    sample_shape: &[usize],
) -> Result<FixedNoise<'a, T, D>, DdimError> {
    check_same_shape("variance_noise", noise.shape(), sample_shape)?;
    Ok(if options.eta > 0.0 {
        Noise::Given(noise.view())
    } else {
        no_noise()
    })
}

/// Noise drawn from `rng`, one standard normal per element, and none at all when `eta == 0`
/// (the reference draws nothing then either).
fn rng_noise<'a, T: DdimFloat, D, R: Rng + ?Sized>(
    options: &StepOptions,
    rng: &'a mut R,
) -> Noise<'a, T, D, impl FnMut() -> T + 'a> {
    if options.eta > 0.0 {
        Noise::Drawn(move || T::standard_normal(rng))
    } else {
        Noise::Zero
    }
}

impl DdimScheduler {
    /// One deterministic DDIM step (eta = 0, DDIM paper eq. 12) from `timestep` to the previous
    /// timestep of the schedule.
    ///
    /// With `alpha_bar_t` at `timestep` and `alpha_bar_prev` at `timestep -
    /// num_train_timesteps / num_inference_steps` (or
    /// [`final_alpha_cumprod`](DdimScheduler::final_alpha_cumprod) past the first timestep):
    /// `x0` and `eps` are read from the model output according to the prediction type, `x0` is
    /// thresholded or clipped if configured, and
    /// `prev_sample = sqrt(alpha_bar_prev) * x0 + sqrt(1 - alpha_bar_prev) * eps`.
    ///
    /// `timestep` may be any training timestep, on the schedule or not, as in the reference.
    /// The result is two new arrays; [`step_into`](DdimScheduler::step_into) and
    /// [`step_in_place`](DdimScheduler::step_in_place) write into buffers instead.
    ///
    /// # Errors
    ///
    /// [`DdimError::TimestepsNotSet`] before `set_timesteps`; [`DdimError::TimestepOutOfRange`]
    /// for `timestep >= num_train_timesteps`; [`DdimError::ShapeMismatch`] when the shapes of
    /// `model_output` and `sample` differ; [`DdimError::TooFewAxes`] when thresholding an array
    /// with fewer than two axes (batch and features).
    pub fn step<T, S1, S2, D>(
        &self,
        model_output: &ArrayBase<S1, D>,
        timestep: usize,
        sample: &ArrayBase<S2, D>,
    ) -> Result<DdimSchedulerOutput<T, D>, DdimError>
    where
        T: DdimFloat,
        S1: Data<Elem = T>,
        S2: Data<Elem = T>,
        D: Dimension,
    {
        let options = StepOptions::default();
        self.step_to_new(
            model_output,
            When::Forward(timestep),
            sample,
            &options,
            no_noise(),
        )
    }

    /// A step with options and caller-provided noise (DDIM paper eq. 12 with `sigma_t` of
    /// eq. 16): `prev_sample` gains `sigma_t * variance_noise`, and the direction term becomes
    /// `sqrt(1 - alpha_bar_prev - sigma_t^2) * eps`.
    ///
    /// `variance_noise` is read only when `eta > 0` (as in the reference), but its shape is
    /// always checked. If rounding makes `1 - alpha_bar_prev - sigma_t^2` negative (eta = 1 at
    /// a zero-terminal-SNR schedule's first step), it is taken as 0; the reference returns NaN
    /// there. For `eta > 1` the same clamp applies.
    ///
    /// # Errors
    ///
    /// As [`step`](DdimScheduler::step), plus [`DdimError::InvalidEta`] for a negative or
    /// non-finite eta and [`DdimError::ShapeMismatch`] for noise of another shape.
    pub fn step_with_noise<T, S1, S2, S3, D>(
        &self,
        model_output: &ArrayBase<S1, D>,
        timestep: usize,
        sample: &ArrayBase<S2, D>,
        options: &StepOptions,
        variance_noise: &ArrayBase<S3, D>,
    ) -> Result<DdimSchedulerOutput<T, D>, DdimError>
    where
        T: DdimFloat,
        S1: Data<Elem = T>,
        S2: Data<Elem = T>,
        S3: Data<Elem = T>,
        D: Dimension,
    {
        let noise = given_noise(options, variance_noise, sample.shape())?;
        self.step_to_new(
            model_output,
            When::Forward(timestep),
            sample,
            options,
            noise,
        )
    }

    /// A step with options and noise drawn from the caller's random number generator: one
    /// standard normal draw per element, in the order of the elements (row-major for
    /// standard-layout arrays), and no draw at all when `eta == 0`.
    ///
    /// # Errors
    ///
    /// As [`step_with_noise`](DdimScheduler::step_with_noise).
    ///
    /// # Example
    ///
    /// ```
    /// use ddim::ndarray::Array2;
    /// use ddim::{DdimConfig, DdimScheduler, StepOptions};
    /// use rand::SeedableRng;
    ///
    /// let mut scheduler = DdimScheduler::new(DdimConfig::default())?;
    /// scheduler.set_timesteps(20)?;
    /// let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    /// let sample = Array2::<f64>::zeros((2, 3));
    /// let eps = Array2::<f64>::ones((2, 3));
    /// let options = StepOptions { eta: 1.0, ..Default::default() };
    /// let out = scheduler.step_with_rng(&eps, 500, &sample, &options, &mut rng)?;
    /// assert_eq!(out.prev_sample.shape(), &[2, 3]);
    /// # Ok::<(), ddim::DdimError>(())
    /// ```
    pub fn step_with_rng<T, S1, S2, D, R>(
        &self,
        model_output: &ArrayBase<S1, D>,
        timestep: usize,
        sample: &ArrayBase<S2, D>,
        options: &StepOptions,
        rng: &mut R,
    ) -> Result<DdimSchedulerOutput<T, D>, DdimError>
    where
        T: DdimFloat,
        S1: Data<Elem = T>,
        S2: Data<Elem = T>,
        D: Dimension,
        R: Rng + ?Sized,
    {
        self.step_to_new(
            model_output,
            When::Forward(timestep),
            sample,
            options,
            rng_noise(options, rng),
        )
    }

    /// [`step`](DdimScheduler::step), writing into caller-owned buffers of the sample's shape
    /// instead of allocating: after the first call on a thread, it makes no heap allocation.
    ///
    /// Dynamic thresholding needs scratch space for one batch item; it lives in a thread-local
    /// buffer that grows to the largest item seen on that thread and is then reused, so the
    /// scheduler itself stays immutable and can be shared by any number of threads. (Arrays of
    /// dynamic dimensionality with more than four axes allocate their index vectors; fixed
    /// dimensionalities never do.)
    ///
    /// # Errors
    ///
    /// As [`step`](DdimScheduler::step), and [`DdimError::ShapeMismatch`] when a buffer's shape
    /// is not the sample's. On error the buffers are left untouched.
    ///
    /// # Example
    ///
    /// ```
    /// use ddim::ndarray::Array4;
    /// use ddim::{DdimConfig, DdimScheduler, DdimSchedulerOutput};
    ///
    /// let mut scheduler = DdimScheduler::new(DdimConfig::default())?;
    /// scheduler.set_timesteps(10)?;
    /// let mut latents = Array4::<f32>::from_elem((1, 4, 8, 8), 0.5);
    /// let mut out = DdimSchedulerOutput::zeros(latents.raw_dim());
    /// for &t in scheduler.timesteps() {
    ///     let eps = &latents * 0.1; // the model
    ///     scheduler.step_into(&eps, t, &latents, &mut out)?;
    ///     std::mem::swap(&mut latents, &mut out.prev_sample);
    /// }
    /// # Ok::<(), ddim::DdimError>(())
    /// ```
    pub fn step_into<T, S1, S2, D>(
        &self,
        model_output: &ArrayBase<S1, D>,
        timestep: usize,
        sample: &ArrayBase<S2, D>,
        out: &mut DdimSchedulerOutput<T, D>,
    ) -> Result<(), DdimError>
    where
        T: DdimFloat,
        S1: Data<Elem = T>,
        S2: Data<Elem = T>,
        D: Dimension,
    {
        let options = StepOptions::default();
        self.step_to_buffers(
            model_output,
            When::Forward(timestep),
            sample,
            &options,
            no_noise(),
            out,
        )
    }

    /// [`step_with_noise`](DdimScheduler::step_with_noise), writing into caller-owned buffers
    /// as [`step_into`](DdimScheduler::step_into) does.
    ///
    /// # Errors
    ///
    /// As [`step_with_noise`](DdimScheduler::step_with_noise) and
    /// [`step_into`](DdimScheduler::step_into).
    pub fn step_into_with_noise<T, S1, S2, S3, D>(
        &self,
        model_output: &ArrayBase<S1, D>,
        timestep: usize,
        sample: &ArrayBase<S2, D>,
        options: &StepOptions,
        variance_noise: &ArrayBase<S3, D>,
        out: &mut DdimSchedulerOutput<T, D>,
    ) -> Result<(), DdimError>
    where
        T: DdimFloat,
        S1: Data<Elem = T>,
        S2: Data<Elem = T>,
        S3: Data<Elem = T>,
        D: Dimension,
    {
        let noise = given_noise(options, variance_noise, sample.shape())?;
        self.step_to_buffers(
            model_output,
            When::Forward(timestep),
            sample,
            options,
            noise,
            out,
        )
    }

    /// [`step_with_rng`](DdimScheduler::step_with_rng), writing into caller-owned buffers as
    /// [`step_into`](DdimScheduler::step_into) does.
    ///
    /// # Errors
    ///
    /// As [`step_with_noise`](DdimScheduler::step_with_noise) and
    /// [`step_into`](DdimScheduler::step_into).
    pub fn step_into_with_rng<T, S1, S2, D, R>(
        &self,
        model_output: &ArrayBase<S1, D>,
        timestep: usize,
        sample: &ArrayBase<S2, D>,
        options: &StepOptions,
        rng: &mut R,
        out: &mut DdimSchedulerOutput<T, D>,
    ) -> Result<(), DdimError>
    where
        T: DdimFloat,
        S1: Data<Elem = T>,
        S2: Data<Elem = T>,
        D: Dimension,
        R: Rng + ?Sized,
    {
        let noise = rng_noise(options, rng);
        self.step_to_buffers(
            model_output,
            When::Forward(timestep),
            sample,
            options,
            noise,
            out,
        )
    }

    /// [`step`](DdimScheduler::step) that overwrites `sample` with `prev_sample`, for loops
    /// that keep a single latent buffer. `pred_original_sample` is not kept (use
    /// [`step_into`](DdimScheduler::step_into) for it). Allocation-free as `step_into`.
    ///
    /// # Errors
    ///
    /// As [`step`](DdimScheduler::step). On error the sample is left untouched.
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
    ///     scheduler.step_in_place(&eps, t, &mut latents)?;
    /// }
    /// # Ok::<(), ddim::DdimError>(())
    /// ```
    pub fn step_in_place<T, S1, S2, D>(
        &self,
        model_output: &ArrayBase<S1, D>,
        timestep: usize,
        sample: &mut ArrayBase<S2, D>,
    ) -> Result<(), DdimError>
    where
        T: DdimFloat,
        S1: Data<Elem = T>,
        S2: DataMut<Elem = T>,
        D: Dimension,
    {
        let options = StepOptions::default();
        let target = Target::InPlace(sample.view_mut());
        self.step_core(
            model_output.view(),
            When::Forward(timestep),
            target,
            &options,
            no_noise(),
        )
    }

    /// [`step_with_noise`](DdimScheduler::step_with_noise) that overwrites `sample` with
    /// `prev_sample`, as [`step_in_place`](DdimScheduler::step_in_place) does.
    ///
    /// # Errors
    ///
    /// As [`step_with_noise`](DdimScheduler::step_with_noise).
    pub fn step_in_place_with_noise<T, S1, S2, S3, D>(
        &self,
        model_output: &ArrayBase<S1, D>,
        timestep: usize,
        sample: &mut ArrayBase<S2, D>,
        options: &StepOptions,
        variance_noise: &ArrayBase<S3, D>,
    ) -> Result<(), DdimError>
    where
        T: DdimFloat,
        S1: Data<Elem = T>,
        S2: DataMut<Elem = T>,
        S3: Data<Elem = T>,
        D: Dimension,
    {
        let noise = given_noise(options, variance_noise, sample.shape())?;
        let target = Target::InPlace(sample.view_mut());
        self.step_core(
            model_output.view(),
            When::Forward(timestep),
            target,
            options,
            noise,
        )
    }

    /// [`step_with_rng`](DdimScheduler::step_with_rng) that overwrites `sample` with
    /// `prev_sample`, as [`step_in_place`](DdimScheduler::step_in_place) does.
    ///
    /// # Errors
    ///
    /// As [`step_with_noise`](DdimScheduler::step_with_noise).
    pub fn step_in_place_with_rng<T, S1, S2, D, R>(
        &self,
        model_output: &ArrayBase<S1, D>,
        timestep: usize,
        sample: &mut ArrayBase<S2, D>,
        options: &StepOptions,
        rng: &mut R,
    ) -> Result<(), DdimError>
    where
        T: DdimFloat,
        S1: Data<Elem = T>,
        S2: DataMut<Elem = T>,
        D: Dimension,
        R: Rng + ?Sized,
    {
        let target = Target::InPlace(sample.view_mut());
        self.step_core(
            model_output.view(),
            When::Forward(timestep),
            target,
            options,
            rng_noise(options, rng),
        )
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
    pub fn inverse_step<T, S1, S2, D>(
        &self,
        model_output: &ArrayBase<S1, D>,
        timestep: usize,
        sample: &ArrayBase<S2, D>,
    ) -> Result<DdimSchedulerOutput<T, D>, DdimError>
    where
        T: DdimFloat,
        S1: Data<Elem = T>,
        S2: Data<Elem = T>,
        D: Dimension,
    {
        let options = StepOptions::default();
        let when = When::Inverse(timestep);
        self.step_to_new(model_output, when, sample, &options, no_noise())
    }

    /// One deterministic step of a batch whose items sit at different timesteps, one per item
    /// of axis 0 (a server batching requests at different points of their loops): item `i`
    /// takes exactly the step [`step`](DdimScheduler::step) would take from `timesteps[i]`.
    ///
    /// diffusers' `DDIMParallelScheduler.batch_step_no_noise` does the same, except that for
    /// items past the last step it uses `alpha_bar = 1` whatever `set_alpha_to_one` says; here
    /// those items follow the config, as `step` does.
    ///
    /// # Errors
    ///
    /// As [`step`](DdimScheduler::step) for every timestep (checked before anything is
    /// computed), plus [`DdimError::BatchSizeMismatch`] unless there is one timestep per batch
    /// item and [`DdimError::TooFewAxes`] for 0-dimensional arrays.
    ///
    /// # Example
    ///
    /// ```
    /// use ddim::ndarray::Array2;
    /// use ddim::{DdimConfig, DdimScheduler};
    ///
    /// let mut scheduler = DdimScheduler::new(DdimConfig::default())?;
    /// scheduler.set_timesteps(10)?;
    /// let (eps, x) = (Array2::<f32>::zeros((2, 4)), Array2::<f32>::ones((2, 4)));
    /// let batch = scheduler.step_batch(&eps, &[900, 100], &x)?;
    /// let alone = scheduler.step(&eps.slice(ddim::ndarray::s![1..2, ..]), 100, &x.slice(ddim::ndarray::s![1..2, ..]))?;
    /// assert_eq!(batch.prev_sample.row(1), alone.prev_sample.row(0));
    /// # Ok::<(), ddim::DdimError>(())
    /// ```
    pub fn step_batch<T, S1, S2, D>(
        &self,
        model_output: &ArrayBase<S1, D>,
        timesteps: &[usize],
        sample: &ArrayBase<S2, D>,
    ) -> Result<DdimSchedulerOutput<T, D>, DdimError>
    where
        T: DdimFloat,
        S1: Data<Elem = T>,
        S2: Data<Elem = T>,
        D: Dimension,
    {
        let options = StepOptions::default();
        let when = When::PerItem(timesteps);
        self.step_to_new(model_output, when, sample, &options, no_noise())
    }

    /// [`step_batch`](DdimScheduler::step_batch) with options and caller-provided noise, as
    /// [`step_with_noise`](DdimScheduler::step_with_noise) takes them (the reference has no
    /// stochastic batch step).
    ///
    /// # Errors
    ///
    /// As [`step_batch`](DdimScheduler::step_batch) and
    /// [`step_with_noise`](DdimScheduler::step_with_noise).
    pub fn step_batch_with_noise<T, S1, S2, S3, D>(
        &self,
        model_output: &ArrayBase<S1, D>,
        timesteps: &[usize],
        sample: &ArrayBase<S2, D>,
        options: &StepOptions,
        variance_noise: &ArrayBase<S3, D>,
    ) -> Result<DdimSchedulerOutput<T, D>, DdimError>
    where
        T: DdimFloat,
        S1: Data<Elem = T>,
        S2: Data<Elem = T>,
        S3: Data<Elem = T>,
        D: Dimension,
    {
        let noise = given_noise(options, variance_noise, sample.shape())?;
        let when = When::PerItem(timesteps);
        self.step_to_new(model_output, when, sample, options, noise)
    }

    /// Allocates the result arrays, then steps into them.
    fn step_to_new<T, S1, S2, D, F>(
        &self,
        model_output: &ArrayBase<S1, D>,
        when: When<'_>,
        sample: &ArrayBase<S2, D>,
        options: &StepOptions,
        noise: Noise<'_, T, D, F>,
    ) -> Result<DdimSchedulerOutput<T, D>, DdimError>
    where
        T: DdimFloat,
        S1: Data<Elem = T>,
        S2: Data<Elem = T>,
        D: Dimension,
        F: FnMut() -> T,
    {
        let mut out = DdimSchedulerOutput::zeros(sample.raw_dim());
        self.step_to_buffers(model_output, when, sample, options, noise, &mut out)?;
        Ok(out)
    }

    /// Checks the buffers' shapes, then steps into them.
    fn step_to_buffers<T, S1, S2, D, F>(
        &self,
        model_output: &ArrayBase<S1, D>,
        when: When<'_>,
        sample: &ArrayBase<S2, D>,
        options: &StepOptions,
        noise: Noise<'_, T, D, F>,
        out: &mut DdimSchedulerOutput<T, D>,
    ) -> Result<(), DdimError>
    where
        T: DdimFloat,
        S1: Data<Elem = T>,
        S2: Data<Elem = T>,
        D: Dimension,
        F: FnMut() -> T,
    {
        check_same_shape("prev_sample", out.prev_sample.shape(), sample.shape())?;
        let x0_shape = out.pred_original_sample.shape();
        check_same_shape("pred_original_sample", x0_shape, sample.shape())?;
        let target = Target::Separate {
            sample: sample.view(),
            prev_sample: out.prev_sample.view_mut(),
            pred_original_sample: out.pred_original_sample.view_mut(),
        };
        self.step_core(model_output.view(), when, target, options, noise)
    }

    /// Every step ends here: checks, then the scalars of the step (per batch item for
    /// per-item timesteps), then [`apply`](Self::apply).
    fn step_core<T, D, F>(
        &self,
        model_output: ArrayView<'_, T, D>,
        when: When<'_>,
        mut target: Target<'_, T, D>,
        options: &StepOptions,
        mut noise: Noise<'_, T, D, F>,
    ) -> Result<(), DdimError>
    where
        T: DdimFloat,
        D: Dimension,
        F: FnMut() -> T,
    {
        check_same_shape(
            "model_output",
            model_output.shape(),
            target.sample().shape(),
        )?;
        let thresholding = self.config().thresholding;
        let clipped = options.use_clipped_model_output;
        match when {
            When::Forward(timestep) => {
                let scalars = self.step_scalars(timestep, options)?;
                self.apply(&scalars, clipped, thresholding, model_output, target, noise)
            }
            When::Inverse(timestep) => {
                let scalars = self.inverse_step_scalars(timestep)?;
                self.apply(&scalars, false, false, model_output, target, noise)
            }
            When::PerItem(timesteps) => {
                let Some(&batch_size) = target.sample().shape().first() else {
                    return Err(DdimError::TooFewAxes {
                        operation: "per-batch-item timesteps (axis 0 is the batch)",
                        found: 0,
                        required: 1,
                    });
                };
                if timesteps.len() != batch_size {
                    return Err(DdimError::BatchSizeMismatch {
                        count: timesteps.len(),
                        batch_size,
                    });
                }
                // An empty batch is checked like any other call.
                options.checked_eta()?;
                self.num_inference_steps()
                    .ok_or(DdimError::TimestepsNotSet)?;
                // Every timestep is checked before anything is written.
                for &t in timesteps {
                    self.step_scalars(t, options)?;
                }
                for (i, &t) in timesteps.iter().enumerate() {
                    let item = Slice::from(i..=i);
                    let scalars = self.step_scalars(t, options)?;
                    self.apply(
                        &scalars,
                        clipped,
                        thresholding,
                        model_output.slice_axis(Axis(0), item),
                        target.item(item),
                        noise.item(item),
                    )?;
                }
                Ok(())
            }
        }
    }

    /// One step with known scalars: coefficients, then one fused pass (per batch item, after a
    /// pass that finds the item's threshold, when thresholding).
    fn apply<T, D, F>(
        &self,
        scalars: &StepScalars,
        use_clipped_model_output: bool,
        thresholding: bool,
        model_output: ArrayView<'_, T, D>,
        mut target: Target<'_, T, D>,
        mut noise: Noise<'_, T, D, F>,
    ) -> Result<(), DdimError>
    where
        T: DdimFloat,
        D: Dimension,
        F: FnMut() -> T,
    {
        let k = self
            .coefficients(scalars, use_clipped_model_output)
            .widen::<T>();
        let config = self.config();
        if !thresholding {
            let bounds = if config.clip_sample {
                X0Bounds::symmetric(T::from_f64(config.clip_sample_range))
            } else {
                X0Bounds::unbounded()
            };
            fused_step(&k, &bounds, model_output, target, noise);
            return Ok(());
        }

        let ndim = target.sample().ndim();
        if ndim < 2 {
            return Err(DdimError::TooFewAxes {
                operation: "dynamic thresholding (batch axis and at least one feature axis)",
                found: ndim,
                required: 2,
            });
        }
        let max_value = T::from_f64(config.sample_max_value);
        T::with_scratch(|scratch| {
            for i in 0..model_output.len_of(Axis(0)) {
                let item = Slice::from(i..=i);
                let m = model_output.slice_axis(Axis(0), item);
                let item_target = target.item(item);
                k.abs_raw_x0_bits(m.view(), item_target.sample(), scratch);
                let s = dynamic_threshold(scratch, config.dynamic_thresholding_ratio, max_value);
                let bounds = X0Bounds {
                    lo: -s,
                    hi: s,
                    divisor: s,
                };
                fused_step(&k, &bounds, m, item_target, noise.item(item));
            }
        });
        Ok(())
    }

    /// The coefficients of the fused update (see `kernel`) for a step with these scalars.
    fn coefficients(
        &self,
        k: &StepScalars,
        use_clipped_model_output: bool,
    ) -> StepCoefficients<f32> {
        let (sa, sb) = (k.sqrt_alpha_bar, k.sqrt_one_minus_alpha_bar);
        // x0 = (a*sample + b*output) / q and eps = (c*sample + d*output) / u, by prediction type
        // (DDIM eq. 9 solved for x0 or eps, and Salimans and Ho's v).
        let (form, a, b, q, c, d, u) = match self.config().prediction_type {
            PredictionType::Epsilon => (Form::Epsilon, 1.0, -sb, sa, 0.0, 1.0, 1.0),
            PredictionType::Sample => (Form::Sample, 0.0, 1.0, 1.0, 1.0, -sa, sb),
            PredictionType::VPrediction => (Form::Velocity, sa, -sb, 1.0, sb, sa, 1.0),
        };
        // With use_clipped_model_output, eps = (sample - sa * x0) / sb from the clipped x0.
        let (c, d, h, u) = if use_clipped_model_output {
            (1.0, 0.0, -sa, sb)
        } else {
            (c, d, 0.0, u)
        };
        StepCoefficients {
            form,
            eps_from_clamped_x0: use_clipped_model_output,
            x0_from_sample: a,
            x0_from_output: b,
            x0_divisor: q,
            eps_from_sample: c,
            eps_from_output: d,
            eps_from_x0: h,
            eps_divisor: u,
            prev_from_x0: k.sqrt_alpha_bar_prev,
            prev_from_eps: k.direction,
            prev_from_noise: k.sigma,
        }
    }
}
