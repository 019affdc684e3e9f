//! The DDIM update of one element, with every quantity named after its symbol in the paper.
//!
//! # Glossary
//!
//! The paper (Song, Meng and Ermon 2020) writes `α_t` for what diffusers and this crate call
//! `alpha_bar_t` (`alphas_cumprod[t]`, the fraction of signal variance left at timestep `t`).
//! With `t` the timestep stepped from and `t-1` the one stepped to:
//!
//! | name here | paper | meaning |
//! | --- | --- | --- |
//! | [`NoiseLevel::sqrt_alpha_bar`] | `√α_t` | weight of the clean sample in `x_t` |
//! | [`NoiseLevel::sqrt_one_minus_alpha_bar`] | `√(1 − α_t)` | weight of the noise in `x_t` |
//! | `x0` | `f_θ(x_t)`, eq. 9 and the first term of eq. 12 | the predicted clean sample |
//! | `eps` | `ε_θ(x_t)` | the predicted noise |
//! | [`PrevWeights::x0`] | `√α_{t−1}` | weight of `x0` in `x_{t−1}` (eq. 12) |
//! | [`PrevWeights::eps`] | `√(1 − α_{t−1} − σ_t²)` | the "direction pointing to `x_t`" (eq. 12) |
//! | [`PrevWeights::noise`] | `σ_t(η)` (eq. 16) | weight of the fresh noise `ε_t` |
//!
//! Per element, for the three things a model can predict (the [`Prediction`] implementors):
//!
//! ```text
//! x0   = (x_t − √(1−α_t)·ε) / √α_t            ε-prediction      eps  = model output
//! x0   = model output                          sample prediction eps  = (x_t − √α_t·x0) / √(1−α_t)
//! x0   = √α_t·x_t − √(1−α_t)·v                 v-prediction      eps  = √(1−α_t)·x_t + √α_t·v
//! x0   = clamp(x0, lo, hi) / divisor           clipping or dynamic thresholding, when configured
//! eps  = (x_t − √α_t·x0) / √(1−α_t)            instead, with `use_clipped_model_output`
//! prev = √α_{t−1}·x0 + √(1−α_{t−1}−σ_t²)·eps + σ_t·noise                              (eq. 12)
//! ```
//!
//! Each formula is evaluated with the reference's operations in the reference's order, so a
//! float32 step rounds exactly as diffusers' does, and terms a prediction type does not have are
//! left out (not multiplied by zero), so infinities and NaN travel as they do there.
//!
//! The type parameter of everything here is a compute type (`f32` or `f64`, see
//! [`Arithmetic`]): 16-bit elements are widened to `f32` before these formulas see them.

use crate::config::PredictionType;
use crate::float::Arithmetic;
use crate::DdimFloat;

/// The noise level of the sample being stepped: `√α_t` and `√(1 − α_t)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct NoiseLevel<T> {
    /// `√α_t`.
    pub sqrt_alpha_bar: T,
    /// `√(1 − α_t)`.
    pub sqrt_one_minus_alpha_bar: T,
}

/// The weights of `x_{t−1}` in DDIM paper eq. 12.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct PrevWeights<T> {
    /// `√α_{t−1}`: weight of `x0`.
    pub x0: T,
    /// `√(1 − α_{t−1} − σ_t²)`: weight of `eps`.
    pub eps: T,
    /// `σ_t`: weight of the noise.
    pub noise: T,
}

/// Everything one step needs per element, besides the arrays.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Update<T> {
    /// What the model output means; selects the [`Prediction`] formulas.
    pub prediction: PredictionType,
    /// The level stepped from.
    pub level: NoiseLevel<T>,
    /// Whether `eps` is re-derived from the clamped `x0` (`use_clipped_model_output`).
    pub eps_from_clamped_x0: bool,
    /// The weights of the result.
    pub prev: PrevWeights<T>,
}

impl Update<f32> {
    /// Widens every scalar to the compute type, exactly.
    pub(crate) fn widen<T: Arithmetic>(&self) -> Update<T> {
        let w = T::from_f32;
        Update {
            prediction: self.prediction,
            level: NoiseLevel {
                sqrt_alpha_bar: w(self.level.sqrt_alpha_bar),
                sqrt_one_minus_alpha_bar: w(self.level.sqrt_one_minus_alpha_bar),
            },
            eps_from_clamped_x0: self.eps_from_clamped_x0,
            prev: PrevWeights {
                x0: w(self.prev.x0),
                eps: w(self.prev.eps),
                noise: w(self.prev.noise),
            },
        }
    }
}

/// How `x0` and `eps` are read from the model output: one implementor per [`PredictionType`],
/// so each pass is compiled with exactly its formulas.
pub(crate) trait Prediction {
    /// The raw (unclamped) predicted clean sample.
    fn x0<T: DdimFloat>(level: &NoiseLevel<T>, sample: T, model_output: T) -> T;
    /// The raw `x0` before its last division, if its formula ends in one: `x0` is exactly
    /// `x0_numerator / x0_divisor` (rounded once), or the numerator itself when
    /// [`Prediction::x0_divisor`] is `None`. Thresholding selects order statistics on the
    /// numerators and divides only the two it needs (dividing by a positive number is
    /// monotone, also after rounding, so the order is the same).
    #[inline(always)]
    fn x0_numerator<T: DdimFloat>(level: &NoiseLevel<T>, sample: T, model_output: T) -> T {
        Self::x0(level, sample, model_output)
    }
    /// The divisor of [`Prediction::x0_numerator`], if the `x0` formula ends in a division.
    #[inline(always)]
    fn x0_divisor<T: DdimFloat>(_: &NoiseLevel<T>) -> Option<T> {
        None
    }
    /// The predicted noise, from the model output itself.
    fn eps<T: DdimFloat>(level: &NoiseLevel<T>, sample: T, model_output: T) -> T;
}

