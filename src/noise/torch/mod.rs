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
use normal::{Isa, Scratch, BATCH, BLOCK};

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
    /// instructions. Portable: it gives the same bits on every machine. On an x86-64 processor
    /// with AVX2 and FMA (chosen at run time) it computes eight pairs at a time with hardware
    /// fused multiply-adds, as torch does; elsewhere one lane at a time, with the C library's
    /// `fmaf`, which is exact too but much slower. (torch's Windows build, made with another
    /// compiler, may fuse differently; that is not checked.)
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
/// Such a step draws its noise block by block inside its single pass over the arrays, in the
/// order torch's `randn` produces it, without a temporary array: with
/// [`step_into`](crate::DdimScheduler::step_into) or
/// [`step_in_place`](crate::DdimScheduler::step_in_place) it allocates nothing.
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
    /// allocating. The draws are assigned in row-major order of the indices whatever the memory
    /// layout, so the values are those of [`randn`](Self::randn) of the same shape.
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
        self.randn_into_with(out, Isa::Native);
    }

    /// [`randn_into`](Self::randn_into) computed by the code compiled for the target's
    /// baseline instruction set only, never by the AVX2 and FMA code chosen at run time; the
    /// same values, more slowly. Not part of the API (no stability promise): it exists so that
    /// the benchmarks can measure the run-time choice against the baseline in one run.
    #[doc(hidden)]
    pub fn randn_into_portable<T: DdimFloat, D: Dimension>(&mut self, out: &mut ArrayRef<T, D>) {
        self.randn_into_with(out, Isa::Portable);
    }

    /// [`randn_into`](Self::randn_into) with the given compilation of the loops.
    fn randn_into_with<T: DdimFloat, D: Dimension>(&mut self, out: &mut ArrayRef<T, D>, isa: Isa) {
        let len = out.len();
        let mut stream = NormalStream::<T>::new(self, len, isa);
        if let Some(slice) = out.as_slice_mut() {
            stream.fill(slice, |v| v);
            return;
        }
        // Any other layout: a batch at a time through a small buffer, in row-major order.
        let mut buffer = [T::ZERO; BATCH];
        let mut slots = out.iter_mut();
        let mut left = len;
        while left > 0 {
            let n = left.min(BATCH);
            let batch = &mut buffer[..n];
            stream.fill(batch, |v| v);
            // The batch first: `zip` then never takes a slot past the batch's end.
            for (&value, slot) in batch.iter().zip(slots.by_ref()) {
                *slot = value;
            }
            left -= n;
        }
    }

    /// torch's normal fill of `len` elements of type `T`, handed out in row-major order a
    /// piece at a time (see [`NormalStream`]): what [`randn`](Self::randn) of `len` elements
    /// would return, drawn only as it is consumed.
    pub(crate) fn normal_stream<T: DdimFloat>(&mut self, len: usize) -> NormalStream<'_, T> {
        NormalStream::new(self, len, Isa::Native)
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

    /// A float32 uniform in `[0, 1)`.
    #[cfg(test)]
    fn uniform_f32(&mut self) -> f32 {
        normal::uniform_f32(self.next_u32())
    }

    /// A float64 uniform in `[0, 1)`.
    fn uniform_f64(&mut self) -> f64 {
        let high = self.next_u32();
        let low = self.next_u32();
        normal::uniform_f64(high, low)
    }

    /// The next 32-bit output of the engine.
    fn next_u32(&mut self) -> u32 {
        self.engine.next_u32()
    }

    /// Skips `count` uniforms of `T`'s precision.
    fn skip_uniforms<T: DdimFloat>(&mut self, count: usize) {
        let words = match T::PRECISION {
            Precision::Double => 2 * count,
            Precision::Single | Precision::Reduced => count,
        };
        self.engine.skip(words);
    }
}

