//! PyTorch's CPU random number generator, so that the same seed gives the same noise as
//! `torch.Generator().manual_seed(seed)` and a Rust pipeline reproduces a diffusers one.
//!
//! What torch does, and what this module repeats (PyTorch's `CPUGeneratorImpl`,
//! `DistributionsHelper.h` and the CPU `normal_kernel` of `DistributionTemplates.h`):
//!
//! - The engine is the 32-bit Mersenne Twister mt19937, seeded by `manual_seed(s)` with the
//!   standard `init_genrand` on the low 32 bits of `s`. A 64-bit draw is `(first << 32) | second`.
//! - A float32 uniform is the low 24 bits of a 32-bit draw times 2^-24; a float64 uniform the
//!   low 53 bits of a 64-bit draw times 2^-53.
//! - `randn` of 16 or more elements fills the tensor with uniforms of its own precision, then
//!   turns each block of 16 into normals by Box-Muller (`u1 = 1 - d[j]`, `u2 = d[j + 8]`,
//!   `r = sqrt(-2 ln u1)`, `theta = 2 pi u2`, `d[j] = r cos theta`, `d[j + 8] = r sin theta`);
//!   if the size is not a multiple of 16, the last 16 elements are refilled with fresh uniforms
//!   and transformed again. For float32 the arithmetic is float32, and on x86-64 torch uses
//!   vectorised polynomial approximations of `log`, `sin` and `cos` there
//!   ([`TorchCpuKernel`]).
//! - float16 and bfloat16 `randn` of 16 or more elements is computed in float32, one block of
//!   16 at a time: 16 fresh float32 uniforms, the float32 block transform above (of the same
//!   kernel), each result rounded to the 16-bit type (to nearest even). If the size is not a
//!   multiple of 16, 16 more uniforms make the last 16 elements; unlike float32 and float64, no
//!   uniform is drawn for the elements past the last whole block, so the engine advances by
//!   16 draws per started block.
//! - Fewer than 16 elements: each element is a float64 Box-Muller draw (`u1`, `u2` float64
//!   uniforms, `r = sqrt(-2 log1p(-u2))`, `theta = 2 pi u1`) rounded to the element type (for
//!   the 16-bit types in two steps, to float32 first, as a C++ cast through torch's `Half` and
//!   `BFloat16` constructors does); it returns `r cos theta` and keeps `r sin theta` in the
//!   generator for the next such draw, of any element type, in this call or a later one.

use std::f64::consts::PI;
use std::fmt;

use ndarray::{Array, ArrayRef, Dimension, IntoDimension};

use crate::float::Precision;
use crate::{DdimError, DdimFloat};

mod cephes;
mod mt19937;
mod normal;

use mt19937::Mt19937;
use normal::{normal_16_f32, normal_16_f64, BLOCK};

/// Which of PyTorch's two CPU implementations of float32 `randn` to follow for tensors of 16 or
/// more elements (float16 and bfloat16 `randn` of that size runs the same float32 code and
/// rounds its results, so it follows the kernel too). Everything else (float64, and fewer than 16
/// elements) is the same in both.
///
/// torch compiles its CPU kernels several times and picks one at startup, by the CPU:
/// `torch.backends.cpu.get_cpu_capability()` tells which. For `"AVX2"` and `"AVX512"` (nearly
/// every x86-64 processor of the last decade, unless the `ATEN_CPU_CAPABILITY` environment
/// variable says otherwise) float32 `randn` computes `log`, `sin` and `cos` with the float32
/// polynomial approximations of its `avx_mathfun.h`; for `"DEFAULT"` (ARM, including Apple
/// silicon, and x86 processors without AVX2) it calls the C library's `logf`, `sinf` and
/// `cosf`. The two round about a third of the elements differently, by up to 3e-6 (2.5e-6 at
/// most over 10 million draws), so noise drawn on one kind of machine is reproduced exactly only
/// with that machine's kernel.
///
/// ```
/// use ddim::{TorchCpuKernel, TorchGenerator};
///
/// // Noise as a Linux x86-64 machine running torch draws it, whatever this machine is:
/// let mut generator = TorchGenerator::manual_seed(42).with_kernel(TorchCpuKernel::Avx2);
/// let noise = generator.randn::<f32, _>((1, 4, 8, 8));
/// assert_eq!(noise.shape(), &[1, 4, 8, 8]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TorchCpuKernel {
    /// torch's capability `"DEFAULT"`: float32 `log`, `cos` and `sin` from the C library
    /// (`logf`, `cosf`, `sinf`), with `theta` computed in double and rounded to float32. Exact
    /// when this program and torch use the same C library (for example glibc on Linux).
    Scalar,
    /// torch's capabilities `"AVX2"` and `"AVX512"`: the float32 Cephes polynomials of
    /// `avx_mathfun.h` (`log256_ps`, `sincos256_ps`), evaluated here lane by lane with the same
    /// float32 operations, including the multiply-adds that torch's Linux build fuses into FMA
    /// instructions. Portable: it gives the same bits on every machine. (torch's Windows build,
    /// made with another compiler, may fuse differently; that is not checked.)
    Avx2,
}