/// `"epsilon"`: the model predicts the noise.
pub(crate) struct EpsilonPrediction;
/// `"sample"`: the model predicts the clean sample.
pub(crate) struct SamplePrediction;
/// `"v_prediction"`: the model predicts `v = √α_t·ε − √(1−α_t)·x0`.
pub(crate) struct VelocityPrediction;

impl Prediction for EpsilonPrediction {
    #[inline(always)]
    fn x0<T: DdimFloat>(level: &NoiseLevel<T>, sample: T, model_output: T) -> T {
        Self::x0_numerator(level, sample, model_output) / level.sqrt_alpha_bar
    }
    #[inline(always)]
    fn x0_numerator<T: DdimFloat>(level: &NoiseLevel<T>, sample: T, model_output: T) -> T {
        sample - level.sqrt_one_minus_alpha_bar * model_output
    }
    #[inline(always)]
    fn x0_divisor<T: DdimFloat>(level: &NoiseLevel<T>) -> Option<T> {
        Some(level.sqrt_alpha_bar)
    }
    #[inline(always)]
    fn eps<T: DdimFloat>(_: &NoiseLevel<T>, _: T, model_output: T) -> T {
        model_output
    }
}

impl Prediction for SamplePrediction {
    #[inline(always)]
    fn x0<T: DdimFloat>(_: &NoiseLevel<T>, _: T, model_output: T) -> T {
        model_output
    }
    #[inline(always)]
    fn eps<T: DdimFloat>(level: &NoiseLevel<T>, sample: T, model_output: T) -> T {
        eps_from_x0(level, sample, model_output)
    }
}

impl Prediction for VelocityPrediction {
    #[inline(always)]
    fn x0<T: DdimFloat>(level: &NoiseLevel<T>, sample: T, model_output: T) -> T {
        level.sqrt_alpha_bar * sample - level.sqrt_one_minus_alpha_bar * model_output
    }
    #[inline(always)]
    fn eps<T: DdimFloat>(level: &NoiseLevel<T>, sample: T, model_output: T) -> T {
        level.sqrt_one_minus_alpha_bar * sample + level.sqrt_alpha_bar * model_output
    }
}

/// `eps = (x_t − √α_t·x0) / √(1−α_t)`: DDIM eq. 9 solved for the noise.
#[inline(always)]
fn eps_from_x0<T: DdimFloat>(level: &NoiseLevel<T>, sample: T, x0: T) -> T {
    (sample - level.sqrt_alpha_bar * x0) / level.sqrt_one_minus_alpha_bar
}

/// Runs `$body` with `$p` bound to the [`Prediction`] type of `$prediction`.
macro_rules! with_prediction {
    ($prediction:expr, $p:ident => $body:expr) => {
        match $prediction {
            $crate::config::PredictionType::Epsilon => {
                type $p = $crate::kernel::update::EpsilonPrediction;
                $body
            }
            $crate::config::PredictionType::Sample => {
                type $p = $crate::kernel::update::SamplePrediction;
                $body
            }
            $crate::config::PredictionType::VPrediction => {
                type $p = $crate::kernel::update::VelocityPrediction;
                $body
            }
        }
    };
}
pub(crate) use with_prediction;

impl<T: DdimFloat> Update<T> {
    /// The raw (unclamped) `x0` of one element, for the thresholding pass.
    #[inline(always)]
    pub(crate) fn raw_x0(&self, sample: T, model_output: T) -> T {
        with_prediction!(self.prediction, P => P::x0(&self.level, sample, model_output))
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

    /// `clamp(x, -range, range)`: `clip_sample`.
    pub(crate) fn symmetric(range: T) -> Self {
        X0Bounds {
            lo: -range,
            hi: range,
            divisor: T::ONE,
        }
    }

    /// `clamp(x, -s, s) / s`: dynamic thresholding with threshold `s`.
    pub(crate) fn threshold(s: T) -> Self {
        X0Bounds {
            lo: -s,
            hi: s,
            divisor: s,
        }
    }

    /// Whether these bounds change anything.
    pub(crate) fn is_unbounded(&self) -> bool {
        *self == X0Bounds::unbounded()
    }

    /// Applies the bounds to one value.
    #[inline(always)]
    fn apply(&self, x: T) -> T {
        let above_lo = if x < self.lo { self.lo } else { x };
        let clamped = if above_lo > self.hi {
            self.hi
        } else {
            above_lo
        };
        clamped / self.divisor
    }
}

/// One element of the update: returns `(prev_sample, pred_original_sample)`.
///
/// `P` selects the prediction type's formulas, `EPS_FROM_X0` re-derives `eps` from the clamped
/// `x0`, `BOUND_X0` clamps `x0` at all; each instance has exactly the reference's operations.
#[inline(always)]
pub(crate) fn element<T, P, const EPS_FROM_X0: bool, const BOUND_X0: bool>(
    u: &Update<T>,
    bounds: &X0Bounds<T>,
    sample: T,
    model_output: T,
    noise: T,
) -> (T, T)
where
    T: DdimFloat,
    P: Prediction,
{
    let raw_x0 = P::x0(&u.level, sample, model_output);
    let x0 = if BOUND_X0 {
        bounds.apply(raw_x0)
    } else {
        raw_x0
    };
    let eps = if EPS_FROM_X0 {
        eps_from_x0(&u.level, sample, x0)
    } else {
        P::eps(&u.level, sample, model_output)
    };
    let prev = u.prev.x0 * x0 + u.prev.eps * eps + u.prev.noise * noise;
    (prev, x0)
}
