//! torch's Box-Muller block transform (`normal_fill_16` of its CPU `normal_kernel`): 16
//! uniforms of the tensor's precision become 16 normals, pairing element `j` with `j + 8`;
//! and the loops that draw many such blocks at a time from the engine.
//!
//! On x86-64 the float32 loop of the [`TorchCpuKernel::Avx2`] kernel is also compiled for AVX2
//! and FMA and chosen at run time ([`Isa::Native`]): its polynomials are full of fused
//! multiply-adds, which without the `fma` target feature are calls to the C library's software
//! `fmaf`. A fused multiply-add is exactly rounded whatever computes it, and Rust neither fuses
//! nor reorders other floating-point operations, so both compilations give the same bits.
//! The float64 loop is compiled for AVX2 as well, for the engine and the uniforms (its
//! logarithms, sines and cosines are the C library's, as torch's are).

use std::f64::consts::PI;

use super::mt19937::Mt19937;
use super::{cephes, TorchCpuKernel};

/// torch's Box-Muller block; below this many elements torch draws each normal on its own, in
/// double (with the cache).
pub(super) const BLOCK: usize = 16;

/// Elements drawn together: 16 blocks, whose uniforms, pairs and normals stay in L1 cache.
pub(super) const BATCH: usize = 16 * BLOCK;

/// The working space of the loops, set up once per fill rather than once per batch.
#[derive(Clone)]
pub(super) struct Scratch {
    /// Engine outputs of one batch (two per float64 uniform).
    words: [u32; 2 * BATCH],
    /// Float32 pairs of one batch, side by side: `firsts[8k + j]` is element `j` of block `k`,
    /// `seconds[8k + j]` element `j + 8`.
    firsts: [f32; BATCH / 2],
    seconds: [f32; BATCH / 2],
    /// The normals of one batch, before they are rounded and handed out.
    pub(super) singles: [f32; BATCH],
    pub(super) doubles: [f64; BATCH],
}

impl Scratch {
    /// Zeroed space.
    pub(super) fn new() -> Self {
        Scratch {
            words: [0; 2 * BATCH],
            firsts: [0.0; BATCH / 2],
            seconds: [0.0; BATCH / 2],
            singles: [0.0; BATCH],
            doubles: [0.0; BATCH],
        }
    }
}

/// Which compilation of the loops to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    /// The best this CPU has (AVX2 and FMA on x86-64 processors that have them).
    Native,
    /// The code compiled for the target's baseline, which every machine runs.
    Portable,
}

/// torch's `NormalFill16<double>`: Box-Muller on 8 pairs, in double.
#[inline(always)]
pub(super) fn normal_16_f64(block: &mut [f64; BLOCK]) {
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
/// (The batch loop [`normals_f32`] computes the same; this is the block-at-a-time statement of
/// it, which the tests compare the loop with.)
#[cfg(test)]
pub(super) fn normal_16_f32(block: &mut [f32; BLOCK], kernel: TorchCpuKernel) {
    let (firsts, seconds) = block.split_at_mut(BLOCK / 2);
    for (a, b) in firsts.iter_mut().zip(seconds.iter_mut()) {
        (*a, *b) = match kernel {
            TorchCpuKernel::Scalar => pair_f32_libm(*a, *b),
            TorchCpuKernel::Avx2 => pair_f32_cephes(*a, *b),
        };
    }
}

/// One float32 Box-Muller pair with the C library's `logf`, `cosf` and `sinf`.
#[inline(always)]
fn pair_f32_libm(a: f32, b: f32) -> (f32, f32) {
    let u1 = 1.0 - a;
    // `2.0f * c10::pi<double> * u2` is evaluated in double, then stored as float.
    let theta = (2.0 * PI * f64::from(b)) as f32;
    let radius = (-2.0 * u1.ln()).sqrt();
    (radius * theta.cos() + 0.0, radius * theta.sin() + 0.0)
}

/// One float32 Box-Muller pair with the Cephes polynomials of torch's vectorised kernel.
#[inline(always)]
fn pair_f32_cephes(a: f32, b: f32) -> (f32, f32) {
    let u1 = 1.0 - a;
    let (sin, cos) = cephes::sincos(cephes::TWO_PI * b);
    let radius = (-2.0 * cephes::log(u1)).sqrt();
    (radius * cos + 0.0, radius * sin + 0.0)
}

/// A float32 uniform in `[0, 1)`: the low 24 bits of a draw times 2^-24.
#[inline(always)]
pub(super) fn uniform_f32(word: u32) -> f32 {
    (word & 0x00ff_ffff) as f32 * (1.0 / 16_777_216.0)
}

/// A float64 uniform in `[0, 1)`: the low 53 bits of a 64-bit draw `(high << 32) | low` times
/// 2^-53.
#[inline(always)]
pub(super) fn uniform_f64(high: u32, low: u32) -> f64 {
    let bits = ((u64::from(high) << 32) | u64::from(low)) & ((1u64 << 53) - 1);
    // Below 2^53, so the signed conversion (one instruction) is exact, as the unsigned one.
    (bits as i64) as f64 * (1.0 / 9_007_199_254_740_992.0)
}

/// Fills the first `len` (a multiple of [`BLOCK`], at most [`BATCH`]) of `scratch.singles`
/// with float32 normals, block after block, each from the next 16 float32 uniforms of the
/// engine, in the given kernel.
pub(super) fn normals_f32(
    engine: &mut Mt19937,
    scratch: &mut Scratch,
    len: usize,
    kernel: TorchCpuKernel,
    isa: Isa,
) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Native
        && kernel == TorchCpuKernel::Avx2
        && std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
    {
        // SAFETY: `normals_f32_avx2_fma` only requires the CPU to support AVX2 and FMA, which
        // was checked at run time just above.
        #[allow(unsafe_code)]
        unsafe {
            normals_f32_avx2_fma(engine, scratch, len, kernel)
        };
        return;
    }
    let _ = isa;
    normals_f32_portable(engine, scratch, len, kernel);
}

