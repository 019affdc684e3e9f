//! [`DdimConfig`]: the scheduler's configuration, as found in the `scheduler_config.json`
//! files that diffusers models ship.
//!
//! - this file: the fields, their defaults and their validation (a config is valid when every
//!   key is in range and the noise schedule it describes can be built);
//! - `enums`: [`BetaSchedule`], [`PredictionType`], [`TimestepSpacing`] and their spellings;
//! - `json`: reading and writing the JSON file;
//! - `keys`: the keys DDIM reads, and what the others in a file are (`diffusers_keys` lists
//!   every key of diffusers' schedulers, written by `scripts/diffusers_scheduler_keys.py`).

use serde::{Deserialize, Serialize};

use crate::schedule::{BetaSource, Schedule, ScheduleProblem};
use crate::DdimError;

mod diffusers_keys;
mod enums;
mod json;
mod keys;

pub use enums::{BetaSchedule, PredictionType, TimestepSpacing};
pub use json::MAX_CONFIG_FILE_BYTES;
pub use keys::IgnoredKey;

/// The largest `num_train_timesteps` this crate accepts: one million.
///
/// Real models use 1000 (a few use 4000). The bound keeps a hostile or mistyped config from
/// making the scheduler allocate gigabytes for its tables.
pub const MAX_TRAIN_TIMESTEPS: usize = 1_000_000;

/// The configuration of a [`DdimScheduler`](crate::DdimScheduler).
///
/// Fields are named exactly like the keys of diffusers' `scheduler_config.json`, and
/// [`Default`] gives the same defaults as `diffusers.DDIMScheduler`. When reading JSON, missing
/// keys take their default and unknown keys (`_class_name`, `_diffusers_version`,
/// `skip_prk_steps`, ...) are ignored, so the scheduler config of any diffusers model loads.
///
/// # Example
///
/// ```
/// use ddim::{DdimConfig, BetaSchedule, PredictionType};
///
/// let config = DdimConfig::from_json_str(r#"{
///     "_class_name": "PNDMScheduler",
///     "beta_schedule": "scaled_linear",
///     "beta_start": 0.00085,
///     "beta_end": 0.012,
///     "prediction_type": "v_prediction",
///     "steps_offset": 1
/// }"#)?;
/// assert_eq!(config.beta_schedule, BetaSchedule::ScaledLinear);
/// assert_eq!(config.prediction_type, PredictionType::VPrediction);
/// assert_eq!(config.num_train_timesteps, 1000); // the default
///
/// // Written back, it is a file diffusers' DDIMScheduler loads.
/// let json = config.to_json_string()?;
/// assert!(json.contains(r#""_class_name": "DDIMScheduler""#));
/// assert_eq!(DdimConfig::from_json_str(&json)?, config);
/// # Ok::<(), ddim::DdimError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DdimConfig {
    /// Number of diffusion steps the model was trained with, `T`. Allowed: `1..=`
    /// [`MAX_TRAIN_TIMESTEPS`]. Default 1000.
    pub num_train_timesteps: usize,
    /// First beta of the `linear` and `scaled_linear` schedules. Default 0.0001.
    pub beta_start: f64,
    /// Last beta of the `linear` and `scaled_linear` schedules. Default 0.02.
    pub beta_end: f64,
    /// Shape of the beta schedule. Default `linear`.
    pub beta_schedule: BetaSchedule,
    /// Explicit betas, one per training timestep, each in `[0, 1)`; when present they replace
    /// `beta_schedule`. Default `None` (`null` in JSON).
    pub trained_betas: Option<Vec<f64>>,
    /// Clamp the predicted `x0` to `[-clip_sample_range, clip_sample_range]`. Ignored when
    /// `thresholding` is on. Default `true`.
    pub clip_sample: bool,
    /// At the last step, use `alpha_bar = 1` as the "previous" noise level (`true`), or the
    /// first training timestep's `alpha_bar` (`false`). Default `true`.
    pub set_alpha_to_one: bool,
    /// Added to every timestep of a `leading` schedule (Stable Diffusion uses 1). Default 0.
    pub steps_offset: usize,
    /// What the model predicts. Default `epsilon`.
    pub prediction_type: PredictionType,
    /// Dynamic thresholding of the predicted `x0` (Saharia et al. 2022, Imagen): per batch item,
    /// `s` = the `dynamic_thresholding_ratio` quantile of `|x0|`, clamped to
    /// `[1, sample_max_value]`; then `x0 = clamp(x0, -s, s) / s`. Needs arrays with at least two
    /// axes. Default `false`.
    pub thresholding: bool,
    /// Quantile used by dynamic thresholding, in `[0, 1]`. Default 0.995.
    pub dynamic_thresholding_ratio: f64,
    /// Bound of `clip_sample`, finite and `> 0`. Default 1.0.
    pub clip_sample_range: f64,
    /// Upper bound of the dynamic threshold `s`, finite and `> 0`. Default 1.0.
    pub sample_max_value: f64,
    /// How inference timesteps are picked. Default `leading`.
    pub timestep_spacing: TimestepSpacing,
    /// Rescale the betas so that the last timestep has zero signal-to-noise ratio
    /// (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed").
    /// Needs `num_train_timesteps >= 2`. Default `false`.
    pub rescale_betas_zero_snr: bool,
    /// This crate only (diffusers ignores the key): make each step move to the next timestep of
    /// the current schedule instead of `num_train_timesteps / num_inference_steps` timesteps
    /// back. The reference's rule is exact for `leading` spacing but lands between the
    /// timesteps of `linspace` and `trailing` schedules (diffusers issues 11347 and 12633); with
    /// this key, a step from a timestep that is not on the schedule is an error. Custom
    /// timesteps and `quadratic` spacing always step along their schedule. Default `false`
    /// (the reference's behaviour).
    pub step_along_schedule: bool,
}

