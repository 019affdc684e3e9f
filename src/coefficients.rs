//! From a timestep and the step's options to the scalars of one update: the noise levels of the
//! two timesteps, `sigma_t` of DDIM paper eq. 16 and the direction weight of eq. 12
//! ([`StepScalars`]), then the weights the kernel applies ([`Update`]).

use crate::config::PredictionType;
use crate::kernel::update::{NoiseLevel, PrevWeights, Update};
use crate::DdimError;

/// The scalars of one DDIM step, in float32, computed with the reference's float32 operations.
///
/// [`DdimScheduler::step`](crate::DdimScheduler::step) applies them to arrays; they are public for callers who apply the
/// update themselves, for example on GPU tensors, and for checking a port against the
/// reference. With `a = alpha_bar`, `a' = alpha_bar_prev` and `s = sigma`, the step is
/// (DDIM paper eq. 12)
///
/// ```text
/// x0   = (sample - sqrt(1 - a) * eps) / sqrt(a)          for epsilon prediction
/// prev = sqrt(a') * x0 + direction * eps + s * noise,     direction = sqrt(1 - a' - s^2)
/// ```
///
/// # Example
///
/// ```
/// use ddim::{DdimConfig, DdimScheduler};
///
/// let mut scheduler = DdimScheduler::new(DdimConfig::default())?;
/// scheduler.set_timesteps(10)?;
/// let k = scheduler.step_scalars(900, 0.0)?;
/// assert_eq!(k.prev_timestep, Some(800));
/// assert_eq!(k.alpha_bar, scheduler.alphas_cumprod()[900]);
/// assert_eq!(k.sigma, 0.0); // eta = 0
/// assert!((k.direction - (1.0 - k.alpha_bar_prev).sqrt()).abs() < 1e-7);
/// # Ok::<(), ddim::DdimError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepScalars {
    /// The timestep stepped from.
    pub timestep: usize,
    /// The timestep stepped to, `timestep - num_train_timesteps / num_inference_steps`, or
    /// `None` when that is below 0 (the last step, which moves to `final_alpha_cumprod`).
    pub prev_timestep: Option<usize>,
    /// `alpha_bar` at `timestep`.
    pub alpha_bar: f32,
    /// `alpha_bar` at `prev_timestep`, or
    /// [`DdimScheduler::final_alpha_cumprod`](crate::DdimScheduler::final_alpha_cumprod).
    pub alpha_bar_prev: f32,
    /// `sqrt(alpha_bar)`.
    pub sqrt_alpha_bar: f32,
    /// `sqrt(1 - alpha_bar)`.
    pub sqrt_one_minus_alpha_bar: f32,
    /// `sqrt(alpha_bar_prev)`.
    pub sqrt_alpha_bar_prev: f32,
    /// `sigma = eta * sqrt((1 - a') / (1 - a) * (1 - a / a'))` (DDIM paper eq. 16); 0 when
    /// `eta == 0`.
    pub sigma: f32,
    /// `sqrt(1 - alpha_bar_prev - sigma^2)`, with the difference clamped at 0 where rounding
    /// makes it negative (the reference returns NaN there).
    pub direction: f32,
}

impl StepScalars {
    /// The scalars of a step between two noise levels, with the reference's float32 operations
    /// (DDIM paper eq. 12 and 16).
    pub(crate) fn between(
        timestep: usize,
        prev_timestep: Option<usize>,
        alpha_bar: f32,
        alpha_bar_prev: f32,
        eta: f64,
    ) -> StepScalars {
        let beta = 1.0 - alpha_bar;
        let beta_prev = 1.0 - alpha_bar_prev;
        // Not evaluated at eta = 0, where sigma is 0 whatever the tables.
        let sigma = if eta > 0.0 {
            let variance = non_negative((beta_prev / beta) * (1.0 - alpha_bar / alpha_bar_prev));
            eta as f32 * variance.sqrt()
        } else {
            0.0
        };
        StepScalars {
            timestep,
            prev_timestep,
            alpha_bar,
            alpha_bar_prev,
            sqrt_alpha_bar: alpha_bar.sqrt(),
            sqrt_one_minus_alpha_bar: beta.sqrt(),
            sqrt_alpha_bar_prev: alpha_bar_prev.sqrt(),
            sigma,
            direction: non_negative(beta_prev - sigma * sigma).sqrt(),
        }
    }
}

