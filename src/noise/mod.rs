//! Where the fresh noise of a stochastic step (`eta > 0`, DDIM paper eq. 16) comes from.
//!
//! A step takes its noise source as a value, [`NoiseSource`], inside its
//! [`StepOptions`](crate::StepOptions): nothing, an array the caller drew, a [`rand`]
//! generator, or [`TorchGenerator`], which draws what PyTorch's seeded CPU generator draws.

use std::fmt;

use ndarray::{ArrayRef, ArrayViewD, Dimension};
use rand::Rng;

mod torch;

pub use torch::{TorchCpuKernel, TorchGenerator};

/// The noise of a step with `eta > 0`: `prev_sample` gains `sigma_t * noise`.
///
/// Every source is consulted only when `eta > 0`, as in the reference: at `eta = 0` nothing is
/// drawn (a generator's later draws stay aligned with diffusers') and given noise is not read,
/// though its shape is still checked.
///
/// # Example
///
/// ```
/// use ddim::ndarray::Array2;
/// use ddim::{DdimConfig, DdimScheduler, NoiseSource, StepOptions, TorchGenerator};
/// use rand::SeedableRng;
///
/// let mut scheduler = DdimScheduler::new(DdimConfig::default())?;
/// scheduler.set_timesteps(10)?;
/// let sample = Array2::<f32>::from_elem((2, 3), 0.5);
/// let eps = Array2::<f32>::from_elem((2, 3), 0.1);
///
/// // Noise the caller drew.
/// let noise = Array2::<f32>::ones((2, 3));
/// let options = StepOptions { eta: 1.0, noise: NoiseSource::given(&noise), ..Default::default() };
/// let a = scheduler.step_with(&eps, 500, &sample, options)?;
///
/// // A `rand` generator: one standard normal per element, in row-major order.
/// let mut rng = rand::rngs::StdRng::seed_from_u64(7);
/// let options = StepOptions { eta: 1.0, noise: NoiseSource::Rng(&mut rng), ..Default::default() };
/// let b = scheduler.step_with(&eps, 500, &sample, options)?;
///
/// // PyTorch's generator, as `DDIMScheduler.step(..., eta=1.0, generator=g)` draws it.
/// let mut generator = TorchGenerator::manual_seed(42);
/// let options = StepOptions { eta: 1.0, noise: NoiseSource::Torch(&mut generator), ..Default::default() };
/// let c = scheduler.step_with(&eps, 500, &sample, options)?;
/// assert_ne!(a.prev_sample, b.prev_sample);
/// assert_ne!(b.prev_sample, c.prev_sample);
///
/// // eta > 0 with no source is an error, not silent determinism.
/// let options = StepOptions { eta: 1.0, ..Default::default() };
/// assert!(scheduler.step_with(&eps, 500, &sample, options).is_err());
/// # Ok::<(), ddim::DdimError>(())
/// ```
#[derive(Default)]
#[non_exhaustive]
pub enum NoiseSource<'a, T> {
    /// No noise: the step must have `eta = 0` ([`DdimError::MissingNoise`](crate::DdimError)
    /// otherwise).
    #[default]
    None,
    /// Noise the caller drew, of the sample's shape (any layout); see
    /// [`NoiseSource::given`]. 16-bit noise is widened to `f32` as it is read.
    Given(ArrayViewD<'a, T>),
    /// One standard normal draw (`rand_distr::StandardNormal`) per element from this
    /// generator, in the row-major order of the elements, drawn in the element type's compute
    /// type (`f32` for the 16-bit types of the `half` feature, so that a 16-bit step draws what
    /// an `f32` step draws).
    Rng(&'a mut dyn Rng),
    /// One `randn` of the sample's shape and element type from this generator, as diffusers'
    /// `randn_tensor(model_output.shape, generator=g, dtype=model_output.dtype)` draws it.
    /// The draw is made block by block as the step's pass reaches the elements (in row-major
    /// order), bit for bit the values of [`TorchGenerator::randn`], with no temporary array.
    Torch(&'a mut TorchGenerator),
}

impl<'a, T> NoiseSource<'a, T> {
    /// Noise the caller drew: an owned array or a view of any dimensionality and layout.
    pub fn given<D: Dimension>(noise: &'a ArrayRef<T, D>) -> Self {
        NoiseSource::Given(noise.view().into_dyn())
    }

    /// Noise the caller drew, as a row-major slice of `shape` (for the slice calls such as
    /// [`DdimScheduler::step_slices`](crate::DdimScheduler::step_slices)).
    ///
    /// # Errors
    ///
    /// [`DdimError::SliceLength`](crate::DdimError::SliceLength) when the slice does not hold
    /// exactly `shape`'s element count.
    ///
    /// ```
    /// let noise = vec![0.0f32; 12];
    /// assert!(ddim::NoiseSource::given_slice(&noise, &[3, 4]).is_ok());
    /// assert!(ddim::NoiseSource::given_slice(&noise, &[3, 5]).is_err());
    /// ```
    pub fn given_slice(noise: &'a [T], shape: &[usize]) -> Result<Self, crate::DdimError> {
        crate::scheduler::check_slice_len("variance_noise", noise.len(), shape)?;
        let len = noise.len();
        ndarray::ArrayView::from_shape(ndarray::IxDyn(shape), noise)
            .map(NoiseSource::Given)
            .map_err(|_| crate::DdimError::SliceLength {
                name: "variance_noise",
                len,
                shape: shape.to_vec(),
                expected: Some(len),
            })
    }
}

impl<T> fmt::Debug for NoiseSource<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoiseSource::None => f.write_str("None"),
            NoiseSource::Given(z) => write!(f, "Given(shape {:?})", z.shape()),
            NoiseSource::Rng(_) => f.write_str("Rng(..)"),
            NoiseSource::Torch(g) => f.debug_tuple("Torch").field(g).finish(),
        }
    }
}