impl Default for DdimConfig {
    fn default() -> Self {
        DdimConfig {
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            trained_betas: None,
            clip_sample: true,
            set_alpha_to_one: true,
            steps_offset: 0,
            prediction_type: PredictionType::Epsilon,
            thresholding: false,
            dynamic_thresholding_ratio: 0.995,
            clip_sample_range: 1.0,
            sample_max_value: 1.0,
            timestep_spacing: TimestepSpacing::Leading,
            rescale_betas_zero_snr: false,
            step_along_schedule: false,
        }
    }
}

impl DdimConfig {
    /// Checks every value against its allowed range, and the noise schedule the values produce.
    ///
    /// # Errors
    ///
    /// [`DdimError::InvalidConfig`] naming the key, its value and the allowed range, for:
    /// `num_train_timesteps` outside `1..=`[`MAX_TRAIN_TIMESTEPS`]; non-finite `beta_start` or
    /// `beta_end`; `trained_betas` whose length differs from `num_train_timesteps` or with an
    /// entry outside `[0, 1)` (also after rounding to float32); `dynamic_thresholding_ratio`
    /// outside `[0, 1]`; `clip_sample_range` or `sample_max_value` not finite and positive;
    /// `rescale_betas_zero_snr` with fewer than two training timesteps; and for schedules that
    /// cannot be used: a beta computed from `beta_start`/`beta_end` outside `[0, 1)`, an
    /// `alpha_bar` that underflows to 0 before the last training timestep (too many steps for
    /// the betas), or a zero-terminal-SNR rescale that is undefined (its `alpha_bar` ends flat).
    ///
    /// # Example
    ///
    /// ```
    /// let config = ddim::DdimConfig { beta_end: 1.5, ..Default::default() };
    /// let err = config.validate().unwrap_err();
    /// assert!(err.to_string().contains("beta_start/beta_end"));
    /// ```
    pub fn validate(&self) -> Result<(), DdimError> {
        self.schedule().map(drop)
    }