impl TorchCpuKernel {
    /// The kernel torch would use on this machine with default settings: [`Avx2`](Self::Avx2)
    /// on an x86-64 processor with AVX2 and FMA (torch's condition for its AVX2 capability),
    /// [`Scalar`](Self::Scalar) otherwise.
    ///
    /// ```
    /// let kernel = ddim::TorchCpuKernel::detect();
    /// # let _ = kernel;
    /// ```
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return TorchCpuKernel::Avx2;
            }
        }
        TorchCpuKernel::Scalar
    }
}

/// PyTorch's CPU random number generator: `TorchGenerator::manual_seed(seed)` draws the numbers
/// `torch.Generator().manual_seed(seed)` draws, so noise made here is the noise of the Python
/// pipeline you are porting.
///
/// [`randn`](Self::randn) is `torch.randn(shape, generator=g, dtype=...)` for `f32` and `f64`
/// (and, with the `half` feature, `torch.float16` and `torch.bfloat16` as `half::f16` and
/// `half::bf16`), and the generator's state advances across calls exactly as torch's does (including the
/// second normal that torch keeps for its next draw of fewer than 16 elements). It is also
/// what diffusers' `randn_tensor(shape, generator=g, dtype=...)` returns for a CPU generator,
/// the function its pipelines draw initial latents and `DDIMScheduler.step`'s noise with.
/// `torch.manual_seed(s)` followed by `torch.randn(...)` without a generator draws the same
/// numbers too.
///
/// # Precision
///
/// Float64 results, and results of fewer than 16 elements in any type, are those of torch
/// bit for bit (given the same C library's `log`, `log1p`, `sin` and `cos`; on Linux both use
/// glibc's). Float32, float16 and bfloat16 results of 16 or more elements depend on which of
/// torch's CPU kernels is followed ([`TorchCpuKernel`]); with the matching kernel they are bit
/// for bit too. [`manual_seed`](Self::manual_seed) picks the one torch picks on this machine.
/// One difference is expected but not checked: torch's headers build its float16 type on 64-bit
/// ARM from the processor's own half type, which converts a double in one rounding, where
/// x86-64 builds (followed here) round to float32 first. The two differ on about one float16
/// draw of fewer than 16 elements in 18,000 (17 of 300,000 measured), by one unit in the last
/// place.
///
/// # Reproducing a diffusers loop
///
/// diffusers draws the initial latents first, then, in each step with `eta > 0`, one noise
/// tensor of the model output's shape and type, and nothing at all when `eta == 0`. A step with
/// [`NoiseSource::Torch`](crate::NoiseSource::Torch) draws the step's noise the same way:
///
/// ```
/// use ddim::ndarray::Array4;
/// use ddim::{DdimConfig, DdimScheduler, NoiseSource, StepOptions, TorchGenerator};
///
/// let mut scheduler = DdimScheduler::new(DdimConfig::default())?;
/// scheduler.set_timesteps(20)?;
/// let unet = |x: &Array4<f32>, _t: usize| x * 0.5; // your network
///
/// // generator = torch.Generator().manual_seed(42)
/// let mut generator = TorchGenerator::manual_seed(42);
/// // latents = randn_tensor((1, 4, 8, 8), generator=generator, dtype=torch.float32)
/// let mut latents: Array4<f32> = generator.randn((1, 4, 8, 8));
/// latents *= scheduler.init_noise_sigma();
/// for &t in scheduler.timesteps() {
///     let eps = unet(&scheduler.scale_model_input(&latents, t), t);
///     // scheduler.step(eps, t, latents, eta=1.0, generator=generator).prev_sample
///     let noise = NoiseSource::Torch(&mut generator);
///     let options = StepOptions { eta: 1.0, noise, ..Default::default() };
///     scheduler.step_in_place(&eps, t, &mut latents, options)?;
/// }
/// # Ok::<(), ddim::DdimError>(())
/// ```
///
/// Such a step allocates its noise array; a loop without allocations draws into a buffer of its
/// own, only when `eta > 0` (`generator.randn_into(&mut noise)`), and passes it as
/// [`NoiseSource::given`](crate::NoiseSource::given).
///
/// With one generator per batch item (diffusers' `generator=[g0, g1, ...]`), diffusers draws
/// each item's latents and each item's step noise from its own generator with the item's shape
/// `(1, ...)` and concatenates them along axis 0; do the same, with
/// [`ndarray::concatenate`](fn@ndarray::concatenate), and give the step that noise with
/// [`NoiseSource::given`](crate::NoiseSource::given).
#[derive(Clone, PartialEq)]
pub struct TorchGenerator {
    /// The engine.
    engine: Mt19937,
    /// The seed given to `manual_seed`, all 64 bits of it.
    seed: u64,
    /// torch's `next_double_normal_sample`: the sine half of the last double Box-Muller draw.
    next_normal: Option<f64>,
    /// Which float32 kernel to follow for 16 elements or more.
    kernel: TorchCpuKernel,
}

