//! The element types the scheduler works on: `f32` and `f64`, and with the `half` feature the
//! 16-bit `half::f16` and `half::bf16`.
//!
//! Every element type has a *compute type* in which its arithmetic runs: itself for `f32` and
//! `f64`, `f32` for the 16-bit types. A call reads its inputs, widens them to the compute type
//! (exactly), evaluates its formulas there and narrows each output once, rounding to nearest
//! even. For `f32` and `f64` both conversions are the identity and compile to nothing.

use std::cell::RefCell;
use std::fmt::{Debug, Display};
use std::ops::{Add, Div, Mul, Neg, Sub};

use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

/// A floating-point element type the scheduler accepts: `f32` or `f64`, and with the cargo
/// feature `half` also [`half::f16`](https://docs.rs/half/2/half/struct.f16.html) and
/// [`half::bf16`](https://docs.rs/half/2/half/struct.bf16.html).
///
/// Every array-taking call of the crate is generic over it. The schedule tables are float32, as
/// in the reference; with `f64` arrays the per-element arithmetic runs in double. With `f16` and
/// `bf16` arrays it runs in `f32` on the exactly widened values, and each output is rounded to
/// the 16-bit type once: the result is the `f32` call's on the same values, rounded (see the
/// crate docs, "Element types").
///
/// The trait is sealed (it cannot be implemented outside this crate); its public items are the
/// conversions generic code around the scheduler needs.
///
/// # Example
///
/// ```
/// use ddim::DdimFloat;
/// use ddim::ndarray::Array1;
///
/// /// The largest absolute value, in double, of any array the scheduler accepts.
/// fn max_abs<T: DdimFloat>(values: &Array1<T>) -> f64 {
///     values.iter().fold(0.0, |m, v| m.max(v.to_f64().abs()))
/// }
///
/// assert_eq!(max_abs(&Array1::from(vec![1.0f32, -3.5])), 3.5);
/// assert_eq!(f32::from_f64(0.1), 0.1f32);
/// assert!(f64::from_f64(f64::NAN).is_nan());
/// ```
pub trait DdimFloat:
    Sealed
    + Copy
    + Send
    + Sync
    + PartialOrd
    + Debug
    + Display
    + Default
    + 'static
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
{
    /// Zero.
    const ZERO: Self;
    /// One.
    const ONE: Self;
    /// Rounds an `f64` to this type, to nearest even (identity for `f64`).
    fn from_f64(value: f64) -> Self;
    /// Converts an `f32` to this type: exact for `f32` and `f64`, rounded to nearest even for
    /// `f16` and `bf16`.
    fn from_f32(value: f32) -> Self;
    /// Widens this value to `f64`, exactly.
    fn to_f64(self) -> f64;
    /// Whether the value is NaN.
    fn is_nan(self) -> bool;
}

/// Which binary format an element type is, as far as PyTorch's `randn` is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// IEEE binary32 (`f32`).
    Single,
    /// IEEE binary64 (`f64`).
    Double,
    /// A 16-bit type computed in `f32` (`f16`, `bf16`).
    Reduced,
}

/// The crate-internal side of an element type: its compute type and the conversions to and
/// from it. Not nameable outside the crate, which seals [`DdimFloat`].
pub trait Sealed: Sized + Copy {
    /// The type arithmetic on these elements runs in: `Self` for `f32` and `f64`, `f32` for the
    /// 16-bit types.
    type Compute: Arithmetic;
    /// The binary format, for the torch-compatible generator.
    const PRECISION: Precision;
    /// Widens to the compute type, exactly.
    fn widen(self) -> Self::Compute;
    /// Rounds a compute-type value to this type, to nearest even (identity for `f32`, `f64`).
    fn narrow(value: Self::Compute) -> Self;
    /// The values themselves as compute-type values when the two types are the same (`f32`,
    /// `f64`), so that such values are used where they lie instead of being copied; `None`
    /// for the 16-bit types.
    fn as_compute(values: &[Self]) -> Option<&[Self::Compute]>;
    /// Widens `values` into `out` (as many as the shorter holds), as [`Sealed::widen`] does one
    /// at a time, with several values per instruction where the CPU converts in hardware.
    fn widen_slice(values: &[Self], out: &mut [Self::Compute]);
    /// Narrows `values` into `out` (as many as the shorter holds), as [`Sealed::narrow`] does
    /// one at a time, with several values per instruction where the CPU converts in hardware.
    fn narrow_slice(values: &[Self::Compute], out: &mut [Self]);
}

