//! The training noise schedule: `betas`, `alphas_cumprod` and the zero-terminal-SNR rescale.
//!
//! Every table is float32 and is computed with the same roundings as the reference, so that the
//! tables agree with diffusers' to the last bit or within one ulp (see the notes on each function).

use crate::config::{BetaSchedule, DdimConfig};
use crate::DdimError;

/// The float32 tables of a configured model.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Schedule {
    /// `beta_t` for `t` in `0..num_train_timesteps`.
    pub betas: Vec<f32>,
    /// `alpha_bar_t = prod_{s <= t} (1 - beta_s)`.
    pub alphas_cumprod: Vec<f32>,
    /// The `alpha_bar` used after the last step: 1, or `alpha_bar_0` (`set_alpha_to_one`).
    pub final_alpha_cumprod: f32,
}

impl Schedule {
    /// Builds the tables of a validated config.
    ///
    /// # Errors
    ///
    /// [`DdimError::InvalidConfig`] when the config's fields are invalid, when a beta falls
    /// outside `[0, 1)` in float32, when `alpha_bar` underflows to 0 before the last timestep, or
    /// when the zero-terminal-SNR rescale is undefined (`alpha_bar` ends flat, so the rescaled
    /// betas are 0/0).
    pub(crate) fn new(config: &DdimConfig) -> Result<Self, DdimError> {
        config.validate_fields()?;
        let t = config.num_train_timesteps;
        let mut betas = match (&config.trained_betas, config.beta_schedule) {
            (Some(trained), _) => trained.iter().map(|&b| b as f32).collect(),
            (None, BetaSchedule::Linear) => {
                torch_linspace_f32(config.beta_start as f32, config.beta_end as f32, t)
            }
            (None, BetaSchedule::ScaledLinear) => torch_linspace_f32(
                config.beta_start.sqrt() as f32,
                config.beta_end.sqrt() as f32,
                t,
            )
            .into_iter()
            .map(|b| b * b)
            .collect(),
            (None, BetaSchedule::SquaredcosCapV2) => cosine_betas(t),
        };
        check_betas(&betas, config)?;
        if config.rescale_betas_zero_snr {
            betas = rescale_zero_terminal_snr(&betas)
                .filter(|rescaled| rescaled.iter().all(|b| b.is_finite()))
                .ok_or_else(|| {
                    DdimError::config(
                        "rescale_betas_zero_snr",
                        true,
                        "false for a schedule whose alpha_bar ends flat (zero betas at the end), \
                         which the rescale would turn into 0/0",
                    )
                })?;
        }
        let alphas_cumprod = cumprod_f32(betas.iter().map(|&b| 1.0 - b));
        check_signal_left(&alphas_cumprod, config)?;
        let final_alpha_cumprod = if config.set_alpha_to_one {
            1.0
        } else {
            alphas_cumprod.first().copied().unwrap_or(1.0)
        };
        Ok(Schedule {
            betas,
            alphas_cumprod,
            final_alpha_cumprod,
        })
    }
}

/// Rejects computed betas outside `[0, 1)`, naming the config keys that produced them.
fn check_betas(betas: &[f32], config: &DdimConfig) -> Result<(), DdimError> {
    let Some(i) = betas.iter().position(|b| !(0.0..1.0).contains(b)) else {
        return Ok(());
    };
    Err(if config.trained_betas.is_some() {
        DdimError::config(
            format!("trained_betas[{i}]"),
            format!("{} once rounded to float32", betas[i]),
            "in [0, 1)",
        )
    } else {
        DdimError::config(
            "beta_start/beta_end",
            format!(
                "{}/{} (giving beta[{i}] = {} with the {} schedule)",
                config.beta_start, config.beta_end, betas[i], config.beta_schedule
            ),
            "a pair whose betas all lie in [0, 1)",
        )
    })
}

/// Rejects a schedule whose `alpha_bar` reaches 0 before the last timestep: from there on the
/// step divides by `sqrt(alpha_bar) = 0`. (A zero at the last timestep is what zero-terminal-SNR
/// schedules are made for.)
fn check_signal_left(alphas_cumprod: &[f32], config: &DdimConfig) -> Result<(), DdimError> {
    let last = alphas_cumprod.len().saturating_sub(1);
    match alphas_cumprod[..last].iter().position(|&a| a <= 0.0) {
        None => Ok(()),
        Some(t) => Err(DdimError::config(
            if config.trained_betas.is_some() {
                "trained_betas"
            } else {
                "num_train_timesteps"
            },
            format!(
                "{} with these betas (alpha_bar underflows to 0 at timestep {t} of {})",
                config.num_train_timesteps, config.num_train_timesteps
            ),
            "a schedule that keeps some signal (alpha_bar > 0) before its last timestep",
        )),
    }
}

