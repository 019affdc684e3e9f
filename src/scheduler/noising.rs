//! The forward process: noising clean samples (`add_noise`, DDPM eq. 4) and the velocity
//! target of v-prediction models (`get_velocity`).

use ndarray::{Array, ArrayRef, Axis, Dimension, Slice};

use super::DdimScheduler;
use crate::checks::{one_timestep_per_item, same_shape};
use crate::float::Arithmetic;
use crate::kernel::weighted_sum;
use crate::{DdimError, DdimFloat};

impl DdimScheduler {
    /// Diffuses clean samples to the given timesteps, one per batch item (axis 0):
    /// `sqrt(alpha_bar_t) * original_samples + sqrt(1 - alpha_bar_t) * noise` (DDPM eq. 4).
    ///
    /// The square roots are taken in the element type, as the reference does here (in `f32` for
    /// 16-bit elements, whose results are the `f32` call's on the same values, rounded once).
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
    pub fn add_noise<T: DdimFloat, D: Dimension>(
        &self,
        original_samples: &ArrayRef<T, D>,
        noise: &ArrayRef<T, D>,
        timesteps: &[usize],
    ) -> Result<Array<T, D>, DdimError> {
        self.per_item_blend(original_samples, noise, timesteps, |sa, sb| (sa, sb))
    }

    /// The velocity target of v-prediction models for the given timesteps, one per batch item
    /// (axis 0): `sqrt(alpha_bar_t) * noise - sqrt(1 - alpha_bar_t) * sample`
    /// (Salimans and Ho 2022, section 4).
    ///
    /// # Errors
    ///
    /// As [`add_noise`](DdimScheduler::add_noise).
    ///
    /// # Example
    ///
    /// ```
    /// use ddim::ndarray::array;
    /// use ddim::{DdimConfig, DdimScheduler};
    ///
    /// let scheduler = DdimScheduler::new(DdimConfig::default())?;
    /// let x0 = array![[0.5f32, -0.5]];
    /// let noise = array![[1.0f32, 1.0]];
    /// let v = scheduler.get_velocity(&x0, &noise, &[0])?;
    /// // At t = 0 almost all signal: v is almost the noise.
    /// assert!((v[[0, 0]] - 1.0).abs() < 0.01);
    /// # Ok::<(), ddim::DdimError>(())
    /// ```
    pub fn get_velocity<T: DdimFloat, D: Dimension>(
        &self,
        sample: &ArrayRef<T, D>,
        noise: &ArrayRef<T, D>,
        timesteps: &[usize],
    ) -> Result<Array<T, D>, DdimError> {
        self.per_item_blend(sample, noise, timesteps, |sa, sb| (-sb, sa))
    }

    /// `w_a * a + w_b * b` per batch item, with `(w_a, w_b) = weights(sqrt(alpha_bar_t),
    /// sqrt(1 - alpha_bar_t))` in the compute type; `b` is the noise.
    fn per_item_blend<T: DdimFloat, D: Dimension>(
        &self,
        a: &ArrayRef<T, D>,
        b: &ArrayRef<T, D>,
        timesteps: &[usize],
        weights: impl Fn(T::Compute, T::Compute) -> (T::Compute, T::Compute),
    ) -> Result<Array<T, D>, DdimError> {
        same_shape("noise", b.shape(), "sample", a.shape())?;
        one_timestep_per_item(timesteps.len(), a.shape())?;
        let alphas = timesteps
            .iter()
            .map(|&t| self.alpha_bar(t).map(T::Compute::from_f32))
            .collect::<Result<Vec<_>, _>>()?;
        let mut out = Array::from_elem(a.raw_dim(), T::ZERO);
        let (a, b) = (a.view().into_dyn(), b.view().into_dyn());
        let mut out_dyn = out.view_mut().into_dyn();
        for (i, alpha) in alphas.into_iter().enumerate() {
            let item = Slice::from(i..=i);
            let (wa, wb) = weights(alpha.sqrt(), (T::Compute::ONE - alpha).sqrt());
            weighted_sum(
                wa,
                a.slice_axis(Axis(0), item),
                wb,
                b.slice_axis(Axis(0), item),
                out_dyn.slice_axis_mut(Axis(0), item),
            );
        }
        Ok(out)
    }
}