/// The operations of a compute type (`f32` and `f64`), beyond those of [`DdimFloat`].
pub trait Arithmetic: DdimFloat<Compute = Self> {
    /// The unsigned integer of the same width: for non-negative values other than NaN, its
    /// order is the order of the values, which makes selecting order statistics cheap.
    type Bits: Copy + Ord + Send + Sync + Debug + 'static;
    /// The correctly rounded square root.
    fn sqrt(self) -> Self;
    /// The absolute value.
    fn abs(self) -> Self;
    /// `self * a + b` with a single rounding (fused multiply-add).
    fn mul_add(self, a: Self, b: Self) -> Self;
    /// The bit pattern.
    fn to_bits(self) -> Self::Bits;
    /// The value of a bit pattern.
    fn from_bits(bits: Self::Bits) -> Self;
    /// One draw from the standard normal distribution (`rand_distr::StandardNormal`).
    fn standard_normal<R: Rng + ?Sized>(rng: &mut R) -> Self;
    /// Runs `f` with this thread's reusable scratch buffer of this type (a fresh one if the
    /// buffer is already in use further up the stack). The buffer keeps its capacity between
    /// calls of similar size, so repeated steps do not allocate; see [`trim_scratch`] for how
    /// much it keeps after a call that used less.
    fn with_scratch<R>(f: impl FnOnce(&mut Vec<Self::Bits>) -> R) -> R;
    /// The value as an `f32`, if this is `f32` (for code with a vector path for `f32` only).
    fn as_f32(self) -> Option<f32>;
    /// The values as `f32`, if this is `f32`.
    fn as_f32s(values: &[Self]) -> Option<&[f32]>;
    /// The bit patterns as `u32`, if this is `f32`.
    fn as_u32s(bits: &mut [Self::Bits]) -> Option<&mut [u32]>;
}

/// The number of elements a thread's scratch buffer may always keep (256 KiB of `f32` bit
/// patterns, 512 KiB of `f64`), so that small steps never allocate.
pub(crate) const SCRATCH_KEEP: usize = 1 << 16;

/// Gives back the memory of a scratch buffer that the call which just ended used only a small
/// part of: when its capacity is more than four times what was used and more than
/// [`SCRATCH_KEEP`] elements, it is shrunk to the larger of the two. After every call a thread's
/// buffer therefore holds at most `max(4 × the elements just used, SCRATCH_KEEP)` elements: a
/// large step followed by small ones does not pin the large step's memory for the life of the
/// thread, while steps of one size (the usual sampling loop) reuse the buffer without
/// allocating. The buffer is left empty.
pub(crate) fn trim_scratch<B>(scratch: &mut Vec<B>) {
    let used = scratch.len();
    let keep = used.max(SCRATCH_KEEP);
    if scratch.capacity() > keep && scratch.capacity() / 4 > used {
        scratch.clear();
        scratch.shrink_to(keep);
    }
    scratch.clear();
}

