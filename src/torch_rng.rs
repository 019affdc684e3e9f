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
//! - Fewer than 16 elements: each element is a float64 Box-Muller draw (`u1`, `u2` float64
//!   uniforms, `r = sqrt(-2 log1p(-u2))`, `theta = 2 pi u1`) rounded to the element type; it
//!   returns `r cos theta` and keeps `r sin theta` in the generator for the next such draw, of
//!   either element type, in this call or a later one.

use std::any::TypeId;
use std::f64::consts::PI;
use std::fmt;

use ndarray::{Array, ArrayBase, Data, DataMut, Dimension, IntoDimension};

use crate::{DdimError, DdimFloat, DdimScheduler, DdimSchedulerOutput, StepOptions};

/// Words of mt19937 state.
const N: usize = 624;
/// The twist's middle offset.
const M: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7fff_ffff;

/// torch's Box-Muller block; below this many elements torch draws each normal on its own, in
/// double (with the cache).
const BLOCK: usize = 16;

/// Which of PyTorch's two CPU implementations of float32 `randn` to follow for tensors of 16 or
/// more elements. Everything else (float64, and fewer than 16 elements) is the same in both.
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
/// [`randn`](Self::randn) is `torch.randn(shape, generator=g, dtype=...)` for `f32` and `f64`,
/// and the generator's state advances across calls exactly as torch's does (including the
/// second normal that torch keeps for its next draw of fewer than 16 elements). It is also
/// what diffusers' `randn_tensor(shape, generator=g, dtype=...)` returns for a CPU generator,
/// the function its pipelines draw initial latents and `DDIMScheduler.step`'s noise with.
/// `torch.manual_seed(s)` followed by `torch.randn(...)` without a generator draws the same
/// numbers too.
///
/// # Precision
///
/// Float64 results, and results of fewer than 16 elements in either type, are those of torch
/// bit for bit (given the same C library's `log`, `log1p`, `sin` and `cos`; on Linux both use
/// glibc's). Float32 results of 16 or more elements depend on which of torch's CPU kernels is
/// followed ([`TorchCpuKernel`]); with the matching kernel they are bit for bit too.
/// [`manual_seed`](Self::manual_seed) picks the one torch picks on this machine.
///
/// # Reproducing a diffusers loop
///
/// diffusers draws the initial latents first, then, in each step with `eta > 0`, one noise
/// tensor of the model output's shape and type, and nothing at all when `eta == 0`.
/// [`DdimScheduler::step_with_generator`] draws the step's noise the same way:
///
/// ```
/// use ddim::ndarray::Array4;
/// use ddim::{DdimConfig, DdimScheduler, StepOptions, TorchGenerator};
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
/// let options = StepOptions { eta: 1.0, ..Default::default() };
/// for &t in scheduler.timesteps() {
///     let eps = unet(&scheduler.scale_model_input(&latents, t), t);
///     // scheduler.step(eps, t, latents, eta=1.0, generator=generator).prev_sample
///     latents = scheduler
///         .step_with_generator(&eps, t, &latents, &options, &mut generator)?
///         .prev_sample;
/// }
/// # Ok::<(), ddim::DdimError>(())
/// ```
///
/// The same loop without allocations draws into a buffer of its own, only when `eta > 0`:
/// `if options.eta > 0.0 { generator.randn_into(&mut noise) }`, then
/// [`step_into_with_noise`](DdimScheduler::step_into_with_noise) with that buffer.
///
/// With one generator per batch item (diffusers' `generator=[g0, g1, ...]`), diffusers draws
/// each item's latents and each item's step noise from its own generator with the item's shape
/// `(1, ...)` and concatenates them along axis 0; do the same, with
/// [`ndarray::concatenate`](fn@ndarray::concatenate) and
/// [`step_with_noise`](DdimScheduler::step_with_noise).
#[derive(Clone, PartialEq)]
pub struct TorchGenerator {
    /// The mt19937 state.
    state: [u32; N],
    /// The next state word to temper; `N` when the state must be twisted first. Never above `N`.
    index: usize,
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
            .field("index", &self.index)
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
        let mut state = [0u32; N];
        // init_genrand: the low 32 bits of the seed, then the standard recurrence.
        let mut word = seed as u32;
        for (i, slot) in state.iter_mut().enumerate() {
            if i > 0 {
                word = 1_812_433_253u32
                    .wrapping_mul(word ^ (word >> 30))
                    .wrapping_add(i as u32);
            }
            *slot = word;
        }
        TorchGenerator {
            state,
            index: N,
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
    /// row-major order, of any shape and of element type `f32` or `f64`. The shape is anything
    /// ndarray turns into a dimension: `(1, 4, 64, 64)`, `[2, 3]`, `7`, `x.raw_dim()`,
    /// `IxDyn(&[..])`. An empty shape draws nothing.
    ///
    /// # Panics
    ///
    /// As ndarray's constructors, if the number of elements overflows `isize`.
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
    pub fn randn_into<T, S, D>(&mut self, out: &mut ArrayBase<S, D>)
    where
        T: DdimFloat,
        S: DataMut<Elem = T>,
        D: Dimension,
    {
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
                *slot = T::from_f64(self.normal_f64());
            }
        } else if TypeId::of::<T>() == TypeId::of::<f32>() {
            let kernel = self.kernel;
            self.fill_blocks(out, Self::uniform_f32, |b| normal_16_f32(b, kernel));
        } else {
            self.fill_blocks(out, Self::uniform_f64, normal_16_f64);
        }
    }

    /// torch's `normal_fill` for `out.len() >= 16`, in precision `U`. torch first fills every
    /// element with a uniform, transforms the blocks of 16, then refills and transforms the
    /// last 16 elements if the size is not a multiple of 16; the uniforms drawn for the elements
    /// past the last whole block are overwritten unused. Drawing block by block consumes the
    /// engine in the same order and gives the same values.
    fn fill_blocks<T, U>(
        &mut self,
        out: &mut [T],
        uniform: fn(&mut Self) -> U,
        transform: impl Fn(&mut [U; BLOCK]),
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
                // Exact: a float32 value survives the round trip through f64 unchanged.
                *slot = T::from_f64(value.into());
            }
        };
        let mut chunks = out.chunks_exact_mut(BLOCK);
        for chunk in &mut chunks {
            draw_block(self, chunk);
        }
        let rest = chunks.into_remainder().len();
        if rest != 0 {
            for _ in 0..rest {
                uniform(self);
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

    /// The next tempered mt19937 output.
    fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            self.twist();
        }
        // `index < N` here, so the modulo never changes it; it only shows the bound.
        let mut y = self.state[self.index % N];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }

    /// Regenerates the 624 state words (every index is reduced modulo `N`).
    fn twist(&mut self) {
        let s = &mut self.state;
        for i in 0..N {
            let y = (s[i] & UPPER_MASK) | (s[(i + 1) % N] & LOWER_MASK);
            let odd = if y & 1 == 1 { MATRIX_A } else { 0 };
            s[i] = s[(i + M) % N] ^ (y >> 1) ^ odd;
        }
        self.index = 0;
    }
}

