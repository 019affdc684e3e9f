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
///
/// The const parameters switch off the operations that are identities for the coefficients at
/// hand (a division by exactly 1, a clamp to `[-inf, inf]` followed by a division by 1), so that
/// the common cases do not pay for divisions they do not need; the result is bit-for-bit the same.
#[inline(always)]
fn update<T: DdimFloat, const DIVIDE_X0: bool, const BOUND_X0: bool, const DIVIDE_EPS: bool>(
    k: &StepCoefficients<T>,
    bounds: &X0Bounds<T>,
    sample: T,
    model_output: T,
    noise: T,
) -> (T, T) {
    let mut x0 = k.x0_from_sample * sample + k.x0_from_output * model_output;
    if DIVIDE_X0 {
        x0 = x0 / k.x0_divisor;
    }
    if BOUND_X0 {
        x0 = bounds.apply(x0);
    }
    let mut eps =
        k.eps_from_sample * sample + k.eps_from_output * model_output + k.eps_from_x0 * x0;
    if DIVIDE_EPS {
        eps = eps / k.eps_divisor;
    }
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
    let (m, s, z, p, x) = (
        model_output,
        sample,
        noise,
        prev_sample,
        pred_original_sample,
    );
    let divide_x0 = k.x0_divisor != T::ONE;
    let bound_x0 = *bounds != X0Bounds::unbounded();
    let divide_eps = k.eps_divisor != T::ONE;
    // One instance of the loop per combination of the identities `update` can skip.
    macro_rules! run {
        ($a:literal, $b:literal, $c:literal) => {
            for_each_element(m, s, z, p, x, |s, m, z| {
                update::<T, $a, $b, $c>(k, bounds, s, m, z)
            })
        };
    }
    match (divide_x0, bound_x0, divide_eps) {
        (false, false, false) => run!(false, false, false),
        (false, false, true) => run!(false, false, true),
        (false, true, false) => run!(false, true, false),
        (false, true, true) => run!(false, true, true),
        (true, false, false) => run!(true, false, false),
        (true, false, true) => run!(true, false, true),
        (true, true, false) => run!(true, true, false),
        (true, true, true) => run!(true, true, true),
    }
}

/// Runs `element(sample, model_output, noise) -> (prev, x0)` over every element: over plain
/// slices when every array is contiguous and row-major (a loop the compiler vectorises),
/// through `Zip` for any other layout.
#[inline(always)]
fn for_each_element<T, D, F>(
    model_output: ArrayView<'_, T, D>,
    sample: ArrayView<'_, T, D>,
    noise: Noise<'_, T, D, F>,
    mut prev_sample: ArrayViewMut<'_, T, D>,
    mut pred_original_sample: ArrayViewMut<'_, T, D>,
    element: impl Fn(T, T, T) -> (T, T),
) where
    T: DdimFloat,
    D: Dimension,
    F: FnMut() -> T,
{
    let (p, x) = (&mut prev_sample, &mut pred_original_sample);
    match noise {
        Noise::Given(z) => {
            if let (Some(p), Some(x), Some(s), Some(m), Some(z)) = (
                p.as_slice_mut(),
                x.as_slice_mut(),
                sample.as_slice(),
                model_output.as_slice(),
                z.as_slice(),
            ) {
                for ((p, x), ((&s, &m), &z)) in p.iter_mut().zip(x).zip(s.iter().zip(m).zip(z)) {
                    (*p, *x) = element(s, m, z);
                }
            } else {
                Zip::from(p)
                    .and(x)
                    .and(&sample)
                    .and(&model_output)
                    .and(&z)
                    .for_each(|p, x, &s, &m, &z| (*p, *x) = element(s, m, z));
            }
        }
        Noise::Drawn(mut draw) => {
            if let (Some(p), Some(x), Some(s), Some(m)) = (
                p.as_slice_mut(),
                x.as_slice_mut(),
                sample.as_slice(),
                model_output.as_slice(),
            ) {
                for ((p, x), (&s, &m)) in p.iter_mut().zip(x).zip(s.iter().zip(m)) {
                    (*p, *x) = element(s, m, draw());
                }
            } else {
                Zip::from(p)
                    .and(x)
                    .and(&sample)
                    .and(&model_output)
                    .for_each(|p, x, &s, &m| (*p, *x) = element(s, m, draw()));
            }
        }
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