impl fmt::Debug for TorchGenerator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TorchGenerator")
            .field("seed", &self.seed)
            .field("position", &self.engine.position())
            .field("next_normal", &self.next_normal)
            .field("kernel", &self.kernel)
            .finish_non_exhaustive()
    }
}

impl TorchGenerator {
    /// A generator seeded as `torch.Generator().manual_seed(seed)` seeds one (only the low 32
    /// bits of `seed` reach the engine, as in torch), following the float32 kernel torch uses on
    /// this machine ([`TorchCpuKernel::detect`]). A negative Python seed `s` is the `u64`
    /// `s as u64` (torch wraps it the same way).
    ///
    /// ```
    /// use ddim::TorchGenerator;
    ///
    /// // torch.randn(3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    /// let x = TorchGenerator::manual_seed(0).randn::<f64, _>(3);
    /// assert_eq!(x.to_vec(), [1.5409961082440433, -0.2934289057609464, -2.1787893820745574]);
    /// ```
    pub fn manual_seed(seed: u64) -> Self {
        TorchGenerator {
            // Only the low 32 bits of the seed reach the engine.
            engine: Mt19937::new(seed as u32),
            seed,
            next_normal: None,
            kernel: TorchCpuKernel::detect(),
        }
    }

    /// The same generator following the given float32 kernel (see [`TorchCpuKernel`]), for
    /// reproducing numbers drawn on another kind of machine.
    pub fn with_kernel(mut self, kernel: TorchCpuKernel) -> Self {
        self.kernel = kernel;
        self
    }

    /// The float32 kernel this generator follows.
    pub fn kernel(&self) -> TorchCpuKernel {
        self.kernel
    }

    /// The seed given to [`manual_seed`](Self::manual_seed), as torch's `initial_seed()`.
    pub fn initial_seed(&self) -> u64 {
        self.seed
    }

    /// `torch.randn(shape, generator=g, dtype=T)`: a new array of standard normal draws, in
    /// row-major order, of any shape and of any element type ([`DdimFloat`]: `f32`, `f64`, and
    /// with the `half` feature `half::f16` for `torch.float16` and `half::bf16` for
    /// `torch.bfloat16`). The shape is anything
    /// ndarray turns into a dimension: `(1, 4, 64, 64)`, `[2, 3]`, `7`, `x.raw_dim()`,
    /// `IxDyn(&[..])`. An empty shape draws nothing.
    ///
    /// # Panics
    ///
    /// As ndarray's constructors, if the product of the shape's non-zero lengths overflows
    /// `isize` (even when another length is 0, as in `(0, usize::MAX)`). For shapes that come
    /// from input, use [`try_randn`](Self::try_randn), which returns an error instead.
    ///
    /// # Example
    ///
    /// ```
    /// use ddim::ndarray::Array2;
    /// use ddim::TorchGenerator;
    ///
    /// let mut g = TorchGenerator::manual_seed(1);
    /// let a: Array2<f32> = g.randn((2, 3)); // fewer than 16 elements: double draws, rounded
    /// let b = g.randn::<f64, _>([16]); // the generator has moved on, as torch's does
    /// assert_eq!(a.shape(), &[2, 3]);
    /// assert_eq!(b.len(), 16);
    /// ```
    pub fn randn<T, Sh>(&mut self, shape: Sh) -> Array<T, Sh::Dim>
    where
        T: DdimFloat,
        Sh: IntoDimension,
    {
        let mut out = Array::from_elem(shape.into_dimension(), T::ZERO);
        self.randn_into(&mut out);
        out
    }