/// Clamps a value that can only be negative through rounding to 0 (NaN passes through).
fn non_negative(x: f32) -> f32 {
    if x < 0.0 {
        0.0
    } else {
        x
    }
}

/// A DDIM step as an affine map, for applying it to tensors that live elsewhere (a GPU, another
/// library): with `x` the sample, `m` the model output and `z` the noise,
///
/// ```text
/// prev_sample          = prev_from_sample * x + prev_from_model_output * m + prev_from_noise * z
/// pred_original_sample = x0_from_sample * x + x0_from_model_output * m
/// ```
///
/// Without clipping or thresholding every DDIM update is of this form, for every prediction
/// type and eta (DDIM paper eq. 12 with the `x0` and `eps` of the prediction type substituted);
/// [`DdimScheduler::affine_step`](crate::DdimScheduler::affine_step) computes the five
/// coefficients, in double from the reference's float32 scalars. Applied in float32, the result
/// agrees with [`DdimScheduler::step`](crate::DdimScheduler::step) within float32 rounding (the
/// grouping of the operations differs, so not to the bit).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AffineStep {
    /// The timestep stepped from.
    pub timestep: usize,
    /// Weight of the sample in `prev_sample`.
    pub prev_from_sample: f64,
    /// Weight of the model output in `prev_sample`.
    pub prev_from_model_output: f64,
    /// Weight of the noise in `prev_sample`: `sigma_t`, 0 when `eta = 0`.
    pub prev_from_noise: f64,
    /// Weight of the sample in `pred_original_sample`.
    pub x0_from_sample: f64,
    /// Weight of the model output in `pred_original_sample`.
    pub x0_from_model_output: f64,
}

impl StepScalars {
    /// The affine form of the step these scalars make, for a prediction type.
    pub(crate) fn affine(&self, prediction: PredictionType) -> AffineStep {
        let f = f64::from;
        let (sa, sb) = (f(self.sqrt_alpha_bar), f(self.sqrt_one_minus_alpha_bar));
        // x0 = x_s x + x_m m and eps = e_s x + e_m m, by prediction type (DDIM eq. 9).
        let ((x_s, x_m), (e_s, e_m)) = match prediction {
            PredictionType::Epsilon => ((1.0 / sa, -sb / sa), (0.0, 1.0)),
            PredictionType::Sample => ((0.0, 1.0), (1.0 / sb, -sa / sb)),
            PredictionType::VPrediction => ((sa, -sb), (sb, sa)),
        };
        let (a_prev, direction) = (f(self.sqrt_alpha_bar_prev), f(self.direction));
        AffineStep {
            timestep: self.timestep,
            prev_from_sample: a_prev * x_s + direction * e_s,
            prev_from_model_output: a_prev * x_m + direction * e_m,
            prev_from_noise: f(self.sigma),
            x0_from_sample: x_s,
            x0_from_model_output: x_m,
        }
    }
}

/// `eta`, if it is finite and `>= 0`.
pub(crate) fn check_eta(eta: f64) -> Result<f64, DdimError> {
    if eta.is_finite() && eta >= 0.0 {
        Ok(eta)
    } else {
        Err(DdimError::InvalidEta { eta })
    }
}

impl StepScalars {
    /// The kernel's update for these scalars: `x0` and `eps` read from the model output as
    /// `prediction` says (from the clamped `x0` when `eps_from_clamped_x0`), and
    /// `prev = sqrt(alpha_bar_prev) * x0 + direction * eps + sigma * noise`.
    pub(crate) fn update(
        &self,
        prediction: PredictionType,
        eps_from_clamped_x0: bool,
    ) -> Update<f32> {
        Update {
            prediction,
            level: NoiseLevel {
                sqrt_alpha_bar: self.sqrt_alpha_bar,
                sqrt_one_minus_alpha_bar: self.sqrt_one_minus_alpha_bar,
            },
            eps_from_clamped_x0,
            prev: PrevWeights {
                x0: self.sqrt_alpha_bar_prev,
                eps: self.direction,
                noise: self.sigma,
            },
        }
    }
}
