//! The crate's single error type.

use std::path::PathBuf;

/// Everything that can go wrong in this crate.
///
/// Every message names the offending value and what would have been accepted, so that the text of
/// the error alone is enough to fix the call or the configuration file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DdimError {
    /// The configuration text is not valid JSON, or a key holds a value of the wrong type or an
    /// unknown enum string. `line` and `column` are 1-based positions in the text.
    #[error("invalid scheduler config at line {line}, column {column}: {message}")]
    ConfigParse {
        /// 1-based line of the problem in the JSON text.
        line: usize,
        /// 1-based column of the problem in the JSON text.
        column: usize,
        /// What the JSON parser found wrong, including the allowed values of an enum.
        message: String,
    },

    /// A configuration key holds a value outside its allowed range.
    #[error("invalid scheduler config: `{key}` is {value}, but it must be {allowed}")]
    InvalidConfig {
        /// The configuration key (with an index for list entries, like `trained_betas[3]`).
        key: String,
        /// The value that was given, as text.
        value: String,
        /// What the key accepts.
        allowed: String,
    },

    /// A configuration file could not be read or written.
    #[error("cannot {action} scheduler config `{}`: {source}", path.display())]
    Io {
        /// `"read"` or `"write"`.
        action: &'static str,
        /// The file that could not be read or written.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The path given as a config file is not a regular file (a directory, a FIFO, a device),
    /// which is refused before anything is read: reading a FIFO can block forever, and a device
    /// such as `/dev/zero` never ends.
    #[error("scheduler config `{}` is {found}, not a regular file", path.display())]
    NotAFile {
        /// The path given.
        path: PathBuf,
        /// What it is: `"a directory"`, `"a FIFO"`, `"a character device"`, ...
        found: &'static str,
    },

    /// A config file is larger than [`MAX_CONFIG_FILE_BYTES`](crate::MAX_CONFIG_FILE_BYTES);
    /// nothing past the limit is read.
    #[error("scheduler config `{}` is {size} bytes, more than the limit of {limit} bytes (a scheduler config is about 1 KB)", path.display())]
    ConfigTooLarge {
        /// The file.
        path: PathBuf,
        /// Its size in bytes (at least this much, for a file that grew while it was read).
        size: u64,
        /// The limit.
        limit: u64,
    },

    /// `from_pretrained` found no `scheduler_config.json` at or below the given path.
    #[error(
        "no scheduler config found for `{}`: looked for {}",
        path.display(),
        tried.iter().map(|p| format!("`{}`", p.display())).collect::<Vec<_>>().join(", ")
    )]
    ConfigNotFound {
        /// The path the caller gave.
        path: PathBuf,
        /// Every file that was looked for, in order.
        tried: Vec<PathBuf>,
    },

    /// `set_timesteps` was asked for a number of inference steps outside `1..=num_train_timesteps`.
    #[error(
        "num_inference_steps is {requested}, but it must be between 1 and num_train_timesteps ({num_train_timesteps})"
    )]
    InvalidNumInferenceSteps {
        /// The number of steps asked for.
        requested: usize,
        /// The model's number of training timesteps, the largest allowed value.
        num_train_timesteps: usize,
    },

    /// The requested schedule would contain a timestep that the model does not have.
    ///
    /// This happens with `leading` spacing when `steps_offset` pushes the largest timestep to
    /// `num_train_timesteps` or beyond (for example 1000 steps of a 1000-timestep model with
    /// `steps_offset = 1`). The reference implementation hands such a timestep out and then
    /// indexes past its tables; this crate refuses the schedule instead.
    #[error(
        "{spacing} spacing with {num_inference_steps} inference steps and steps_offset {steps_offset} reaches timestep {largest_timestep}, but the model's timesteps are 0..={}; use fewer steps or a smaller steps_offset",
        num_train_timesteps.saturating_sub(1)
    )]
    ScheduleOutOfRange {
        /// The timestep spacing in use, as spelled in the config.
        spacing: String,
        /// The number of inference steps asked for.
        num_inference_steps: usize,
        /// The config's `steps_offset`.
        steps_offset: usize,
        /// The largest timestep the schedule would contain.
        largest_timestep: usize,
        /// The model's number of training timesteps.
        num_train_timesteps: usize,
    },

    /// A step was requested before `set_timesteps`.
    #[error("the scheduler has no timesteps yet: call set_timesteps before step")]
    TimestepsNotSet,

    /// A timestep is not below `num_train_timesteps`.
    #[error("timestep {timestep} is out of range: the model's timesteps are 0..={}", num_train_timesteps.saturating_sub(1))]
    TimestepOutOfRange {
        /// The timestep given.
        timestep: usize,
        /// The model's number of training timesteps.
        num_train_timesteps: usize,
    },

    /// Two arrays that must have the same shape do not.
    #[error(
        "shape mismatch: {name} has shape {found:?}, but {reference_name} has shape {expected:?}"
    )]
    ShapeMismatch {
        /// The array whose shape is wrong.
        name: &'static str,
        /// Its shape.
        found: Vec<usize>,
        /// The array it must agree with.
        reference_name: &'static str,
        /// That array's shape.
        expected: Vec<usize>,
    },

    /// A per-batch-item list of timesteps does not have one entry per batch item.
    #[error("{count} timesteps were given for a batch of {batch_size}: give exactly one timestep per batch item (axis 0)")]
    BatchSizeMismatch {
        /// How many timesteps were given.
        count: usize,
        /// The length of axis 0 of the arrays.
        batch_size: usize,
    },

    /// An array has fewer axes than the operation needs.
    #[error("{operation} needs an array with at least {required} axes, but it has {found}")]
    TooFewAxes {
        /// What needed the axes.
        operation: &'static str,
        /// How many axes the array has.
        found: usize,
        /// How many it needs.
        required: usize,
    },

    /// A list given to `set_custom_timesteps` is empty, not strictly decreasing, or holds a
    /// timestep the model does not have.
    #[error("invalid custom timesteps: {reason}")]
    InvalidTimesteps {
        /// What is wrong, naming the position and the value.
        reason: String,
    },

    /// With steps along the schedule, a step was asked from a timestep the schedule does not
    /// hold, so there is no next timestep to step to.
    #[error("timestep {timestep} is not on the current schedule, and steps move along the schedule (custom timesteps, quadratic spacing or step_along_schedule); step from one of its timesteps")]
    TimestepNotInSchedule {
        /// The timestep given.
        timestep: usize,
    },

    /// `eta` is negative or not finite.
    #[error("eta is {eta:?}, but it must be a finite number >= 0 (0 is deterministic DDIM, 1 is DDPM-like)")]
    InvalidEta {
        /// The value given.
        eta: f64,
    },

    /// A strict config load found a key no diffusers scheduler knows
    /// ([`DdimConfig::from_json_str_strict`](crate::DdimConfig::from_json_str_strict)).
    #[error("unknown scheduler config key `{}`{}: no diffusers scheduler reads it, so it would be ignored", bounded(key), did_you_mean.map(|k| format!(" (did you mean `{k}`?)")).unwrap_or_default())]
    UnknownConfigKey {
        /// The key as written.
        key: String,
        /// The DDIM key it is probably a misspelling of.
        did_you_mean: Option<&'static str>,
    },

    /// A shape whose element count ndarray cannot hold (the product of its non-zero lengths
    /// overflows `isize`).
    #[error("shape {shape:?} is too large for an array: the product of its non-zero lengths overflows isize")]
    ShapeTooLarge {
        /// The shape given.
        shape: Vec<usize>,
    },

    /// A slice does not hold exactly the elements of the shape given with it.
    #[error("{name} has {len} elements, but shape {shape:?} needs {}", expected.map_or_else(|| "more than fit in memory".to_string(), |n| n.to_string()))]
    SliceLength {
        /// Which slice.
        name: &'static str,
        /// Its length.
        len: usize,
        /// The shape given.
        shape: Vec<usize>,
        /// The shape's element count, `None` when it overflows.
        expected: Option<usize>,
    },

    /// The affine form of a step was asked for a config that clamps `x0`
    /// ([`DdimScheduler::affine_step`](crate::DdimScheduler::affine_step)).
    #[error("the step is not affine with {option} on (it clamps the predicted x0); turn {option} off, or apply the step with the scheduler's own calls")]
    NotAffine {
        /// `"clip_sample"` or `"thresholding"`.
        option: &'static str,
    },

    /// A step with `eta > 0` was given no noise source ([`NoiseSource::None`](crate::NoiseSource)).
    #[error("eta is {eta:?}, so the step needs noise: set StepOptions::noise to a NoiseSource (given noise, a rand generator or a TorchGenerator), or use eta = 0")]
    MissingNoise {
        /// The value given.
        eta: f64,
    },

    /// A numeric argument of a call is out of its range (for example `slerp`'s `alpha`).
    #[error("{name} is {value:?}, but it must be {allowed}")]
    InvalidArgument {
        /// The argument's name.
        name: &'static str,
        /// The value given.
        value: f64,
        /// What the argument accepts.
        allowed: &'static str,
    },

    /// A partial schedule (img2img strength, SDXL's `denoising_end` or `denoising_start`) would
    /// run no step at all.
    #[error("{name} {value:?} leaves no denoising step to run with the current number of inference steps; use a larger {name} or more steps")]
    NoStepsLeft {
        /// `"strength"`, `"denoising_end"` or `"denoising_start"`.
        name: &'static str,
        /// The value given.
        value: f64,
    },

    /// A guidance parameter is out of range: `guidance_scale` is not finite, or
    /// `guidance_rescale` is not between 0 and 1.
    #[error("{parameter} is {value:?}, but it must be {allowed}")]
    InvalidGuidance {
        /// `"guidance_scale"` or `"guidance_rescale"`.
        parameter: &'static str,
        /// The value given.
        value: f64,
        /// What the parameter accepts.
        allowed: &'static str,
    },
}