    /// Validates the config and builds its noise schedule.
    pub(crate) fn schedule(&self) -> Result<Schedule, DdimError> {
        self.validate_fields()?;
        let n = self.num_train_timesteps;
        let (start, end) = (self.beta_start, self.beta_end);
        let source = match (&self.trained_betas, self.beta_schedule) {
            (Some(trained), _) => BetaSource::Trained(trained),
            (None, BetaSchedule::Linear) => BetaSource::Linear { start, end, n },
            (None, BetaSchedule::ScaledLinear) => BetaSource::ScaledLinear { start, end, n },
            (None, BetaSchedule::SquaredcosCapV2) => BetaSource::Cosine { n },
        };
        Schedule::new(source, self.rescale_betas_zero_snr, self.set_alpha_to_one)
            .map_err(|problem| self.schedule_error(problem))
    }

    /// A schedule problem as an error naming the keys that caused it.
    fn schedule_error(&self, problem: ScheduleProblem) -> DdimError {
        let trained = self.trained_betas.is_some();
        match problem {
            ScheduleProblem::BetaOutOfRange { index, beta } if trained => DdimError::config(
                format!("trained_betas[{index}]"),
                format!("{beta:?} once rounded to float32"),
                "in [0, 1)",
            ),
            ScheduleProblem::BetaOutOfRange { index, beta } => DdimError::config(
                "beta_start/beta_end",
                format!(
                    "{:?}/{:?} (giving beta[{index}] = {beta:?} with the {} schedule)",
                    self.beta_start, self.beta_end, self.beta_schedule
                ),
                "a pair whose betas all lie in [0, 1)",
            ),
            ScheduleProblem::FlatTail => DdimError::config(
                "rescale_betas_zero_snr",
                true,
                "false for a schedule whose alpha_bar ends flat (zero betas at the end), \
                 which the rescale would turn into 0/0",
            ),
            ScheduleProblem::SignalLost { timestep } => DdimError::config(
                if trained {
                    "trained_betas"
                } else {
                    "num_train_timesteps"
                },
                format!(
                    "{} with these betas (alpha_bar underflows to 0 at timestep {timestep} of {})",
                    self.num_train_timesteps, self.num_train_timesteps
                ),
                "a schedule that keeps some signal (alpha_bar > 0) before its last timestep",
            ),
        }
    }

    /// The checks of [`DdimConfig::validate`] that need no schedule.
    fn validate_fields(&self) -> Result<(), DdimError> {
        let t = self.num_train_timesteps;
        if t == 0 || t > MAX_TRAIN_TIMESTEPS {
            return Err(DdimError::config(
                "num_train_timesteps",
                t,
                format!("between 1 and {MAX_TRAIN_TIMESTEPS}"),
            ));
        }
        for (key, value) in [("beta_start", self.beta_start), ("beta_end", self.beta_end)] {
            if !value.is_finite() {
                return Err(DdimError::config(key, value, "a finite number"));
            }
        }
        if let Some(betas) = &self.trained_betas {
            if betas.len() != t {
                return Err(DdimError::config(
                    "trained_betas",
                    format!("a list of {} values", betas.len()),
                    format!("a list of num_train_timesteps ({t}) values"),
                ));
            }
            for (i, &beta) in betas.iter().enumerate() {
                if !(0.0..1.0).contains(&beta) {
                    return Err(DdimError::config(
                        format!("trained_betas[{i}]"),
                        beta,
                        "in [0, 1)",
                    ));
                }
            }
        }
        let ratio = self.dynamic_thresholding_ratio;
        if !(0.0..=1.0).contains(&ratio) {
            return Err(DdimError::config(
                "dynamic_thresholding_ratio",
                ratio,
                "in [0, 1]",
            ));
        }
        for (key, value) in [
            ("clip_sample_range", self.clip_sample_range),
            ("sample_max_value", self.sample_max_value),
        ] {
            if !(value.is_finite() && value > 0.0) {
                return Err(DdimError::config(key, value, "a finite number > 0"));
            }
        }
        if self.rescale_betas_zero_snr && t < 2 {
            return Err(DdimError::config(
                "num_train_timesteps",
                t,
                "at least 2 when rescale_betas_zero_snr is true",
            ));
        }
        Ok(())
    }
}
