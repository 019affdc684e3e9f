//! The step, the in-place step and `add_noise` over plain slices with a shape, for callers whose
//! tensors are not this crate's `ndarray` arrays: another `ndarray` version (tch), or none at all
//! (burn's `TensorData`, candle's `to_vec1`, a buffer from an ONNX runtime). The slices are
//! row-major (C order), as those libraries hand them out; the calls view them as arrays of the
//! given shape and run the same kernel as the array calls, so the results are identical to the
//! bit.

use ndarray::{ArrayView, ArrayViewMut, IxDyn};

use super::{DdimScheduler, StepOptions};
use crate::{DdimError, DdimFloat};

/// `slice` viewed as a row-major array of `shape`.
fn view<'a, T>(
    name: &'static str,
    slice: &'a [T],
    shape: &[usize],
) -> Result<ArrayView<'a, T, IxDyn>, DdimError> {
    check_len(name, slice.len(), shape)?;
    ArrayView::from_shape(IxDyn(shape), slice).map_err(|_| slice_error(name, slice.len(), shape))
}

/// `slice` viewed as a mutable row-major array of `shape`.
fn view_mut<'a, T>(
    name: &'static str,
    slice: &'a mut [T],
    shape: &[usize],
) -> Result<ArrayViewMut<'a, T, IxDyn>, DdimError> {
    check_len(name, slice.len(), shape)?;
    let len = slice.len();
    ArrayViewMut::from_shape(IxDyn(shape), slice).map_err(|_| slice_error(name, len, shape))
}

/// Checks that a slice of `len` elements holds exactly an array of `shape`.
pub(crate) fn check_len(name: &'static str, len: usize, shape: &[usize]) -> Result<(), DdimError> {
    match shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)) {
        Some(expected) if expected == len && isize::try_from(expected).is_ok() => Ok(()),
        _ => Err(slice_error(name, len, shape)),
    }
}

/// The error of a slice that does not hold an array of `shape`.
fn slice_error(name: &'static str, len: usize, shape: &[usize]) -> DdimError {
    DdimError::SliceLength {
        name,
        len,
        shape: shape.to_vec(),
        expected: shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)),
    }
}

impl DdimScheduler {
    /// [`step_into`](DdimScheduler::step_into) over row-major slices of the given `shape`:
    /// `model_output` and `sample` are read, `prev_sample` and `pred_original_sample` written.
    /// Bit-identical to the array call; no allocation (but as `step_into`).
    ///
    /// # Errors
    ///
    /// [`DdimError::SliceLength`] when a slice does not hold exactly `shape`'s element count
    /// (or the count overflows); then as [`step_into`](DdimScheduler::step_into). On error the
    /// outputs are untouched.
    ///
    /// # Example
    ///
    /// ```
    /// use ddim::{DdimConfig, DdimScheduler, StepOptions};
    ///
    /// let mut scheduler = DdimScheduler::new(DdimConfig::default())?;
    /// scheduler.set_timesteps(10)?;
    /// // Buffers as another library hands them out: flat, row-major, with a shape.
    /// let shape = [1, 4, 8, 8];
    /// let sample = vec![0.5f32; 256];
    /// let eps = vec![0.1f32; 256];
    /// let (mut prev, mut x0) = (vec![0.0f32; 256], vec![0.0f32; 256]);
    /// scheduler.step_slices(&eps, 900, &sample, &shape, StepOptions::default(), &mut prev, &mut x0)?;
    /// assert!(scheduler.step_slices(&eps, 900, &sample, &[1, 4, 8], StepOptions::default(), &mut prev, &mut x0).is_err());
    /// # Ok::<(), ddim::DdimError>(())
    /// ```
    // The arguments are those of `step_into` plus the shape; grouping them would only hide that.
    #[allow(clippy::too_many_arguments)]
    pub fn step_slices<T: DdimFloat>(
        &self,
        model_output: &[T],
        timestep: usize,
        sample: &[T],
        shape: &[usize],
        options: StepOptions<'_, T>,
        prev_sample: &mut [T],
        pred_original_sample: &mut [T],
    ) -> Result<(), DdimError> {
        let m = view("model_output", model_output, shape)?;
        let s = view("sample", sample, shape)?;
        let mut p = view_mut("prev_sample", prev_sample, shape)?;
        let mut x = view_mut("pred_original_sample", pred_original_sample, shape)?;
        self.step_into(&m, timestep, &s, options, &mut p, &mut x)
    }

    /// [`step_in_place`](DdimScheduler::step_in_place) over row-major slices of the given
    /// `shape`: `sample` is overwritten with `prev_sample`.
    ///
    /// # Errors
    ///
    /// [`DdimError::SliceLength`] as in [`step_slices`](DdimScheduler::step_slices); then as
    /// [`step_in_place`](DdimScheduler::step_in_place). On error `sample` is untouched.
    ///
    /// # Example
    ///
    /// ```
    /// use ddim::{DdimConfig, DdimScheduler, StepOptions};
    ///
    /// let mut scheduler = DdimScheduler::new(DdimConfig::default())?;
    /// scheduler.set_timesteps(10)?;
    /// let mut latents = vec![0.5f32; 64];
    /// for &t in scheduler.timesteps() {
    ///     let eps: Vec<f32> = latents.iter().map(|x| x * 0.1).collect(); // the model
    ///     scheduler.step_slice_in_place(&eps, t, &mut latents, &[1, 64], StepOptions::default())?;
    /// }
    /// # Ok::<(), ddim::DdimError>(())
    /// ```
    pub fn step_slice_in_place<T: DdimFloat>(
        &self,
        model_output: &[T],
        timestep: usize,
        sample: &mut [T],
        shape: &[usize],
        options: StepOptions<'_, T>,
    ) -> Result<(), DdimError> {
        let m = view("model_output", model_output, shape)?;
        let mut s = view_mut("sample", sample, shape)?;
        self.step_in_place(&m, timestep, &mut s, options)
    }

    /// [`add_noise`](DdimScheduler::add_noise) over row-major slices of the given `shape`,
    /// written into `out`; one timestep per batch item (axis 0 of `shape`).
    ///
    /// # Errors
    ///
    /// [`DdimError::SliceLength`] as in [`step_slices`](DdimScheduler::step_slices); then as
    /// [`add_noise`](DdimScheduler::add_noise). On error `out` is untouched.
    ///
    /// # Example
    ///
    /// ```
    /// use ddim::{DdimConfig, DdimScheduler};
    ///
    /// let scheduler = DdimScheduler::new(DdimConfig::default())?;
    /// let (x0, noise) = (vec![1.0f32; 8], vec![0.0f32; 8]);
    /// let mut noisy = vec![0.0f32; 8];
    /// scheduler.add_noise_slices(&x0, &noise, &[0, 999], &[2, 4], &mut noisy)?;
    /// assert!(noisy[0] > 0.99 && noisy[7] < 0.01);
    /// # Ok::<(), ddim::DdimError>(())
    /// ```
    pub fn add_noise_slices<T: DdimFloat>(
        &self,
        original_samples: &[T],
        noise: &[T],
        timesteps: &[usize],
        shape: &[usize],
        out: &mut [T],
    ) -> Result<(), DdimError> {
        let a = view("original_samples", original_samples, shape)?;
        let b = view("noise", noise, shape)?;
        check_len("out", out.len(), shape)?;
        let noisy = self.add_noise(&a, &b, timesteps)?;
        match noisy.as_slice() {
            Some(values) => out.copy_from_slice(values),
            None => out.iter_mut().zip(noisy.iter()).for_each(|(o, &v)| *o = v),
        }
        Ok(())
    }
}