impl DdimError {
    /// Builds an [`DdimError::InvalidConfig`].
    pub(crate) fn config(
        key: impl Into<String>,
        value: impl Quoted,
        allowed: impl Into<String>,
    ) -> Self {
        DdimError::InvalidConfig {
            key: key.into(),
            value: value.quoted(),
            allowed: allowed.into(),
        }
    }
}

/// How a value given by the caller appears in a message: bounded, whatever its size. Floats in
/// their shortest round-trip form (`1e-300`, not three hundred digits); text cut after
/// [`QUOTE_LIMIT`] characters with its full length said.
pub(crate) trait Quoted {
    /// The value as a message shows it.
    fn quoted(&self) -> String;
}

impl Quoted for f64 {
    fn quoted(&self) -> String {
        format!("{self:?}")
    }
}

impl Quoted for f32 {
    fn quoted(&self) -> String {
        format!("{self:?}")
    }
}

impl Quoted for usize {
    fn quoted(&self) -> String {
        self.to_string()
    }
}

impl Quoted for bool {
    fn quoted(&self) -> String {
        self.to_string()
    }
}

impl Quoted for &str {
    fn quoted(&self) -> String {
        bounded(self)
    }
}

impl Quoted for String {
    fn quoted(&self) -> String {
        bounded(self)
    }
}