    /// [`randn`](Self::randn) for shapes that come from input: an error instead of a panic when
    /// the shape is too large to be an array. The generator is untouched on error.
    ///
    /// # Errors
    ///
    /// [`DdimError::ShapeTooLarge`] when the product of the shape's non-zero lengths overflows
    /// `isize` (ndarray's limit), including zero-size shapes such as `(0, usize::MAX)`.
    ///
    /// # Example
    ///
    /// ```
    /// use ddim::{DdimError, TorchGenerator};
    ///
    /// let mut g = TorchGenerator::manual_seed(0);
    /// assert!(matches!(g.try_randn::<f32, _>((0, usize::MAX)), Err(DdimError::ShapeTooLarge { .. })));
    /// let expected = TorchGenerator::manual_seed(0).randn::<f32, _>((2, 3));
    /// assert_eq!(g.try_randn::<f32, _>((2, 3))?, expected); // nothing was drawn on error
    /// # Ok::<(), DdimError>(())
    /// ```
    pub fn try_randn<T, Sh>(&mut self, shape: Sh) -> Result<Array<T, Sh::Dim>, DdimError>
    where
        T: DdimFloat,
        Sh: IntoDimension,
    {
        let dim = shape.into_dimension();
        let fits = dim
            .slice()
            .iter()
            .filter(|&&d| d != 0)
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .is_some_and(|n| isize::try_from(n).is_ok());
        if !fits {
            return Err(DdimError::ShapeTooLarge {
                shape: dim.slice().to_vec(),
            });
        }
        let mut out = Array::from_elem(dim, T::ZERO);
        self.randn_into(&mut out);
        Ok(out)
    }

    /// Overwrites `out` with `torch.randn(out.shape(), generator=g, dtype=T)`, without
    /// allocating when `out` is in standard (row-major, contiguous) layout. The draws are
    /// assigned in row-major order of the indices whatever the memory layout, so the values are
    /// those of [`randn`](Self::randn) of the same shape.
    ///
    /// ```
    /// use ddim::ndarray::Array3;
    /// use ddim::TorchGenerator;
    ///
    /// let mut noise = Array3::<f32>::zeros((4, 8, 8));
    /// TorchGenerator::manual_seed(3).randn_into(&mut noise);
    /// assert_eq!(noise, TorchGenerator::manual_seed(3).randn::<f32, _>((4, 8, 8)));
    /// ```
    pub fn randn_into<T: DdimFloat, D: Dimension>(&mut self, out: &mut ArrayRef<T, D>) {
        if let Some(slice) = out.as_slice_mut() {
            self.fill_normal(slice);
            return;
        }
        let mut values = vec![T::ZERO; out.len()];
        self.fill_normal(&mut values);
        for (slot, value) in out.iter_mut().zip(values) {
            *slot = value;
        }
    }

    /// Fills `out` as torch's `normal_` fills a contiguous tensor of `out.len()` elements.
    fn fill_normal<T: DdimFloat>(&mut self, out: &mut [T]) {
        if out.len() < BLOCK {
            for slot in out.iter_mut() {
                // `static_cast<scalar_t>(double)`: to float32 first for the 16-bit types.
                *slot = T::narrow(T::Compute::from_f64(self.normal_f64()));
            }
            return;
        }
        let kernel = self.kernel;
        let single = |b: &mut [f32; BLOCK]| normal_16_f32(b, kernel);
        match T::PRECISION {
            Precision::Single => self.fill_blocks(out, Self::uniform_f32, single, true),
            Precision::Double => self.fill_blocks(out, Self::uniform_f64, normal_16_f64, true),
            Precision::Reduced => self.fill_blocks(out, Self::uniform_f32, single, false),
        }
    }