/// [`normals_f32_portable`] compiled for AVX2 and FMA: the polynomials' multiply-adds become
/// single instructions and the pairs are computed eight at a time, with the same results.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn normals_f32_avx2_fma(
    engine: &mut Mt19937,
    scratch: &mut Scratch,
    len: usize,
    kernel: TorchCpuKernel,
) {
    normals_f32_portable(engine, scratch, len, kernel);
}

/// The loop of [`normals_f32`] for whatever instruction set the caller was compiled for;
/// `#[inline(always)]` so that the AVX2 copy gets its own code.
#[inline(always)]
fn normals_f32_portable(
    engine: &mut Mt19937,
    scratch: &mut Scratch,
    len: usize,
    kernel: TorchCpuKernel,
) {
    let len = len.min(BATCH) / BLOCK * BLOCK;
    let out = &mut scratch.singles[..len];
    let words = &mut scratch.words[..len];
    engine.fill(words);
    match kernel {
        TorchCpuKernel::Avx2 => {
            // The pairs of every block side by side, so that the loop over them vectorises.
            let half = BLOCK / 2;
            let firsts = &mut scratch.firsts[..len / 2];
            let seconds = &mut scratch.seconds[..len / 2];
            let halves = firsts
                .chunks_exact_mut(half)
                .zip(seconds.chunks_exact_mut(half));
            for (block, (a, b)) in words.chunks_exact(BLOCK).zip(halves) {
                let (wa, wb) = block.split_at(half);
                for (slot, &w) in a.iter_mut().zip(wa) {
                    *slot = uniform_f32(w);
                }
                for (slot, &w) in b.iter_mut().zip(wb) {
                    *slot = uniform_f32(w);
                }
            }
            for (a, b) in firsts.iter_mut().zip(seconds.iter_mut()) {
                (*a, *b) = pair_f32_cephes(*a, *b);
            }
            let halves = firsts.chunks_exact(half).zip(seconds.chunks_exact(half));
            for (block, (a, b)) in out.chunks_exact_mut(BLOCK).zip(halves) {
                let (oa, ob) = block.split_at_mut(half);
                oa.copy_from_slice(a);
                ob.copy_from_slice(b);
            }
        }
        TorchCpuKernel::Scalar => {
            for (slot, &w) in out.iter_mut().zip(words.iter()) {
                *slot = uniform_f32(w);
            }
            for block in out.chunks_exact_mut(BLOCK) {
                let (a, b) = block.split_at_mut(BLOCK / 2);
                for (a, b) in a.iter_mut().zip(b) {
                    (*a, *b) = pair_f32_libm(*a, *b);
                }
            }
        }
    }
}

/// Fills the first `len` (a multiple of [`BLOCK`], at most [`BATCH`]) of `scratch.doubles`
/// with float64 normals, block after block, each from the next 16 float64 uniforms (32 words)
/// of the engine.
pub(super) fn normals_f64(engine: &mut Mt19937, scratch: &mut Scratch, len: usize, isa: Isa) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Native && std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: `normals_f64_avx2` only requires the CPU to support AVX2, which was checked
        // at run time just above.
        #[allow(unsafe_code)]
        unsafe {
            normals_f64_avx2(engine, scratch, len)
        };
        return;
    }
    let _ = isa;
    normals_f64_portable(engine, scratch, len);
}

/// [`normals_f64_portable`] compiled for AVX2 (the engine's words and the uniforms eight and
/// four at a time; the logarithms, sines and cosines are the C library's either way).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn normals_f64_avx2(engine: &mut Mt19937, scratch: &mut Scratch, len: usize) {
    normals_f64_portable(engine, scratch, len);
}

/// The loop of [`normals_f64`] for whatever instruction set the caller was compiled for.
#[inline(always)]
fn normals_f64_portable(engine: &mut Mt19937, scratch: &mut Scratch, len: usize) {
    let len = len.min(BATCH) / BLOCK * BLOCK;
    let out = &mut scratch.doubles[..len];
    let words = &mut scratch.words[..2 * len];
    engine.fill(words);
    for (slot, pair) in out.iter_mut().zip(words.chunks_exact(2)) {
        *slot = uniform_f64(pair[0], pair[1]);
    }
    for block in out.chunks_exact_mut(BLOCK) {
        if let Ok(block) = <&mut [f64; BLOCK]>::try_from(block) {
            normal_16_f64(block);
        }
    }
}