/// torch's `NormalFill16<double>`: Box-Muller on 8 pairs, in double.
fn normal_16_f64(block: &mut [f64; BLOCK]) {
    let (firsts, seconds) = block.split_at_mut(BLOCK / 2);
    for (a, b) in firsts.iter_mut().zip(seconds.iter_mut()) {
        let u1 = 1.0 - *a; // [0, 1) -> (0, 1] for the log
        let u2 = *b;
        let radius = (-2.0 * u1.ln()).sqrt();
        let theta = 2.0 * PI * u2;
        // torch writes fma(value, std, mean) with std 1 and mean 0: `value + 0.0`.
        *a = radius * theta.cos() + 0.0;
        *b = radius * theta.sin() + 0.0;
    }
}

/// torch's `NormalFill16<float>`, in the given kernel: Box-Muller on 8 pairs, in float32.
fn normal_16_f32(block: &mut [f32; BLOCK], kernel: TorchCpuKernel) {
    let (firsts, seconds) = block.split_at_mut(BLOCK / 2);
    for (a, b) in firsts.iter_mut().zip(seconds.iter_mut()) {
        let u1 = 1.0 - *a;
        let u2 = *b;
        let (radius, cos, sin) = match kernel {
            TorchCpuKernel::Scalar => {
                // `2.0f * c10::pi<double> * u2` is evaluated in double, then stored as float.
                let theta = (2.0 * PI * f64::from(u2)) as f32;
                ((-2.0 * u1.ln()).sqrt(), theta.cos(), theta.sin())
            }
            TorchCpuKernel::Avx2 => {
                let theta = cephes::TWO_PI * u2;
                let (sin, cos) = cephes::sincos(theta);
                ((-2.0 * cephes::log(u1)).sqrt(), cos, sin)
            }
        };
        *a = radius * cos + 0.0;
        *b = radius * sin + 0.0;
    }
}

