//! [`DdimConfig`]: the scheduler's configuration, read from and written to the
//! `scheduler_config.json` files that diffusers models ship.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::DdimError;

/// The largest `num_train_timesteps` this crate accepts: one million.
///
/// Real models use 1000 (a few use 4000). The bound keeps a hostile or mistyped config from
/// making the scheduler allocate gigabytes for its tables.
pub const MAX_TRAIN_TIMESTEPS: usize = 1_000_000;

/// How the training noise levels `beta_t` are laid out over `0..num_train_timesteps`.
///
/// Spelled in JSON exactly as the variant's doc says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum BetaSchedule {
    /// `"linear"`: `beta_t` evenly spaced from `beta_start` to `beta_end` (DDPM).
    #[default]
    Linear,
    /// `"scaled_linear"`: `sqrt(beta_t)` evenly spaced from `sqrt(beta_start)` to
    /// `sqrt(beta_end)` (Stable Diffusion and most latent models).
    ScaledLinear,
    /// `"squaredcos_cap_v2"`: the cosine schedule of Nichol and Dhariwal (2021),
    /// `alpha_bar(t) = cos((t/T + 0.008) / 1.008 * pi/2)^2`, each beta capped at 0.999.
    /// `beta_start` and `beta_end` are ignored.
    #[serde(rename = "squaredcos_cap_v2")]
    SquaredcosCapV2,
}

/// What the model's output means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PredictionType {
    /// `"epsilon"`: the model predicts the noise `eps` that was added.
    #[default]
    Epsilon,
    /// `"sample"`: the model predicts the clean sample `x0` directly.
    Sample,
    /// `"v_prediction"`: the model predicts the velocity
    /// `v = sqrt(alpha_bar_t) * eps - sqrt(1 - alpha_bar_t) * x0` (Salimans and Ho, 2022).
    VPrediction,
}

/// How `set_timesteps(n)` picks `n` of the model's training timesteps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TimestepSpacing {
    /// `"leading"`: multiples of `num_train_timesteps / n` (integer division) starting at 0,
    /// plus `steps_offset`. The last training timestep is usually not reached.
    #[default]
    Leading,
    /// `"trailing"`: counts down from the last training timestep in strides of
    /// `num_train_timesteps / n` (real division, rounded).
    Trailing,
    /// `"linspace"`: `n` evenly spaced points from 0 to `num_train_timesteps - 1`, rounded.
    Linspace,
    /// `"quadratic"` (this crate only; diffusers does not know it): the spacing the original
    /// DDIM code used for CIFAR-10, `floor((i * sqrt(0.8 T) / (n - 1))^2)` for `i` in `0..n`,
    /// dense at low noise. Steps always move along this schedule (see
    /// [`DdimConfig::step_along_schedule`]). For `n > sqrt(0.8 T) + 1` the smallest timesteps
    /// repeat; repeats are dropped, so there may be fewer than `n` timesteps.
    Quadratic,
}

/// Reads an enum from its JSON string. Written by hand rather than derived so that a value of
/// another JSON type (`null`, a number, ...) is reported with the list of allowed strings, as an
/// unknown string is.
macro_rules! deserialize_from_name {
    ($t:ty, $($name:literal => $variant:expr),+ $(,)?) => {
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                const NAMES: &[&str] = &[$($name),+];
                struct Names;
                impl serde::de::Visitor<'_> for Names {
                    type Value = $t;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        let list: Vec<String> = NAMES.iter().map(|n| format!("`{n}`")).collect();
                        write!(f, "one of {}", list.join(", "))
                    }
                    fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<$t, E> {
                        match value {
                            $($name => Ok($variant),)+
                            _ => Err(E::unknown_variant(value, NAMES)),
                        }
                    }
                }
                deserializer.deserialize_str(Names)
            }
        }
    };
}

