//! Inference timesteps: which `n` of the model's training timesteps a sampling loop visits.
//!
//! The arithmetic follows the reference's numpy code to the bit (`np.linspace`, `np.arange` with a
//! float step, `np.round` rounding half to even), so the schedules are identical, with two
//! deliberate exceptions that keep every timestep inside `0..num_train_timesteps`:
//!
//! - `trailing` spacing: for some `n` (61, 103, 121, ... of 1000) numpy's `arange` produces one
//!   value too many, which the reference turns into timestep `-1`. It is dropped here.
//! - `leading` spacing: when `steps_offset` lifts the largest timestep to `num_train_timesteps` or
//!   beyond, the reference hands out a timestep the model does not have. This is an error here.

use crate::config::{DdimConfig, TimestepSpacing};
use crate::DdimError;

/// The descending inference timesteps for `n` steps of `config`.
///
/// # Errors
///
/// [`DdimError::InvalidNumInferenceSteps`] unless `1 <= n <= num_train_timesteps`;
/// [`DdimError::ScheduleOutOfRange`] for a `leading` schedule pushed out of range by
/// `steps_offset`.
pub(crate) fn inference_timesteps(config: &DdimConfig, n: usize) -> Result<Vec<usize>, DdimError> {
    let t = config.num_train_timesteps;
    if n == 0 || n > t {
        return Err(DdimError::InvalidNumInferenceSteps {
            requested: n,
            num_train_timesteps: t,
        });
    }
    Ok(match config.timestep_spacing {
        TimestepSpacing::Linspace => linspace(t, n),
        TimestepSpacing::Leading => leading(t, n, config.steps_offset)?,
        TimestepSpacing::Trailing => trailing(t, n),
        TimestepSpacing::Quadratic => quadratic(t, n),
    })
}

/// Checks a caller's schedule: not empty, strictly decreasing, every timestep below
/// `num_train_timesteps`.
///
/// # Errors
///
/// [`DdimError::InvalidTimesteps`] naming the first offending position and value.
pub(crate) fn check_custom(
    timesteps: &[usize],
    num_train_timesteps: usize,
) -> Result<(), DdimError> {
    let invalid = |reason: String| Err(DdimError::InvalidTimesteps { reason });
    if timesteps.is_empty() {
        return invalid("the list is empty; give at least one timestep".into());
    }
    if let Some((i, &t)) = timesteps
        .iter()
        .enumerate()
        .find(|(_, &t)| t >= num_train_timesteps)
    {
        return invalid(format!(
            "timesteps[{i}] is {t}, but the model's timesteps are 0..={}",
            num_train_timesteps - 1
        ));
    }
    if let Some((i, w)) = timesteps.windows(2).enumerate().find(|(_, w)| w[0] <= w[1]) {
        return invalid(format!(
            "timesteps[{}] is {} after {}, but the list must be strictly decreasing",
            i + 1,
            w[1],
            w[0]
        ));
    }
    Ok(())
}

/// The quadratic spacing of the original DDIM code, `int(linspace(0, sqrt(0.8 t), n)^2)`,
/// descending and without repeats.
fn quadratic(t: usize, n: usize) -> Vec<usize> {
    let stop = (0.8 * t as f64).sqrt();
    let step = if n > 1 { stop / (n - 1) as f64 } else { 0.0 };
    let mut timesteps: Vec<usize> = (0..n)
        .rev()
        .map(|i| {
            let x = if n > 1 && i == n - 1 {
                stop
            } else {
                i as f64 * step
            };
            (x * x) as usize
        })
        .collect();
    timesteps.dedup();
    timesteps
}

/// `np.linspace(0, t - 1, n).round()[::-1]`: entry `i` is `i * ((t - 1) / (n - 1))`, the last
/// forced to `t - 1`, rounded half to even.
fn linspace(t: usize, n: usize) -> Vec<usize> {
    let stop = (t - 1) as f64;
    let step = if n > 1 { stop / (n - 1) as f64 } else { 0.0 };
    (0..n)
        .rev()
        .map(|i| {
            let value = if n > 1 && i == n - 1 {
                stop
            } else {
                i as f64 * step
            };
            value.round_ties_even() as usize
        })
        .collect()
}

