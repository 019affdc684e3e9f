//! The DDIM update of one element, and the single pass that applies it to whole arrays.
//!
//! Every flavour of step (three prediction types, clipping or thresholding, re-derived noise,
//! eta with or without noise) is the same three lines per element,
//!
//! ```text
//! x0   = clamp((a*sample + b*model_output) / q, lo, hi) / r
//! eps  = (c*sample + d*model_output + h*x0) / u
//! prev = e*x0 + f*eps + g*noise
//! ```
//!
//! with scalars that depend only on the timestep and the options; the scheduler computes them,
//! this module applies them in one pass that reads each input once and writes each output once.
//!
//! The divisors are there for exactness, not for speed: with them every formula of the reference
//! is evaluated with the same operations in the same order (the extra terms are exact zeros and
//! the extra divisors exact ones), so a float32 step rounds exactly as the reference's does.

use ndarray::{ArrayView, ArrayViewMut, Dimension, Zip};

use crate::DdimFloat;

/// The per-timestep scalars of one DDIM update (see the module docs for the formulas).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct StepCoefficients<T> {
    /// `a`: weight of `sample` in the raw `x0`.
    pub x0_from_sample: T,
    /// `b`: weight of `model_output` in the raw `x0`.
    pub x0_from_output: T,
    /// `q`: divisor of the raw `x0`.
    pub x0_divisor: T,
    /// `c`: weight of `sample` in `eps`.
    pub eps_from_sample: T,
    /// `d`: weight of `model_output` in `eps`.
    pub eps_from_output: T,
    /// `h`: weight of the (clamped) `x0` in `eps`.
    pub eps_from_x0: T,
    /// `u`: divisor of `eps`.
    pub eps_divisor: T,
    /// `e`: weight of `x0` in the result, `sqrt(alpha_bar_prev)`.
    pub prev_from_x0: T,
    /// `f`: weight of `eps` in the result, `sqrt(1 - alpha_bar_prev - sigma^2)`.
    pub prev_from_eps: T,
    /// `g`: weight of the noise in the result, `sigma = eta * sqrt(variance)`.
    pub prev_from_noise: T,
}

impl StepCoefficients<f32> {
    /// Widens every coefficient to the element type, exactly.
    pub(crate) fn widen<T: DdimFloat>(&self) -> StepCoefficients<T> {
        StepCoefficients {
            x0_from_sample: T::from_f32(self.x0_from_sample),
            x0_from_output: T::from_f32(self.x0_from_output),
            x0_divisor: T::from_f32(self.x0_divisor),
            eps_from_sample: T::from_f32(self.eps_from_sample),
            eps_from_output: T::from_f32(self.eps_from_output),
            eps_from_x0: T::from_f32(self.eps_from_x0),
            eps_divisor: T::from_f32(self.eps_divisor),
            prev_from_x0: T::from_f32(self.prev_from_x0),
            prev_from_eps: T::from_f32(self.prev_from_eps),
            prev_from_noise: T::from_f32(self.prev_from_noise),
        }
    }
}

impl<T: DdimFloat> StepCoefficients<T> {
    /// The raw (unclamped) `x0` of one element.
    #[inline(always)]
    pub(crate) fn raw_x0(&self, sample: T, model_output: T) -> T {
        (self.x0_from_sample * sample + self.x0_from_output * model_output) / self.x0_divisor
    }
}

/// What happens to the raw `x0` before it is used: `clamp(x0, lo, hi) / divisor`.
///
/// NaN passes through unchanged, as in `torch.clamp`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct X0Bounds<T> {
    /// Lower bound (`-inf` for none).
    pub lo: T,
    /// Upper bound (`+inf` for none).
    pub hi: T,
    /// Divisor applied after clamping (1 except for dynamic thresholding, where it is `s`).
    pub divisor: T,
}

impl<T: DdimFloat> X0Bounds<T> {
    /// No clamping at all.
    pub(crate) fn unbounded() -> Self {
        let inf = T::ONE / T::ZERO;
        X0Bounds {
            lo: -inf,
            hi: inf,
            divisor: T::ONE,
        }
    }

    /// `clamp(x, -range, range)`.
    pub(crate) fn symmetric(range: T) -> Self {
        X0Bounds {
            lo: -range,
            hi: range,
            divisor: T::ONE,
        }
    }

    /// Applies the bounds to one value.
    #[inline(always)]
    pub(crate) fn apply(&self, x: T) -> T {
        let clamped = if x < self.lo {
            self.lo
        } else if x > self.hi {
            self.hi
        } else {
            x
        };
        clamped / self.divisor
    }
}

/// One element of the update: returns `(prev_sample, pred_original_sample)`.
#[inline(always)]
fn update<T: DdimFloat>(
    k: &StepCoefficients<T>,
    bounds: &X0Bounds<T>,
    sample: T,
    model_output: T,
    noise: T,
) -> (T, T) {
    let x0 = bounds.apply(k.raw_x0(sample, model_output));
    let eps = (k.eps_from_sample * sample + k.eps_from_output * model_output + k.eps_from_x0 * x0)
        / k.eps_divisor;
    let prev = k.prev_from_x0 * x0 + k.prev_from_eps * eps + k.prev_from_noise * noise;
    (prev, x0)
}

/// Where the noise of a step comes from.
pub(crate) enum Noise<'a, T, D, F> {
    /// A caller-provided array of the sample's shape.
    Given(ArrayView<'a, T, D>),
    /// Drawn element by element, in the order the pass visits the elements.
    Drawn(F),
}

/// Applies the update to every element: one read of each input, one write of each output.
///
/// The caller guarantees that all arrays have the same shape.
pub(crate) fn fused_step<T, D, F>(
    k: &StepCoefficients<T>,
    bounds: &X0Bounds<T>,
    model_output: ArrayView<'_, T, D>,
    sample: ArrayView<'_, T, D>,
    noise: Noise<'_, T, D, F>,
    prev_sample: ArrayViewMut<'_, T, D>,
    pred_original_sample: ArrayViewMut<'_, T, D>,
) where
    T: DdimFloat,
    D: Dimension,
    F: FnMut() -> T,
{
    let zip = Zip::from(prev_sample)
        .and(pred_original_sample)
        .and(&sample)
        .and(&model_output);
    match noise {
        Noise::Given(noise) => zip.and(&noise).for_each(|p, x, &s, &m, &z| {
            (*p, *x) = update(k, bounds, s, m, z);
        }),
        Noise::Drawn(mut draw) => zip.for_each(|p, x, &s, &m| {
            (*p, *x) = update(k, bounds, s, m, draw());
        }),
    }
}

/// Writes `weight_a * a + weight_b * b` into `out`, element by element: the shape of
/// `add_noise` (`sqrt(alpha_bar) * x0 + sqrt(1 - alpha_bar) * eps`) and `get_velocity`.
pub(crate) fn weighted_sum<T, D>(
    weight_a: T,
    a: ArrayView<'_, T, D>,
    weight_b: T,
    b: ArrayView<'_, T, D>,
    out: ArrayViewMut<'_, T, D>,
) where
    T: DdimFloat,
    D: Dimension,
{
    Zip::from(out)
        .and(&a)
        .and(&b)
        .for_each(|o, &a, &b| *o = weight_a * a + weight_b * b);
}