/// `n` evenly spaced float32 values from `start` to `end`, rounded as `torch.linspace` rounds.
///
/// With `step = (end - start) / (n - 1)` in float32, entry `i` of the first half is
/// `start + step * i` and entry `i` of the second half is `end - step * (n - 1 - i)`, each
/// evaluated in double from the float32 operands and rounded once. Filling from both ends makes
/// both endpoints exact.
pub(crate) fn torch_linspace_f32(start: f32, end: f32, n: usize) -> Vec<f32> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f32;
    let (start, end, step64) = (f64::from(start), f64::from(end), f64::from(step));
    let halfway = n / 2;
    (0..n)
        .map(|i| {
            let value = if i < halfway {
                start + step64 * i as f64
            } else {
                end - step64 * (n - 1 - i) as f64
            };
            value as f32
        })
        .collect()
}

/// The cosine schedule of Nichol and Dhariwal (2021), "squaredcos_cap_v2".
///
/// `beta_i = min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999)` with
/// `alpha_bar(s) = cos((s + 0.008) / 1.008 * pi / 2)^2`, evaluated in double and rounded to
/// float32 once.
pub(crate) fn cosine_betas(n: usize) -> Vec<f32> {
    const MAX_BETA: f64 = 0.999;
    let alpha_bar = |s: f64| {
        ((s + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
            .cos()
            .powi(2)
    };
    (0..n)
        .map(|i| {
            let t1 = i as f64 / n as f64;
            let t2 = (i + 1) as f64 / n as f64;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(MAX_BETA) as f32
        })
        .collect()
}

/// Running product of float32 values, as `torch.cumprod` computes it: the running product is
/// kept in double and each output is rounded to float32.
pub(crate) fn cumprod_f32(values: impl IntoIterator<Item = f32>) -> Vec<f32> {
    let mut product = 1.0f64;
    values
        .into_iter()
        .map(|v| {
            product *= f64::from(v);
            product as f32
        })
        .collect()
}

/// Rescales betas so that the last timestep has zero signal-to-noise ratio while the first keeps
/// its own (Lin et al. 2023, algorithm 1), in float32 like the reference.
///
/// `sqrt(alpha_bar)` is shifted so that its last entry is 0 and scaled so that its first entry
/// is unchanged; the betas are then read back from the ratios of consecutive `alpha_bar`. The
/// last beta becomes exactly 1. Returns `None` when the shift is undefined (`alpha_bar` is
/// constant, so its first and last square roots are equal).
pub(crate) fn rescale_zero_terminal_snr(betas: &[f32]) -> Option<Vec<f32>> {
    let mut sqrt_bar: Vec<f32> = cumprod_f32(betas.iter().map(|&b| 1.0 - b))
        .into_iter()
        .map(f32::sqrt)
        .collect();
    let (&first, &last) = (sqrt_bar.first()?, sqrt_bar.last()?);
    if first == last {
        return None;
    }
    let scale = first / (first - last);
    for v in &mut sqrt_bar {
        *v = (*v - last) * scale;
    }
    let bar: Vec<f32> = sqrt_bar.iter().map(|v| v * v).collect();
    let alphas = std::iter::once(bar[0]).chain(bar.windows(2).map(|w| w[1] / w[0]));
    Some(alphas.map(|a| 1.0 - a).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linspace_hits_both_endpoints_exactly() {
        let v = torch_linspace_f32(0.0001, 0.02, 1000);
        assert_eq!(v.len(), 1000);
        assert_eq!(v[0], 0.0001f32);
        assert_eq!(v[999], 0.02f32);
        assert_eq!(torch_linspace_f32(0.3, 0.7, 1), vec![0.3]);
    }

    #[test]
    fn cumprod_of_ones_is_ones() {
        assert_eq!(cumprod_f32([1.0; 4]), vec![1.0; 4]);
    }

    #[test]
    fn zero_snr_rescale_ends_at_beta_one_and_keeps_first_alpha_bar() {
        let betas = torch_linspace_f32(0.0001, 0.02, 1000);
        let rescaled = rescale_zero_terminal_snr(&betas).unwrap_or_default();
        assert_eq!(rescaled.len(), 1000);
        assert_eq!(rescaled.last(), Some(&1.0));
        assert!((rescaled[0] - betas[0]).abs() < 1e-6);
        assert_eq!(rescale_zero_terminal_snr(&[0.0; 5]), None);
    }
}