    /// torch's `normal_fill` for `out.len() >= 16`, with uniforms and arithmetic in precision
    /// `U`, each result rounded to `T` once. For float32 and float64 (`uniforms_first`) torch
    /// first fills every element with a uniform, transforms the blocks of 16, then refills and
    /// transforms the last 16 elements if the size is not a multiple of 16; the uniforms drawn
    /// for the elements past the last whole block are overwritten unused. Drawing block by block
    /// consumes the engine in the same order and gives the same values. For the 16-bit types
    /// torch draws block by block itself, and no uniform is wasted.
    fn fill_blocks<T, U>(
        &mut self,
        out: &mut [T],
        uniform: fn(&mut Self) -> U,
        transform: impl Fn(&mut [U; BLOCK]),
        uniforms_first: bool,
    ) where
        T: DdimFloat,
        U: Copy + Default + Into<f64>,
    {
        let mut block = [U::default(); BLOCK];
        let mut draw_block = |g: &mut Self, dest: &mut [T]| {
            for u in block.iter_mut() {
                *u = uniform(g);
            }
            transform(&mut block);
            for (slot, &value) in dest.iter_mut().zip(block.iter()) {
                // Exact but for the one rounding to a 16-bit type: a value of precision `U`
                // survives the round trip through f64 and the compute type unchanged.
                *slot = T::narrow(T::Compute::from_f64(value.into()));
            }
        };
        let mut chunks = out.chunks_exact_mut(BLOCK);
        for chunk in &mut chunks {
            draw_block(self, chunk);
        }
        let rest = chunks.into_remainder().len();
        if rest != 0 {
            if uniforms_first {
                for _ in 0..rest {
                    uniform(self);
                }
            }
            if let Some(last) = out.rchunks_exact_mut(BLOCK).next() {
                draw_block(self, last);
            }
        }
    }

    /// One draw of torch's `normal_distribution<double>` with mean 0 and standard deviation 1:
    /// the cached sine half if there is one, else a new Box-Muller pair.
    fn normal_f64(&mut self) -> f64 {
        // torch returns `value * std + mean`; with 1 and 0 that only turns -0.0 into +0.0.
        if let Some(cached) = self.next_normal.take() {
            return cached + 0.0;
        }
        let u1 = self.uniform_f64();
        let u2 = self.uniform_f64();
        let r = (-2.0 * (-u2).ln_1p()).sqrt();
        let theta = 2.0 * PI * u1;
        self.next_normal = Some(r * theta.sin());
        r * theta.cos() + 0.0
    }

    /// A float32 uniform in `[0, 1)`: the low 24 bits of a draw times 2^-24.
    fn uniform_f32(&mut self) -> f32 {
        (self.next_u32() & 0x00ff_ffff) as f32 * (1.0 / 16_777_216.0)
    }

    /// A float64 uniform in `[0, 1)`: the low 53 bits of a 64-bit draw times 2^-53.
    fn uniform_f64(&mut self) -> f64 {
        let high = u64::from(self.next_u32());
        let low = u64::from(self.next_u32());
        (((high << 32) | low) & ((1u64 << 53) - 1)) as f64 * (1.0 / 9_007_199_254_740_992.0)
    }

    /// The next 32-bit output of the engine.
    fn next_u32(&mut self) -> u32 {
        self.engine.next_u32()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_low_32_bits_of_the_seed_reach_the_engine() {
        let mut a = TorchGenerator::manual_seed(7);
        let mut b = TorchGenerator::manual_seed((1 << 32) + 7);
        assert_eq!(b.initial_seed(), (1 << 32) + 7);
        for _ in 0..1000 {
            assert_eq!(a.next_u32(), b.next_u32());
        }
    }

    #[test]
    fn uniforms_are_exact_multiples_below_one() {
        let mut g = TorchGenerator::manual_seed(3);
        for _ in 0..10_000 {
            let u = g.uniform_f32();
            assert!((0.0..1.0).contains(&u));
            assert_eq!((u * 16_777_216.0).fract(), 0.0);
            let v = g.uniform_f64();
            assert!((0.0..1.0).contains(&v));
        }
    }

    #[test]
    fn cephes_log_and_sincos_are_close_to_libm() {
        let mut g = TorchGenerator::manual_seed(11);
        for _ in 0..100_000 {
            let u = 1.0 - g.uniform_f32();
            let l = cephes::log(u);
            assert!((f64::from(l) - f64::from(u).ln()).abs() <= 2e-7 * (1.0 + f64::from(l).abs()));
            let theta = cephes::TWO_PI * g.uniform_f32();
            let (s, c) = cephes::sincos(theta);
            assert!((f64::from(s) - f64::from(theta).sin()).abs() <= 3e-7);
            assert!((f64::from(c) - f64::from(theta).cos()).abs() <= 3e-7);
        }
        assert!(cephes::log(0.0).is_nan());
        assert!(cephes::log(-1.0).is_nan());
        assert_eq!(cephes::log(1.0), 0.0);
        assert_eq!(cephes::sincos(0.0), (0.0, 1.0));
    }
}