/// torch's CPU normal fill of a tensor of `len` elements of type `T`, computed as it is
/// consumed: [`fill`](Self::fill) hands out the next values in row-major order, in pieces of
/// any length, and the values and the engine's state after the last one are those of one
/// [`TorchGenerator::randn`] of `len` elements. A stochastic step draws its noise this way,
/// block by block inside its single pass, without a temporary array.
///
/// How torch fills (and what the stream reproduces):
///
/// - Fewer than 16 elements: one double Box-Muller draw per element (with the cached second
///   normal), rounded to `T`.
/// - Otherwise, float32 and float64: every element gets a uniform, then each whole block of
///   16 is transformed in place; if `len % 16 = r` is not 0, the last 16 elements are
///   overwritten by a transform of 16 fresh uniforms. So elements up to the last whole block
///   come from their own block; the last whole block keeps only its first `r` values, the `r`
///   uniforms drawn past it are never used, and the final 16 elements come from the fresh
///   block. The engine is consumed in exactly that order: block after block, `r` uniforms,
///   the final block.
/// - float16 and bfloat16: the same, but block by block with no uniform wasted (torch draws
///   each block's uniforms just before transforming it).
pub(crate) struct NormalStream<'g, T: DdimFloat> {
    generator: &'g mut TorchGenerator,
    /// The tensor's elements.
    len: usize,
    /// Elements handed out or held in `pending`.
    drawn: usize,
    /// Values computed but not handed out yet: the rest of a block that a short request split,
    /// or the final stretch (`r` values of the last whole block and the final block).
    pending: [T; 2 * BLOCK],
    /// The range of `pending` still to hand out.
    pending_from: usize,
    pending_to: usize,
    /// Which compilation of the loops to run.
    isa: Isa,
    /// The loops' working space.
    scratch: Scratch,
}

impl<'g, T: DdimFloat> NormalStream<'g, T> {
    /// The stream of a fill of `len` elements from `generator`; nothing is drawn yet.
    fn new(generator: &'g mut TorchGenerator, len: usize, isa: Isa) -> Self {
        NormalStream {
            generator,
            len,
            drawn: 0,
            pending: [T::ZERO; 2 * BLOCK],
            pending_from: 0,
            pending_to: 0,
            isa,
            scratch: Scratch::new(),
        }
    }

    /// Fills `out` (a multiple of [`BLOCK`] long) with the normals of whole blocks of fresh
    /// uniforms of `T`'s precision, each rounded to `T` and passed through `convert`.
    #[inline(always)]
    fn blocks<O>(&mut self, out: &mut [O], convert: impl Fn(T) -> O) {
        let (engine, scratch) = (&mut self.generator.engine, &mut self.scratch);
        let kernel = self.generator.kernel;
        for chunk in out.chunks_mut(BATCH) {
            let n = chunk.len();
            match T::PRECISION {
                Precision::Double => {
                    normal::normals_f64(engine, scratch, n, self.isa);
                    for (slot, &v) in chunk.iter_mut().zip(scratch.doubles.iter()) {
                        *slot = convert(T::narrow(T::Compute::from_f64(v)));
                    }
                }
                Precision::Single | Precision::Reduced => {
                    normal::normals_f32(engine, scratch, n, kernel, self.isa);
                    for (slot, &v) in chunk.iter_mut().zip(scratch.singles.iter()) {
                        // Exact but for the one rounding to a 16-bit type.
                        *slot = convert(T::narrow(T::Compute::from_f64(f64::from(v))));
                    }
                }
            }
        }
    }

    /// Where the elements that come from their own whole block end: `len` when it is a
    /// multiple of 16, else the start of the last whole block (whose first `r` values begin
    /// the final stretch).
    fn regular_end(&self) -> usize {
        let rest = self.len % BLOCK;
        if rest == 0 {
            self.len
        } else {
            self.len - rest - BLOCK
        }
    }