deserialize_from_name!(BetaSchedule,
    "linear" => BetaSchedule::Linear,
    "scaled_linear" => BetaSchedule::ScaledLinear,
    "squaredcos_cap_v2" => BetaSchedule::SquaredcosCapV2,
);
deserialize_from_name!(PredictionType,
    "epsilon" => PredictionType::Epsilon,
    "sample" => PredictionType::Sample,
    "v_prediction" => PredictionType::VPrediction,
);
deserialize_from_name!(TimestepSpacing,
    "leading" => TimestepSpacing::Leading,
    "trailing" => TimestepSpacing::Trailing,
    "linspace" => TimestepSpacing::Linspace,
    "quadratic" => TimestepSpacing::Quadratic,
);

macro_rules! display_as_json {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match serde_json::to_value(self) {
                    Ok(serde_json::Value::String(s)) => f.write_str(&s),
                    _ => write!(f, "{self:?}"),
                }
            }
        }
    };
}
display_as_json!(BetaSchedule);
display_as_json!(PredictionType);
display_as_json!(TimestepSpacing);

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

/// The class name written by [`DdimConfig::to_json_string`], so that diffusers picks the right
/// scheduler when it loads the file.
const CLASS_NAME: &str = "DDIMScheduler";
/// The diffusers version whose behaviour this crate reproduces.
const REFERENCE_VERSION: &str = "0.42.1";

impl DdimConfig {
    /// Parses a `scheduler_config.json` text and validates it.
    ///
    /// # Errors
    ///
    /// [`DdimError::ConfigParse`] for text that is not JSON, a key of the wrong type or an unknown
    /// enum string (the message gives the line, the column and the allowed strings);
    /// [`DdimError::InvalidConfig`] for a value out of range (see [`DdimConfig::validate`]).
    pub fn from_json_str(json: &str) -> Result<Self, DdimError> {
        require_object(json)?;
        let config: DdimConfig = serde_json::from_str(json)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and validates a `scheduler_config.json` file.
    ///
    /// # Errors
    ///
    /// [`DdimError::Io`] when the file cannot be read, then as [`DdimConfig::from_json_str`].
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, DdimError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| DdimError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json_str(&text)
    }

    /// Writes the configuration as pretty-printed JSON with every key, plus
    /// `"_class_name": "DDIMScheduler"` and the diffusers version it matches, so that
    /// `diffusers.DDIMScheduler.from_pretrained` loads it. Reading it back with
    /// [`DdimConfig::from_json_str`] gives an equal config.
    ///
    /// # Errors
    ///
    /// [`DdimError::InvalidConfig`] if the config does not pass [`DdimConfig::validate`] (JSON
    /// cannot hold the NaN or infinite values such a config may contain).
    pub fn to_json_string(&self) -> Result<String, DdimError> {
        self.validate()?;
        let mut value = serde_json::to_value(self)?;
        if let serde_json::Value::Object(map) = &mut value {
            map.insert("_class_name".into(), CLASS_NAME.into());
            map.insert("_diffusers_version".into(), REFERENCE_VERSION.into());
        }
        Ok(serde_json::to_string_pretty(&value)?)
    }

    /// Writes [`DdimConfig::to_json_string`] to a file.
    ///
    /// # Errors
    ///
    /// As [`DdimConfig::to_json_string`], and [`DdimError::Io`] when the file cannot be written.
    pub fn to_file(&self, path: impl AsRef<Path>) -> Result<(), DdimError> {
        let path = path.as_ref();
        let text = self.to_json_string()?;
        std::fs::write(path, text + "\n").map_err(|source| DdimError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

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
        crate::schedule::Schedule::new(self).map(drop)
    }

    /// The checks of [`DdimConfig::validate`] that need no schedule.
    pub(crate) fn validate_fields(&self) -> Result<(), DdimError> {
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

/// Refuses JSON text that is not an object before serde sees it: serde would also read a struct
/// from an array, by position, which no `scheduler_config.json` is.
fn require_object(json: &str) -> Result<(), DdimError> {
    let Some((offset, first)) = json.char_indices().find(|(_, c)| !c.is_whitespace()) else {
        return Ok(()); // empty text: serde reports the missing value with its position
    };
    if first == '{' {
        return Ok(());
    }
    let before = &json[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Err(DdimError::ConfigParse {
        line,
        column,
        message: format!("expected a JSON object of scheduler settings, found `{first}`"),
    })
}