/// torch's `avx_mathfun.h` (after Julien Pommier's `sse_mathfun.h`, zlib licence), one lane at
/// a time: the same float32 operations in the same order, with the float constants rounded from
/// their double literals as C does, and a fused multiply-add wherever GCC contracts a multiply
/// into the add that is its only use when it compiles torch's AVX2 kernels (checked against
/// torch 2.15.0's Linux build: every element of 5.6 million draws agrees).
// The constants are spelled as in `avx_mathfun.h`, digits and all, and rounded as C rounds them.
#[allow(clippy::excessive_precision, clippy::approx_constant)]
mod cephes {
    /// `_mm256_set1_ps(2.0f * c10::pi<double>)`.
    pub(super) const TWO_PI: f32 = (2.0 * std::f64::consts::PI) as f32;

    const SQRTHF: f32 = 0.707_106_781_186_547_524_f64 as f32;
    const LOG_P: [f32; 9] = [
        7.037_683_629_2e-2_f64 as f32,
        -1.151_461_031_0e-1_f64 as f32,
        1.167_699_874_0e-1_f64 as f32,
        -1.242_014_084_6e-1_f64 as f32,
        1.424_932_278_7e-1_f64 as f32,
        -1.666_805_766_5e-1_f64 as f32,
        2.000_071_476_5e-1_f64 as f32,
        -2.499_999_399_3e-1_f64 as f32,
        3.333_333_117_4e-1_f64 as f32,
    ];
    const LOG_Q1: f32 = -2.121_944_40e-4_f64 as f32;
    const LOG_Q2: f32 = 0.693_359_375_f64 as f32;
    const MIN_NORM_POS: f32 = f32::MIN_POSITIVE;

    const MINUS_DP1: f32 = -0.785_156_25_f64 as f32;
    const MINUS_DP2: f32 = -2.418_756_484_985_351_562_5e-4_f64 as f32;
    const MINUS_DP3: f32 = -3.774_894_977_445_941_08e-8_f64 as f32;
    const SINCOF: [f32; 3] = [
        -1.951_529_589_1e-4_f64 as f32,
        8.332_160_873_6e-3_f64 as f32,
        -1.666_665_461_1e-1_f64 as f32,
    ];
    const COSCOF: [f32; 3] = [
        2.443_315_711_809_948e-5_f64 as f32,
        -1.388_731_625_493_765e-3_f64 as f32,
        4.166_664_568_298_827e-2_f64 as f32,
    ];
    const FOPI: f32 = 1.273_239_544_735_16_f64 as f32; // 4 / pi

    /// `log256_ps`: the natural logarithm; NaN for `x <= 0`.
    pub(super) fn log(x: f32) -> f32 {
        let invalid = x <= 0.0;
        // _mm256_max_ps(x, min_norm_pos): the second operand unless x is greater.
        let x = if x > MIN_NORM_POS { x } else { MIN_NORM_POS };
        let bits = x.to_bits();
        let mut e = ((bits >> 23) as i32 - 0x7f) as f32 + 1.0;
        let mut x = f32::from_bits((bits & !0x7f80_0000) | 0.5f32.to_bits());
        let small = x < SQRTHF;
        let tmp = if small { x } else { 0.0 };
        x -= 1.0;
        e -= if small { 1.0 } else { 0.0 };
        x += tmp;
        let z = x * x;
        let mut y = LOG_P[0];
        for &p in &LOG_P[1..] {
            y = y.mul_add(x, p);
        }
        y *= x;
        y = y.mul_add(z, e * LOG_Q1);
        // GCC fuses the next two multiplies as well, but their products are exact (a power of
        // two; a small integer times a constant of 9 significant bits), so fusing changes nothing.
        y -= z * 0.5;
        let r = (x + y) + e * LOG_Q2;
        if invalid {
            f32::from_bits(u32::MAX)
        } else {
            r
        }
    }