    /// Writes the next `out.len()` values, each passed through `convert`. Values past the
    /// `len` elements of the fill are never asked for by the crate; should they be, the slots
    /// are left as they are and nothing is drawn.
    #[inline]
    pub(crate) fn fill<O>(&mut self, mut out: &mut [O], convert: impl Fn(T) -> O) {
        while !out.is_empty() {
            if self.pending_from < self.pending_to {
                let pending = &self.pending[self.pending_from..self.pending_to];
                let n = pending.len().min(out.len());
                let (head, tail) = out.split_at_mut(n);
                for (slot, &v) in head.iter_mut().zip(pending) {
                    *slot = convert(v);
                }
                self.pending_from += n;
                out = tail;
                continue;
            }
            if self.drawn >= self.len {
                return;
            }
            if self.len < BLOCK {
                let n = out.len().min(self.len - self.drawn);
                let (head, tail) = out.split_at_mut(n);
                for slot in head {
                    // `static_cast<scalar_t>(double)`: to float32 first for the 16-bit types.
                    let value = self.generator.normal_f64();
                    *slot = convert(T::narrow(T::Compute::from_f64(value)));
                }
                self.drawn += n;
                out = tail;
                continue;
            }
            let regular_end = self.regular_end();
            if self.drawn < regular_end {
                let whole = out.len().min(regular_end - self.drawn) / BLOCK * BLOCK;
                if whole > 0 {
                    let (head, tail) = out.split_at_mut(whole);
                    self.blocks(head, &convert);
                    self.drawn += whole;
                    out = tail;
                } else {
                    // A request shorter than a block: draw the block, hand out what is asked.
                    let mut block = [T::ZERO; BLOCK];
                    self.blocks(&mut block, |v| v);
                    self.pending[..BLOCK].copy_from_slice(&block);
                    (self.pending_from, self.pending_to) = (0, BLOCK);
                    self.drawn += BLOCK;
                }
                continue;
            }
            // The final stretch: the first `r` values of the last whole block, then the final
            // block of fresh uniforms, drawn after the `r` uniforms torch never uses (float32
            // and float64 only).
            // `len % BLOCK`, below BLOCK (see `regular_end`): `rest + BLOCK` fits `pending`.
            let rest = self.len - regular_end - BLOCK;
            let (mut last_whole, mut final_block) = ([T::ZERO; BLOCK], [T::ZERO; BLOCK]);
            self.blocks(&mut last_whole, |v| v);
            if !matches!(T::PRECISION, Precision::Reduced) {
                self.generator.skip_uniforms::<T>(rest);
            }
            self.blocks(&mut final_block, |v| v);
            self.pending[..rest].copy_from_slice(&last_whole[..rest]);
            self.pending[rest..rest + BLOCK].copy_from_slice(&final_block);
            (self.pending_from, self.pending_to) = (0, rest + BLOCK);
            self.drawn = self.len;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::normal::{normal_16_f32, normal_16_f64};
    use super::*;

    /// torch's normal fill of `len` elements written out plainly, one engine output and one
    /// block at a time, as the oracle of the batched and streamed code: every element a
    /// uniform, the whole blocks transformed, and for a size that is not a multiple of 16 the
    /// last 16 elements redone from fresh uniforms (16-bit types: block by block, nothing
    /// wasted).
    fn plain_randn<T: DdimFloat>(g: &mut TorchGenerator, len: usize) -> Vec<T> {
        let round = |v: f64| T::narrow(T::Compute::from_f64(v));
        if len < BLOCK {
            return (0..len).map(|_| round(g.normal_f64())).collect();
        }
        let kernel = g.kernel;
        let mut out = vec![T::ZERO; len];
        let block = |g: &mut TorchGenerator, dest: &mut [T]| match T::PRECISION {
            Precision::Double => {
                let mut b = [0f64; BLOCK];
                b.iter_mut().for_each(|u| *u = g.uniform_f64());
                normal_16_f64(&mut b);
                dest.iter_mut().zip(b).for_each(|(d, v)| *d = round(v));
            }
            Precision::Single | Precision::Reduced => {
                let mut b = [0f32; BLOCK];
                b.iter_mut().for_each(|u| *u = g.uniform_f32());
                normal_16_f32(&mut b, kernel);
                dest.iter_mut()
                    .zip(b)
                    .for_each(|(d, v)| *d = round(f64::from(v)));
            }
        };
        let whole = len / BLOCK * BLOCK;
        for chunk in out[..whole].chunks_exact_mut(BLOCK) {
            block(g, chunk);
        }
        if whole < len {
            if !matches!(T::PRECISION, Precision::Reduced) {
                for _ in whole..len {
                    match T::PRECISION {
                        Precision::Double => drop(g.uniform_f64()),
                        _ => drop(g.uniform_f32()),
                    }
                }
            }
            block(g, &mut out[len - BLOCK..]);
        }
        out
    }

    /// Sizes around every boundary of the code: below and at one block, around a batch of 16
    /// blocks, around an engine twist (624 words), and large ones with every remainder.
    fn sizes() -> Vec<usize> {
        let mut sizes: Vec<usize> = (0..=40).collect();
        sizes.extend([
            47, 48, 49, 255, 256, 257, 271, 272, 273, 311, 312, 313, 623, 624, 625,
        ]);
        sizes.extend((0..16).map(|r| 4096 + 16 * 7 + r));
        sizes.push(16_384);
        sizes
    }

    fn bits<T: DdimFloat>(values: &[T]) -> Vec<u64> {
        values.iter().map(|v| v.to_f64().to_bits()).collect()
    }

    /// `randn` (run-time choice of code), the baseline code and the plain oracle give the same
    /// bits and leave the generator in the same state, over many sizes, seeds and both kernels.
    fn dispatched_portable_and_plain_agree<T: DdimFloat>() {
        for kernel in [TorchCpuKernel::Avx2, TorchCpuKernel::Scalar] {
            for seed in [0, 1, 42, 1234, 0xdead_beef] {
                // One generator per path, each drawing every size in turn (so the states
                // carried from draw to draw, the cached normal included, are compared too).
                let start = TorchGenerator::manual_seed(seed).with_kernel(kernel);
                let (mut native, mut portable, mut plain) = (start.clone(), start.clone(), start);
                for len in sizes() {
                    let mut a = ndarray::Array1::from_elem(len, T::ZERO);
                    let mut b = a.clone();
                    native.randn_into(&mut a);
                    portable.randn_into_portable(&mut b);
                    let c = plain_randn::<T>(&mut plain, len);
                    let what = format!("{kernel:?}, seed {seed}, {len} elements");
                    assert_eq!(bits(a.as_slice().unwrap()), bits(&c), "native, {what}");
                    assert_eq!(bits(b.as_slice().unwrap()), bits(&c), "portable, {what}");
                    assert!(native == plain && portable == plain, "state, {what}");
                }
            }
        }
    }

    #[test]
    fn dispatched_portable_and_plain_randn_agree_f32() {
        dispatched_portable_and_plain_agree::<f32>();
    }

    #[test]
    fn dispatched_portable_and_plain_randn_agree_f64() {
        dispatched_portable_and_plain_agree::<f64>();
    }

    #[cfg(feature = "half")]
    #[test]
    fn dispatched_portable_and_plain_randn_agree_half() {
        dispatched_portable_and_plain_agree::<half::f16>();
        dispatched_portable_and_plain_agree::<half::bf16>();
    }

    /// The stream a step consumes, read in pieces of every awkward length (single values,
    /// pieces that split blocks, batches and the final stretch), is `randn` of the same size
    /// widened to the compute type, and leaves the generator where `randn` does.
    fn stream_agrees_with_randn<T: DdimFloat>() {
        let pieces = [1, 3, 16, 5, 256, 17, 1, 300, 15, 32, 2, 1000];
        for kernel in [TorchCpuKernel::Avx2, TorchCpuKernel::Scalar] {
            for seed in [0, 7, 99] {
                let start = TorchGenerator::manual_seed(seed).with_kernel(kernel);
                let (mut streamed, mut whole) = (start.clone(), start);
                for (i, len) in sizes().into_iter().enumerate() {
                    let expected: Vec<T> = whole.randn(len).to_vec();
                    let mut got = vec![T::Compute::ZERO; len];
                    let mut stream = streamed.normal_stream::<T>(len);
                    let mut at = 0;
                    for &piece in pieces.iter().cycle().skip(i) {
                        if at == len {
                            break;
                        }
                        let end = (at + piece).min(len);
                        stream.fill(&mut got[at..end], T::widen);
                        at = end;
                    }
                    // Asking for more than the fill holds draws nothing and writes nothing.
                    let mut beyond = [T::Compute::ONE; 3];
                    stream.fill(&mut beyond, T::widen);
                    assert_eq!(beyond, [T::Compute::ONE; 3]);
                    let what = format!("{kernel:?}, seed {seed}, {len} elements");
                    let widened: Vec<T::Compute> = expected.iter().map(|v| v.widen()).collect();
                    assert_eq!(bits(&got), bits(&widened), "{what}");
                    assert!(streamed == whole, "state, {what}");
                }
            }
        }
    }

    #[test]
    fn the_stream_is_randn_f32() {
        stream_agrees_with_randn::<f32>();
    }

    #[test]
    fn the_stream_is_randn_f64() {
        stream_agrees_with_randn::<f64>();
    }

    #[cfg(feature = "half")]
    #[test]
    fn the_stream_is_randn_half() {
        stream_agrees_with_randn::<half::f16>();
        stream_agrees_with_randn::<half::bf16>();
    }

    /// Arrays of other layouts are filled in row-major order through the small buffer.
    #[test]
    fn randn_into_a_transposed_array_fills_in_row_major_order() {
        for len in [5, 40, 700] {
            let mut t = ndarray::Array2::<f32>::zeros((len, 3));
            let mut view = t.view_mut().reversed_axes();
            TorchGenerator::manual_seed(5).randn_into(&mut view);
            let expected = TorchGenerator::manual_seed(5).randn::<f32, _>((3, len));
            assert_eq!(view, expected);
        }
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
