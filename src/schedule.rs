//! The training noise schedule: `betas`, `alphas_cumprod` and the zero-terminal-SNR rescale.
//!
//! Pure maths on numbers: this module does not know the config. [`DdimConfig`](crate::DdimConfig)
//! describes a schedule ([`BetaSource`] and two flags) and builds it here, turning a
//! [`ScheduleProblem`] into an error that names its keys.
//!
//! Every table is float32 and is computed with the same roundings as the reference, so that the
//! tables agree with diffusers' to the last bit or within one ulp (see the notes on each function).

/// Where the betas come from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum BetaSource<'a> {
    /// Explicit betas, rounded to float32.
    Trained(&'a [f64]),
    /// `n` betas evenly spaced from `start` to `end` (`"linear"`).
    Linear { start: f64, end: f64, n: usize },
    /// The squares of `n` values evenly spaced from `sqrt(start)` to `sqrt(end)`
    /// (`"scaled_linear"`).
    ScaledLinear { start: f64, end: f64, n: usize },
    /// The cosine schedule of Nichol and Dhariwal (`"squaredcos_cap_v2"`).
    Cosine { n: usize },
}

/// Why a schedule cannot be used.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum ScheduleProblem {
    /// A float32 beta outside `[0, 1)`.
    BetaOutOfRange { index: usize, beta: f32 },
    /// The zero-terminal-SNR rescale is undefined: `alpha_bar` ends flat.
    FlatTail,
    /// `alpha_bar` underflows to 0 before the last timestep.
    SignalLost { timestep: usize },
}

/// The float32 tables of a model's noise schedule.
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
    /// Builds the tables.
    ///
    /// # Errors
    ///
    /// A [`ScheduleProblem`] when a beta falls outside `[0, 1)` in float32, when the
    /// zero-terminal-SNR rescale is undefined, or when `alpha_bar` underflows to 0 before the
    /// last timestep (from there on a step would divide by `sqrt(alpha_bar) = 0`; a zero at the
    /// last timestep is what zero-terminal-SNR schedules are made for).
    pub(crate) fn new(
        source: BetaSource<'_>,
        rescale_zero_snr: bool,
        set_alpha_to_one: bool,
    ) -> Result<Self, ScheduleProblem> {
        let mut betas = match source {
            BetaSource::Trained(trained) => trained.iter().map(|&b| b as f32).collect(),
            BetaSource::Linear { start, end, n } => torch_linspace_f32(start as f32, end as f32, n),
            BetaSource::ScaledLinear { start, end, n } => {
                torch_linspace_f32(start.sqrt() as f32, end.sqrt() as f32, n)
                    .into_iter()
                    .map(|b| b * b)
                    .collect()
            }
            BetaSource::Cosine { n } => cosine_betas(n),
        };
        if let Some((index, &beta)) = betas
            .iter()
            .enumerate()
            .find(|(_, b)| !(0.0..1.0).contains(*b))
        {
            return Err(ScheduleProblem::BetaOutOfRange { index, beta });
        }
        if rescale_zero_snr {
            betas = rescale_zero_terminal_snr(&betas)
                .filter(|rescaled| rescaled.iter().all(|b| b.is_finite()))
                .ok_or(ScheduleProblem::FlatTail)?;
        }
        let alphas_cumprod = cumprod_f32(betas.iter().map(|&b| 1.0 - b));
        let last = alphas_cumprod.len().saturating_sub(1);
        if let Some(timestep) = alphas_cumprod[..last].iter().position(|&a| a <= 0.0) {
            return Err(ScheduleProblem::SignalLost { timestep });
        }
        let final_alpha_cumprod = if set_alpha_to_one {
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

/// `n` evenly spaced float32 values from `start` to `end`, rounded as `torch.linspace` rounds.
///
/// With `step = (end - start) / (n - 1)` in float32, entry `i` of the first half is
/// `start + step * i` and entry `i` of the second half is `end - step * (n - 1 - i)`, each
/// evaluated in double from the float32 operands and rounded once. Filling from both ends makes
/// both endpoints exact.
fn torch_linspace_f32(start: f32, end: f32, n: usize) -> Vec<f32> {
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
fn cosine_betas(n: usize) -> Vec<f32> {
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
fn cumprod_f32(values: impl IntoIterator<Item = f32>) -> Vec<f32> {
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
fn rescale_zero_terminal_snr(betas: &[f32]) -> Option<Vec<f32>> {
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