    /// `sincos256_ps`: `(sin x, cos x)`, for the arguments Box-Muller gives it (`0 <= x < 2 pi`;
    /// the reduction is accurate for `|x| < 8192`).
    pub(super) fn sincos(x: f32) -> (f32, f32) {
        let sign_bit_sin = x.to_bits() & 0x8000_0000;
        let mut x = x.abs();
        // _mm256_cvttps_epi32 truncates; the argument is far from the i32 range here.
        let mut j = (x * FOPI) as i32;
        j = j.wrapping_add(1) & !1;
        let y = j as f32;
        let swap_sign_bit_sin = ((j & 4) as u32) << 29;
        let poly_mask = (j & 2) == 0;
        // `y <= 8` here and DP1, DP2 have 8 and 11 significant bits: those two products are exact, so
        // GCC's fused multiply-adds equal these separate operations. DP3's product is not exact.
        x += y * MINUS_DP1;
        x += y * MINUS_DP2;
        x = y.mul_add(MINUS_DP3, x);
        let sign_bit_cos = ((!j.wrapping_sub(2) & 4) as u32) << 29;
        let sign_bit_sin = sign_bit_sin ^ swap_sign_bit_sin;

        let z = x * x;
        let mut yc = COSCOF[0];
        yc = yc.mul_add(z, COSCOF[1]);
        yc = yc.mul_add(z, COSCOF[2]);
        yc *= z;
        yc = yc.mul_add(z, -(z * 0.5));
        yc += 1.0;

        let mut ys = SINCOF[0];
        ys = ys.mul_add(z, SINCOF[1]);
        ys = ys.mul_add(z, SINCOF[2]);
        ys *= z;
        ys = ys.mul_add(x, x);

        // Select with masks and add zeros, as the vector code does (this fixes signs of zero).
        let (ysin2, ysin1) = if poly_mask { (ys, 0.0) } else { (0.0, yc) };
        let ys_rest = ys - ysin2;
        let yc_rest = yc - ysin1;
        let sin = ysin1 + ysin2;
        let cos = yc_rest + ys_rest;
        (
            f32::from_bits(sin.to_bits() ^ sign_bit_sin),
            f32::from_bits(cos.to_bits() ^ sign_bit_cos),
        )
    }
}

impl DdimScheduler {
    /// A step with options and noise drawn from a [`TorchGenerator`] as diffusers'
    /// `DDIMScheduler.step(model_output, timestep, sample, eta=..., generator=g)` draws it:
    /// when `eta > 0`, one `randn` of the model output's shape and element type
    /// (`randn_tensor(model_output.shape, generator=g, dtype=model_output.dtype)`); when
    /// `eta == 0`, nothing, so that the generator's later draws stay aligned with the
    /// reference's. With the initial latents drawn from the same generator first, a loop of
    /// these steps follows the reference's trajectory from the same seed (see
    /// [`TorchGenerator`]).
    ///
    /// On error the generator is left as it was.
    ///
    /// # Errors
    ///
    /// As [`step_with_noise`](DdimScheduler::step_with_noise).
    ///
    /// # Example
    ///
    /// ```
    /// use ddim::ndarray::Array2;
    /// use ddim::{DdimConfig, DdimScheduler, StepOptions, TorchGenerator};
    ///
    /// let mut scheduler = DdimScheduler::new(DdimConfig::default())?;
    /// scheduler.set_timesteps(20)?;
    /// let mut generator = TorchGenerator::manual_seed(7);
    /// let sample: Array2<f32> = generator.randn((2, 3));
    /// let options = StepOptions { eta: 0.5, ..Default::default() };
    /// let out = scheduler.step_with_generator(&(&sample * 0.1), 500, &sample, &options, &mut generator)?;
    /// assert_eq!(out.prev_sample.shape(), &[2, 3]);
    /// # Ok::<(), ddim::DdimError>(())
    /// ```
    pub fn step_with_generator<T, S1, S2, D>(
        &self,
        model_output: &ArrayBase<S1, D>,
        timestep: usize,
        sample: &ArrayBase<S2, D>,
        options: &StepOptions,
        generator: &mut TorchGenerator,
    ) -> Result<DdimSchedulerOutput<T, D>, DdimError>
    where
        T: DdimFloat,
        S1: Data<Elem = T>,
        S2: Data<Elem = T>,
        D: Dimension,
    {
        if options.eta > 0.0 {
            let before = generator.clone();
            let noise: Array<T, D> = generator.randn(model_output.raw_dim());
            let result = self.step_with_noise(model_output, timestep, sample, options, &noise);
            if result.is_err() {
                *generator = before;
            }
            return result;
        }
        // No draw, as in the reference. The noise is not read (a NaN or negative eta is
        // rejected by the step), so the sample stands in for it.
        self.step_with_noise(model_output, timestep, sample, options, sample)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mt19937_matches_the_standard_engine() {
        // The C++ standard requires the 10000th output of a default-seeded mt19937 to be this.
        let mut g = TorchGenerator::manual_seed(5489);
        let mut last = 0;
        for _ in 0..10_000 {
            last = g.next_u32();
        }
        assert_eq!(last, 4_123_659_995);
    }

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
