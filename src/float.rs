//! The element types the scheduler works on: `f32` and `f64`.

use std::cell::RefCell;
use std::cmp::Ordering;
use std::fmt::{Debug, Display};
use std::ops::{Add, Div, Mul, Neg, Sub};

use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// A floating-point element type the scheduler accepts: `f32` or `f64`.
///
/// This trait is sealed; it exists so that every array-taking method of
/// [`DdimScheduler`](crate::DdimScheduler) is generic over both precisions. The schedule tables are
/// float32, as in the reference; with `f64` arrays the per-element arithmetic runs in double.
pub trait DdimFloat:
    sealed::Sealed
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
    /// The correctly rounded square root.
    fn sqrt(self) -> Self;
    /// The absolute value.
    fn abs(self) -> Self;
    /// `self * a + b` with a single rounding (fused multiply-add).
    fn mul_add(self, a: Self, b: Self) -> Self;
    /// Whether the value is NaN.
    fn is_nan(self) -> bool;
    /// IEEE 754 total order (used to select quantiles without panicking).
    fn total_cmp(&self, other: &Self) -> Ordering;
    /// The unsigned integer of the same width: for non-negative values other than NaN, its
    /// order is the order of the values, which makes selecting order statistics cheap.
    #[doc(hidden)]
    type Bits: Copy + Ord + Send + Sync + Debug + 'static;
    /// The bit pattern.
    #[doc(hidden)]
    fn to_bits(self) -> Self::Bits;
    /// The value of a bit pattern.
    #[doc(hidden)]
    fn from_bits(bits: Self::Bits) -> Self;
    /// One draw from the standard normal distribution.
    fn standard_normal<R: Rng + ?Sized>(rng: &mut R) -> Self;
    /// Runs `f` with this thread's reusable scratch buffer of this type (a fresh one if the
    /// buffer is already in use further up the stack). The buffer keeps its capacity between
    /// calls, so only the first, largest use allocates.
    #[doc(hidden)]
    fn with_scratch<R>(f: impl FnOnce(&mut Vec<Self::Bits>) -> R) -> R;
}

macro_rules! impl_float {
    ($t:ty, $bits:ty) => {
        impl DdimFloat for $t {
            type Bits = $bits;
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
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
            #[inline(always)]
            fn total_cmp(&self, other: &Self) -> Ordering {
                <$t>::total_cmp(self, other)
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
