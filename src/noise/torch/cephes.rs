//! torch's `avx_mathfun.h` (after Julien Pommier's `sse_mathfun.h`, zlib licence), one lane at
//! a time: the same float32 operations in the same order, with the float constants rounded from
//! their double literals as C does, and a fused multiply-add wherever GCC contracts a multiply
//! into the add that is its only use when it compiles torch's AVX2 kernels (checked against
//! torch 2.15.0's Linux build: every element of 5.6 million draws agrees).
//!
//! The constants are spelled as in `avx_mathfun.h`, digits and all, and rounded as C rounds them.
#![allow(clippy::excessive_precision, clippy::approx_constant)]

/// `_mm256_set1_ps(2.0f * c10::pi<double>)`.
pub(crate) const TWO_PI: f32 = (2.0 * std::f64::consts::PI) as f32;

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
#[inline(always)]
pub(crate) fn log(x: f32) -> f32 {
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
/// the reduction is accurate for `|x| < 8192`, and the quadrant is computed as torch computes
/// it for `|x| < 2^23 pi / 4`).
#[inline(always)]
pub(crate) fn sincos(x: f32) -> (f32, f32) {
    let sign_bit_sin = x.to_bits() & 0x8000_0000;
    let mut x = x.abs();
    // _mm256_cvttps_epi32 truncates. For `0 <= t < 2^23` the integer `trunc(t)` is the low
    // mantissa bits of `trunc(t) + 2^23` (an exact sum): the same value, by operations that
    // vectorise, where Rust's saturating `as i32` is compiled one lane at a time.
    let truncated = (x * FOPI).trunc();
    let mut j = ((truncated + 8_388_608.0).to_bits() & 0x007f_ffff) as i32;
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