/// Text the caller has already bounded, shown as it is.
pub(crate) struct Verbatim(pub String);

impl Quoted for Verbatim {
    fn quoted(&self) -> String {
        self.0.clone()
    }
}

/// Characters of a quoted text shown before it is cut.
pub(crate) const QUOTE_LIMIT: usize = 100;

/// `text` if it has at most [`QUOTE_LIMIT`] characters, else its start, an ellipsis and its
/// length.
pub(crate) fn bounded(text: &str) -> String {
    match text.char_indices().nth(QUOTE_LIMIT) {
        None => text.to_string(),
        Some((cut, _)) => format!(
            "{}… ({} characters in all)",
            &text[..cut],
            text.chars().count()
        ),
    }
}

/// `message` with every quoted part (between backticks or double quotes) bounded: serde's
/// messages quote the offending input whole.
pub(crate) fn bound_quotes(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(4 * QUOTE_LIMIT));
    let mut rest = message;
    while let Some(open) = rest.find(['`', '"']) {
        let quote = &rest[open..=open];
        out.push_str(&rest[..=open]);
        rest = &rest[open + 1..];
        match rest.find(quote) {
            Some(close) => {
                out.push_str(&bounded(&rest[..close]));
                out.push_str(quote);
                rest = &rest[close + 1..];
            }
            None => {
                out.push_str(&bounded(rest));
                return out;
            }
        }
    }
    out.push_str(rest);
    out
}

impl From<serde_json::Error> for DdimError {
    fn from(err: serde_json::Error) -> Self {
        // serde_json appends " at line L column C" to its own message; the fields carry that.
        let full = err.to_string();
        let suffix = format!(" at line {} column {}", err.line(), err.column());
        let message = bound_quotes(full.strip_suffix(&suffix).unwrap_or(&full));
        DdimError::ConfigParse {
            line: err.line(),
            column: err.column(),
            message,
        }
    }
}