macro_rules! impl_float {
    ($t:ty, $bits:ty, $precision:expr, $if_f32:expr) => {
        impl DdimFloat for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            #[inline(always)]
            fn from_f64(value: f64) -> Self {
                value as $t
            }
            #[inline(always)]
            fn from_f32(value: f32) -> Self {
                value as $t
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
        }

        impl Sealed for $t {
            type Compute = $t;
            const PRECISION: Precision = $precision;
            #[inline(always)]
            fn widen(self) -> $t {
                self
            }
            #[inline(always)]
            fn narrow(value: $t) -> Self {
                value
            }
            #[inline(always)]
            fn as_compute(values: &[Self]) -> Option<&[$t]> {
                Some(values)
            }
            #[inline(always)]
            fn widen_slice(values: &[Self], out: &mut [$t]) {
                for (o, &v) in out.iter_mut().zip(values) {
                    *o = v;
                }
            }
            #[inline(always)]
            fn narrow_slice(values: &[$t], out: &mut [Self]) {
                for (o, &v) in out.iter_mut().zip(values) {
                    *o = v;
                }
            }
        }

        impl Arithmetic for $t {
            type Bits = $bits;
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline(always)]
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            #[inline(always)]
            fn mul_add(self, a: Self, b: Self) -> Self {
                <$t>::mul_add(self, a, b)
            }
            #[inline(always)]
            fn to_bits(self) -> $bits {
                <$t>::to_bits(self)
            }
            #[inline(always)]
            fn from_bits(bits: $bits) -> Self {
                <$t>::from_bits(bits)
            }
            #[inline]
            fn standard_normal<R: Rng + ?Sized>(rng: &mut R) -> Self {
                StandardNormal.sample(rng)
            }
            fn with_scratch<R>(f: impl FnOnce(&mut Vec<$bits>) -> R) -> R {
                thread_local! {
                    static SCRATCH: RefCell<Vec<$bits>> = const { RefCell::new(Vec::new()) };
                }
                SCRATCH.with(|cell| match cell.try_borrow_mut() {
                    Ok(mut scratch) => {
                        let result = f(&mut scratch);
                        trim_scratch(&mut scratch);
                        result
                    }
                    Err(_) => f(&mut Vec::new()),
                })
            }
            #[inline(always)]
            fn as_f32(self) -> Option<f32> {
                ($if_f32)(self)
            }
            #[inline(always)]
            fn as_f32s(values: &[Self]) -> Option<&[f32]> {
                ($if_f32)(values)
            }
            #[inline(always)]
            fn as_u32s(bits: &mut [$bits]) -> Option<&mut [u32]> {
                ($if_f32)(bits)
            }
        }
    };
}

impl_float!(f32, u32, Precision::Single, Some);
impl_float!(f64, u64, Precision::Double, |_| None);

/// The 16-bit types of the `half` crate: stored in 16 bits, computed in `f32`.
#[cfg(feature = "half")]
macro_rules! impl_reduced {
    ($t:ty) => {
        impl DdimFloat for $t {
            const ZERO: Self = <$t>::ZERO;
            const ONE: Self = <$t>::ONE;
            #[inline(always)]
            fn from_f64(value: f64) -> Self {
                <$t>::from_f64(value)
            }
            #[inline(always)]
            fn from_f32(value: f32) -> Self {
                <$t>::from_f32(value)
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                <$t>::to_f64(self)
            }
            #[inline(always)]
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
        }

        impl Sealed for $t {
            type Compute = f32;
            const PRECISION: Precision = Precision::Reduced;
            #[inline(always)]
            fn widen(self) -> f32 {
                <$t>::to_f32(self)
            }
            #[inline(always)]
            fn narrow(value: f32) -> Self {
                <$t>::from_f32(value)
            }
            #[inline(always)]
            fn as_compute(_: &[Self]) -> Option<&[f32]> {
                None
            }
            #[inline]
            fn widen_slice(values: &[Self], out: &mut [f32]) {
                let n = values.len().min(out.len());
                if let (Some(values), Some(out)) = (values.get(..n), out.get_mut(..n)) {
                    half::slice::HalfFloatSliceExt::convert_to_f32_slice(values, out);
                }
            }
            #[inline]
            fn narrow_slice(values: &[f32], out: &mut [Self]) {
                let n = values.len().min(out.len());
                if let (Some(values), Some(out)) = (values.get(..n), out.get_mut(..n)) {
                    half::slice::HalfFloatSliceExt::convert_from_f32_slice(out, values);
                }
            }
        }
    };
}

#[cfg(feature = "half")]
impl_reduced!(half::f16);
#[cfg(feature = "half")]
impl_reduced!(half::bf16);