/// `(arange(n) * (t // n))[::-1] + steps_offset`.
fn leading(t: usize, n: usize, steps_offset: usize) -> Result<Vec<usize>, DdimError> {
    let ratio = t / n;
    let largest = (n - 1)
        .checked_mul(ratio)
        .and_then(|v| v.checked_add(steps_offset));
    match largest {
        Some(largest) if largest < t => {
            Ok((0..n).rev().map(|i| i * ratio + steps_offset).collect())
        }
        _ => Err(DdimError::ScheduleOutOfRange {
            spacing: TimestepSpacing::Leading.to_string(),
            num_inference_steps: n,
            steps_offset,
            largest_timestep: largest.unwrap_or(usize::MAX),
            num_train_timesteps: t,
        }),
    }
}

/// `round(arange(t, 0, -t / n)) - 1`, without the spurious trailing `-1`.
///
/// numpy's float `arange` takes its length as `ceil(t / (t / n))`, which is `n + 1` when the
/// division rounds up, and fills entry `i` as `t + i * d` where `d` is the difference of the first
/// two entries, `(t - t / n) - t` in double.
fn trailing(t: usize, n: usize) -> Vec<usize> {
    let start = t as f64;
    let step = -(start / n as f64);
    let len = (-start / step).ceil() as usize;
    let delta = (start + step) - start;
    (0..len)
        .map(|i| {
            let value = match i {
                0 => start,
                1 => start + step,
                _ => start + i as f64 * delta,
            };
            value.round_ties_even() as i64 - 1
        })
        .filter_map(|v| usize::try_from(v).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(spacing: TimestepSpacing, t: usize, offset: usize) -> DdimConfig {
        DdimConfig {
            timestep_spacing: spacing,
            num_train_timesteps: t,
            steps_offset: offset,
            ..DdimConfig::default()
        }
    }

    #[test]
    fn trailing_spacing_never_yields_negative_timestep() -> Result<(), DdimError> {
        // 61 of 1000 is one of the counts where the reference appends timestep -1.
        let ts = inference_timesteps(&config(TimestepSpacing::Trailing, 1000, 0), 61)?;
        assert_eq!(ts.len(), 61);
        assert_eq!(ts.first(), Some(&999));
        assert_eq!(ts.last(), Some(&15));
        Ok(())
    }

    #[test]
    fn leading_spacing_refuses_timestep_num_train_timesteps() {
        let err =
            inference_timesteps(&config(TimestepSpacing::Leading, 1000, 1), 1000).unwrap_err();
        assert!(matches!(
            err,
            DdimError::ScheduleOutOfRange {
                largest_timestep: 1000,
                ..
            }
        ));
    }

    #[test]
    fn quadratic_spacing_is_dense_at_low_noise_and_strictly_decreasing() -> Result<(), DdimError> {
        // (The exact values are pinned against the original code's formula by tests/golden.rs.)
        let ts = inference_timesteps(&config(TimestepSpacing::Quadratic, 1000, 0), 10)?;
        assert_eq!(
            (ts.len(), ts.first(), ts.last()),
            (10, Some(&800), Some(&0))
        );
        let many = inference_timesteps(&config(TimestepSpacing::Quadratic, 1000, 0), 100)?;
        assert!(many.len() < 100 && many.windows(2).all(|w| w[0] > w[1]));
        Ok(())
    }

    #[test]
    fn custom_timesteps_must_be_strictly_decreasing_and_in_range() {
        assert!(check_custom(&[999, 500, 0], 1000).is_ok());
        for bad in [&[][..], &[1000, 3], &[5, 5], &[3, 7]] {
            assert!(matches!(
                check_custom(bad, 1000),
                Err(DdimError::InvalidTimesteps { .. })
            ));
        }
    }

    #[test]
    fn zero_and_too_many_steps_are_refused() -> Result<(), DdimError> {
        let c = config(TimestepSpacing::Linspace, 10, 0);
        assert!(inference_timesteps(&c, 0).is_err());
        assert!(inference_timesteps(&c, 11).is_err());
        assert_eq!(inference_timesteps(&c, 1)?, vec![0]);
        assert_eq!(
            inference_timesteps(&c, 10)?,
            (0..10).rev().collect::<Vec<_>>()
        );
        Ok(())
    }
}
