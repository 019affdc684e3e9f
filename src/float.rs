//! The element types the scheduler works on: `f32` and `f64`.

use std::cell::RefCell;
use std::fmt::{Debug, Display};
use std::ops::{Add, Div, Mul, Neg, Sub};

use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

/// A floating-point element type the scheduler accepts: `f32` or `f64`.
///
/// Every array-taking call of the crate is generic over it. The schedule tables are float32, as
/// in the reference; with `f64` arrays the per-element arithmetic runs in double. The trait is
/// sealed (it cannot be implemented outside this crate); its public items are the conversions
/// generic code around the scheduler needs.
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
    /// Rounds an `f64` to this type (identity for `f64`).
    fn from_f64(value: f64) -> Self;
    /// Widens an `f32` to this type, exactly.
    fn from_f32(value: f32) -> Self;
    /// Widens this value to `f64`, exactly.
    fn to_f64(self) -> f64;
    /// Whether the value is NaN.
    fn is_nan(self) -> bool;
}

/// The crate-internal operations of an element type; not nameable outside the crate, which
/// seals [`DdimFloat`].
pub trait Sealed: Sized {
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
    /// calls, so only the first, largest use allocates.
    fn with_scratch<R>(f: impl FnOnce(&mut Vec<Self::Bits>) -> R) -> R;
}

macro_rules! impl_float {
    ($t:ty, $bits:ty) => {
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
                    Ok(mut scratch) => f(&mut scratch),
                    Err(_) => f(&mut Vec::new()),
                })
            }
        }
    };
}

impl_float!(f32, u32);
impl_float!(f64, u64);
