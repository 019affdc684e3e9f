//! The config's enums, spelled in JSON exactly as diffusers spells them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{bound_quotes, bounded, Verbatim};
use crate::DdimError;

/// How the training noise levels `beta_t` are laid out over `0..num_train_timesteps`.
///
/// Spelled in JSON exactly as the variant's doc says; [`FromStr`] and [`Display`](fmt::Display)
/// use the same spelling.
///
/// ```
/// use ddim::BetaSchedule;
///
/// let schedule: BetaSchedule = "scaled_linear".parse()?;
/// assert_eq!(schedule, BetaSchedule::ScaledLinear);
/// assert_eq!(schedule.to_string(), "scaled_linear");
/// assert!("cosine".parse::<BetaSchedule>().is_err());
/// # Ok::<(), ddim::DdimError>(())
/// ```
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
///
/// ```
/// use ddim::PredictionType;
///
/// assert_eq!("v_prediction".parse::<PredictionType>()?, PredictionType::VPrediction);
/// assert_eq!(PredictionType::default().to_string(), "epsilon");
/// # Ok::<(), ddim::DdimError>(())
/// ```
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
///
/// ```
/// use ddim::TimestepSpacing;
///
/// assert_eq!("trailing".parse::<TimestepSpacing>()?, TimestepSpacing::Trailing);
/// let err = "Trailing".parse::<TimestepSpacing>().unwrap_err();
/// assert!(err.to_string().contains("`trailing`"));
/// # Ok::<(), ddim::DdimError>(())
/// ```
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
    /// [`DdimConfig::step_along_schedule`](crate::DdimConfig::step_along_schedule)). For `n > sqrt(0.8 T) + 1` the smallest timesteps
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

/// Parses an enum from its JSON spelling, as the JSON reader does.
macro_rules! from_str_as_json {
    ($t:ty, $key:literal) => {
        impl FromStr for $t {
            type Err = DdimError;

            fn from_str(s: &str) -> Result<Self, DdimError> {
                <$t>::deserialize(
                    serde::de::value::StrDeserializer::<serde::de::value::Error>::new(s),
                )
                .map_err(|e| {
                    let value = Verbatim(format!("`{}`", bounded(s)));
                    DdimError::config($key, value, bound_quotes(&e.to_string()))
                })
            }
        }
    };
}
from_str_as_json!(BetaSchedule, "beta_schedule");
from_str_as_json!(PredictionType, "prediction_type");
from_str_as_json!(TimestepSpacing, "timestep_spacing");
