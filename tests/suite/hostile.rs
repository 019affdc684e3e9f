//! Hostile inputs: configs built from random JSON of random types under real and junk keys, and
//! every public call fed random step counts, timesteps, shapes, etas, guidance parameters,
//! img2img strengths, SDXL fractions, inpainting masks and slerp weights, with NaN and infinite
//! values in the arrays; every text also goes through the report of ignored keys and the strict
//! loader. Nothing may panic; every error must be the one a simple model of the documented
//! contract allows, with a message that names the problem; every result the model can compute
//! (partial schedules, the inpainting blend, the key report) must be the model's.
//!
//! The second half pins the crate's policy for NaN and infinite array values: they propagate as
//! the reference's formulas propagate them, element by element, with no error.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{catch_unwind, AssertUnwindSafe};

use ddim::ndarray::{ArrayD, Axis, IxDyn};
use ddim::{
    classifier_free_guidance, classifier_free_guidance_into, slerp, BetaSchedule, DdimConfig,
    DdimError, DdimFloat, DdimScheduler, DdimSchedulerOutput, NoiseSource, PartialSchedule,
    PredictionType, StepOptions, StepScalars, TimestepSpacing, TorchGenerator, MAX_TRAIN_TIMESTEPS,
};
use rand::rngs::{SmallRng, StdRng};
use rand::{RngExt, SeedableRng};
use serde_json::{json, Map, Number, Value};

use crate::common::{bits, CaseOptions, ScratchDir, TestFloat, CONFIG_KEYS};

// ---------------------------------------------------------------------------------------------
// Vocabulary
// ---------------------------------------------------------------------------------------------

const REAL_KEYS: [&str; 16] = CONFIG_KEYS;

const JUNK_KEYS: [&str; 16] = [
    "_class_name",
    "_diffusers_version",
    "skip_prk_steps",
    "",
    " num_train_timesteps",
    "NUM_TRAIN_TIMESTEPS",
    "num_train_timesteps\u{0}",
    "beta_schedule.linear",
    "ключ",
    "\u{1F600}",
    "eta",
    "variance_type",
    "use_karras_sigmas",
    // Misspellings of DDIM keys, one, two and three edits away (ignoring case).
    "prediction_typ",
    "Clip_Sampel",
    "bt_ed",
];

/// The junk keys that some diffusers scheduler reads (`PNDMScheduler`'s `skip_prk_steps`, ...):
/// ignored quietly by the strict loader. No diffusers scheduler reads the other junk keys, nor
/// the `"x"` of the raw texts.
const DIFFUSERS_JUNK_KEYS: [&str; 4] = [
    "skip_prk_steps",
    "eta",
    "variance_type",
    "use_karras_sigmas",
];

const ENUM_NAMES: [&str; 10] = [
    "linear",
    "scaled_linear",
    "squaredcos_cap_v2",
    "epsilon",
    "sample",
    "v_prediction",
    "leading",
    "trailing",
    "linspace",
    "quadratic",
];

const JUNK_STRINGS: [&str; 9] = [
    "",
    "LINEAR",
    "Epsilon",
    "true",
    "1000",
    "cosine",
    "v-prediction",
    "\u{1F600}\u{0}",
    "linear ",
];

/// Values that arrays may hold besides ordinary numbers.
const SPECIAL_VALUES: [f64; 10] = [
    f64::NAN,
    f64::INFINITY,
    f64::NEG_INFINITY,
    0.0,
    -0.0,
    1e30,
    -1e30,
    f64::MAX,
    1e-40,
    5e-324,
];

/// Base seed of the randomized tests; a failure message gives the case, whose seed is
/// `SEED + case`.
const SEED: u64 = 0xDD1A_5EED;

fn pick<T: Clone>(rng: &mut StdRng, items: &[T]) -> T {
    items[rng.random_range(0..items.len())].clone()
}

fn number(x: f64) -> Value {
    Number::from_f64(x).map_or(Value::Null, Value::Number)
}

// ---------------------------------------------------------------------------------------------
// Random JSON configs
// ---------------------------------------------------------------------------------------------

fn random_value(rng: &mut StdRng, depth: usize) -> Value {
    match rng.random_range(0..16) {
        0 => Value::Null,
        1 => Value::Bool(rng.random()),
        2 => json!(rng.random_range(-3i64..=1100)),
        3 => pick(
            rng,
            &[
                json!(i64::MIN),
                json!(-1),
                json!(0),
                json!(1),
                json!(2),
                json!(999),
                json!(1000),
                json!(1001),
                json!(1_000_000),
                json!(1_000_001),
                json!(u64::MAX),
                json!(u64::from(u32::MAX) + 1),
            ],
        ),
        4 => number(pick(
            rng,
            &[
                1e30,
                -1e30,
                1e-300,
                5e-324,
                f64::MAX,
                -f64::MAX,
                0.5,
                -0.0,
                1.0,
                0.999_999_999_9,
                0.995,
                1e-7,
                2.0,
                1000.0,
            ],
        )),
        5 => number(rng.random_range(-2.0..2.0)),
        6 => number(rng.random_range(0.0..0.05)),
        7 => json!(pick(rng, &ENUM_NAMES)),
        8 => json!(pick(rng, &JUNK_STRINGS)),
        9 => {
            let len = rng.random_range(0..5);
            Value::Array(
                (0..len)
                    .map(|_| number(rng.random_range(0.0..0.5)))
                    .collect(),
            )
        }
        10 => {
            // Lists of plausible betas, of lengths that match common num_train_timesteps.
            let len = pick(rng, &[1usize, 2, 10, 999, 1000, 1001]);
            let mut list: Vec<Value> = (0..len)
                .map(|_| number(rng.random_range(0.0..0.03)))
                .collect();
            if rng.random_bool(0.3) {
                let i = rng.random_range(0..len);
                list[i] = random_value(rng, 3);
            }
            Value::Array(list)
        }
        11 if depth < 3 => {
            let len = rng.random_range(0..4);
            Value::Array((0..len).map(|_| random_value(rng, depth + 1)).collect())
        }
        12 if depth < 3 => {
            let mut map = Map::new();
            for _ in 0..rng.random_range(0..4) {
                map.insert(random_key(rng).to_string(), random_value(rng, depth + 1));
            }
            Value::Object(map)
        }
        13 => json!(pick(rng, &["1000", "0.0001", "1e400", "NaN", "null"])),
        14 => json!("x".repeat(rng.random_range(0..300))),
        _ => Value::Null,
    }
}

fn random_key(rng: &mut StdRng) -> &'static str {
    if rng.random_bool(0.75) {
        pick(rng, &REAL_KEYS)
    } else {
        pick(rng, &JUNK_KEYS)
    }
}

/// A valid config of random options, as a JSON object.
fn valid_config_value(rng: &mut StdRng) -> Value {
    let t = pick(rng, &[1usize, 2, 3, 10, 50, 100, 1000]);
    let config = DdimConfig {
        num_train_timesteps: t,
        beta_schedule: pick(
            rng,
            &[
                BetaSchedule::Linear,
                BetaSchedule::ScaledLinear,
                BetaSchedule::SquaredcosCapV2,
            ],
        ),
        trained_betas: rng
            .random_bool(0.2)
            .then(|| (0..t).map(|_| rng.random_range(0.0001..0.02)).collect()),
        clip_sample: rng.random(),
        set_alpha_to_one: rng.random(),
        steps_offset: pick(rng, &[0, 1, 2]),
        prediction_type: pick(
            rng,
            &[
                PredictionType::Epsilon,
                PredictionType::Sample,
                PredictionType::VPrediction,
            ],
        ),
        thresholding: rng.random(),
        dynamic_thresholding_ratio: pick(rng, &[0.0, 0.5, 0.995, 1.0]),
        clip_sample_range: pick(rng, &[0.5, 1.0, 2.0]),
        sample_max_value: pick(rng, &[0.5, 1.0, 1.5]),
        timestep_spacing: pick(
            rng,
            &[
                TimestepSpacing::Leading,
                TimestepSpacing::Trailing,
                TimestepSpacing::Linspace,
                TimestepSpacing::Quadratic,
            ],
        ),
        rescale_betas_zero_snr: t >= 2 && rng.random_bool(0.3),
        step_along_schedule: rng.random(),
        ..DdimConfig::default()
    };
    let json = config.to_json_string().expect("a valid config");
    serde_json::from_str(&json).expect("JSON")
}

/// Hostile texts that are not made of random values.
fn raw_text(rng: &mut StdRng) -> String {
    let deep = |n: usize| format!("{{\"x\": {}{}}}", "[".repeat(n), "]".repeat(n));
    match rng.random_range(0..26) {
        0 => String::new(),
        1 => " \n\t ".into(),
        2 => "null".into(),
        3 => "[]".into(),
        4 => "[1000, 0.0001]".into(),
        5 => "1000".into(),
        6 => "\"linear\"".into(),
        7 => "{".into(),
        8 => "}".into(),
        9 => "{\"num_train_timesteps\": }".into(),
        10 => "{\"num_train_timesteps\": 1e400}".into(),
        11 => "{\"beta_start\": NaN}".into(),
        12 => "{\"beta_end\": Infinity}".into(),
        13 => "{\"clip_sample\": false,}".into(),
        14 => "{} trailing".into(),
        15 => "\u{feff}{}".into(),
        16 => "// comment\n{}".into(),
        17 => "{\"num_train_timesteps\": 10, \"num_train_timesteps\": 20}".into(),
        18 => deep(rng.random_range(1..20_000)),
        19 => format!(
            "{{\"trained_betas\": {}0{}}}",
            "[".repeat(300),
            "]".repeat(300)
        ),
        20 => "{\"x\": \"\\ud800\"}".into(),
        21 => "{\"num_train_timesteps\": 18446744073709551616}".into(),
        22 => "{\"num_train_timesteps\": -0}".into(),
        23 => "{\"steps_offset\": 1e2}".into(),
        24 => "{\"num_train_timesteps\": 1000000, \"beta_schedule\": \"squaredcos_cap_v2\"}".into(),
        _ => "{\"trained_betas\": [], \"num_train_timesteps\": 0}".into(),
    }
}

/// Truncates a valid config text at a random character, or replaces one character.
fn damaged_text(rng: &mut StdRng) -> String {
    let text = serde_json::to_string_pretty(&valid_config_value(rng)).expect("JSON");
    let chars: Vec<char> = text.chars().collect();
    let at = rng.random_range(0..chars.len());
    if rng.random_bool(0.5) {
        chars[..at].iter().collect()
    } else {
        let mut chars = chars;
        chars[at] = pick(
            rng,
            &['"', '{', '}', ',', ':', '0', '-', 'x', ' ', '\u{0}', 'é'],
        );
        chars.into_iter().collect()
    }
}

/// One random configuration text.
fn config_text(rng: &mut StdRng) -> String {
    match rng.random_range(0..10) {
        0..=3 => {
            let mut map = Map::new();
            for _ in 0..rng.random_range(0..7) {
                map.insert(random_key(rng).to_string(), random_value(rng, 0));
            }
            Value::Object(map).to_string()
        }
        4..=7 => {
            let mut value = valid_config_value(rng);
            let map = value.as_object_mut().expect("an object");
            for _ in 0..rng.random_range(0..3) {
                let key = random_key(rng).to_string();
                if rng.random_bool(0.2) {
                    map.remove(&key);
                } else {
                    map.insert(key, random_value(rng, 0));
                }
            }
            if rng.random_bool(0.5) {
                value.to_string()
            } else {
                serde_json::to_string_pretty(&value).expect("JSON")
            }
        }
        8 => raw_text(rng),
        _ => damaged_text(rng),
    }
}

// ---------------------------------------------------------------------------------------------
// A reader of JSON syntax, for the model of the key report
// ---------------------------------------------------------------------------------------------

/// The top-level keys of `text`, in their order, if it is one JSON object (RFC 8259: no byte
/// order mark, comments or trailing text; whitespace is space, tab, line feed and carriage
/// return), else `None`. Values are read for their syntax only, at any depth (the reader keeps
/// its own stack), numbers of any magnitude and lone surrogates in `\u` escapes included; a key
/// with a lone surrogate, which no Rust string holds, makes the text unreadable (`None`).
fn json_object_keys(text: &str) -> Option<Vec<String>> {
    let mut r = JsonReader { text, at: 0 };
    if !r.eat(b'{') {
        return None;
    }
    let mut keys = vec![];
    if !r.eat(b'}') {
        loop {
            keys.push(r.key()??);
            r.value()?;
            if r.eat(b'}') {
                break;
            }
            if !r.eat(b',') {
                return None;
            }
        }
    }
    r.skip_space();
    (r.at == text.len()).then_some(keys)
}

struct JsonReader<'a> {
    text: &'a str,
    at: usize,
}

impl JsonReader<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.at += 1;
        Some(b)
    }

    fn skip_space(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    /// Skips whitespace, then takes `byte` if it comes next.
    fn eat(&mut self, byte: u8) -> bool {
        self.skip_space();
        let found = self.peek() == Some(byte);
        self.at += usize::from(found);
        found
    }

    /// A string and its colon: `None` for bad syntax, `Some(None)` for a key no Rust string
    /// holds.
    fn key(&mut self) -> Option<Option<String>> {
        if !self.eat(b'"') {
            return None;
        }
        let key = self.string()?;
        self.eat(b':').then_some(key)
    }

    /// The rest of a string after its opening quote, unescaped: `None` for bad syntax,
    /// `Some(None)` for a lone surrogate.
    fn string(&mut self) -> Option<Option<String>> {
        let mut out = Some(String::new());
        loop {
            let start = self.at;
            while self
                .peek()
                .is_some_and(|b| b != b'"' && b != b'\\' && b >= 0x20)
            {
                self.at += 1;
            }
            if let Some(s) = &mut out {
                s.push_str(&self.text[start..self.at]);
            }
            match self.next()? {
                b'"' => return Some(out),
                b'\\' => {}
                _ => return None, // a control character
            }
            let c = match self.next()? {
                b'"' => Some('"'),
                b'\\' => Some('\\'),
                b'/' => Some('/'),
                b'b' => Some('\u{8}'),
                b'f' => Some('\u{c}'),
                b'n' => Some('\n'),
                b'r' => Some('\r'),
                b't' => Some('\t'),
                b'u' => {
                    let unit = self.hex4()?;
                    match unit {
                        0xD800..=0xDBFF if self.text[self.at..].starts_with("\\u") => {
                            self.at += 2;
                            let low = self.hex4()?;
                            if (0xDC00..=0xDFFF).contains(&low) {
                                char::from_u32(0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00))
                            } else {
                                None
                            }
                        }
                        _ => char::from_u32(unit),
                    }
                }
                _ => return None,
            };
            match (c, &mut out) {
                (Some(c), Some(s)) => s.push(c),
                _ => out = None,
            }
        }
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = self.text.get(self.at..self.at + 4)?;
        if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        self.at += 4;
        u32::from_str_radix(digits, 16).ok()
    }

    fn digits(&mut self) -> usize {
        let start = self.at;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
        self.at - start
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self) -> Option<()> {
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.next()? {
            b'0' => {}
            b'1'..=b'9' => {
                self.digits();
            }
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            (self.digits() > 0).then_some(())?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            (self.digits() > 0).then_some(())?;
        }
        Some(())
    }

    /// One value, of any depth: the closing brackets it still needs are kept on a stack.
    fn value(&mut self) -> Option<()> {
        let mut open: Vec<u8> = vec![];
        loop {
            self.skip_space();
            match self.peek()? {
                b'{' => {
                    self.at += 1;
                    if !self.eat(b'}') {
                        self.key()?;
                        open.push(b'}');
                        continue;
                    }
                }
                b'[' => {
                    self.at += 1;
                    if !self.eat(b']') {
                        open.push(b']');
                        continue;
                    }
                }
                b'"' => {
                    self.at += 1;
                    self.string()?;
                }
                b't' | b'f' | b'n' => {
                    let word = ["true", "false", "null"]
                        .into_iter()
                        .find(|w| self.text[self.at..].starts_with(w))?;
                    self.at += word.len();
                }
                _ => self.number()?,
            }
            // A value ended: it ends the containers it closes, or another element follows.
            loop {
                let Some(&close) = open.last() else {
                    return Some(());
                };
                if self.eat(b',') {
                    if close == b'}' {
                        self.key()?;
                    }
                    break;
                }
                if !self.eat(close) {
                    return None;
                }
                open.pop();
            }
        }
    }
}

/// The Levenshtein distance between two strings, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut row = vec![i + 1];
        for (j, &cb) in b.iter().enumerate() {
            let cost = previous[j] + usize::from(ca != cb);
            row.push(cost.min(previous[j + 1] + 1).min(row[j] + 1));
        }
        previous = row;
    }
    previous[b.len()]
}

/// The DDIM keys an unknown key may be a misspelling of: the closest ones, if they are at
/// most two edits away, ignoring case.
fn typo_candidates(key: &str) -> Vec<&'static str> {
    let key = key.to_lowercase();
    let distances: Vec<(usize, &str)> = REAL_KEYS
        .iter()
        .map(|&k| (edit_distance(&key, k), k))
        .collect();
    let best = distances
        .iter()
        .map(|&(d, _)| d)
        .min()
        .unwrap_or(usize::MAX);
    distances
        .into_iter()
        .filter(|&(d, _)| d == best && d <= 2)
        .map(|(_, k)| k)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Checking errors
// ---------------------------------------------------------------------------------------------

/// The variant's name.
fn kind(err: &DdimError) -> &'static str {
    match err {
        DdimError::ConfigParse { .. } => "ConfigParse",
        DdimError::InvalidConfig { .. } => "InvalidConfig",
        DdimError::Io { .. } => "Io",
        DdimError::ConfigNotFound { .. } => "ConfigNotFound",
        DdimError::InvalidNumInferenceSteps { .. } => "InvalidNumInferenceSteps",
        DdimError::ScheduleOutOfRange { .. } => "ScheduleOutOfRange",
        DdimError::TimestepsNotSet => "TimestepsNotSet",
        DdimError::TimestepOutOfRange { .. } => "TimestepOutOfRange",
        DdimError::ShapeMismatch { .. } => "ShapeMismatch",
        DdimError::BatchSizeMismatch { .. } => "BatchSizeMismatch",
        DdimError::TooFewAxes { .. } => "TooFewAxes",
        DdimError::InvalidTimesteps { .. } => "InvalidTimesteps",
        DdimError::TimestepNotInSchedule { .. } => "TimestepNotInSchedule",
        DdimError::InvalidEta { .. } => "InvalidEta",
        DdimError::MissingNoise { .. } => "MissingNoise",
        DdimError::InvalidGuidance { .. } => "InvalidGuidance",
        DdimError::InvalidArgument { .. } => "InvalidArgument",
        DdimError::NoStepsLeft { .. } => "NoStepsLeft",
        DdimError::UnknownConfigKey { .. } => "UnknownConfigKey",
        _ => "unknown",
    }
}

/// Whether a config key (possibly indexed, like `trained_betas[3]`) is one the crate knows.
fn is_known_key(key: &str) -> bool {
    let base = key.split('[').next().unwrap_or(key);
    REAL_KEYS.contains(&base) || key == "beta_start/beta_end"
}

/// `Err(description)` unless the rendered message is non-empty and repeats what the variant's
/// fields say was wrong (the value given, the limit, the names involved).
fn check_message(err: &DdimError) -> Result<(), String> {
    let message = err.to_string();
    let mut must: Vec<String> = Vec::new();
    match err {
        DdimError::ConfigParse {
            line,
            column,
            message: inner,
        } => {
            if inner.trim().is_empty() || *line == 0 {
                return Err(format!("empty parse message or line 0: {message:?}"));
            }
            must.extend([
                format!("line {line}"),
                format!("column {column}"),
                inner.clone(),
            ]);
        }
        DdimError::InvalidConfig {
            key,
            value,
            allowed,
        } => {
            if !is_known_key(key) || value.is_empty() || allowed.is_empty() {
                return Err(format!("InvalidConfig names no known key: {message:?}"));
            }
            must.extend([key.clone(), value.clone(), allowed.clone()]);
        }
        DdimError::Io { path, .. } => must.push(path.display().to_string()),
        DdimError::ConfigNotFound { path, tried } => {
            must.push(path.display().to_string());
            must.extend(tried.iter().map(|p| p.display().to_string()));
        }
        DdimError::InvalidNumInferenceSteps {
            requested,
            num_train_timesteps,
        } => must.extend([requested.to_string(), num_train_timesteps.to_string()]),
        DdimError::ScheduleOutOfRange {
            spacing,
            num_inference_steps,
            steps_offset,
            largest_timestep,
            num_train_timesteps,
        } => must.extend([
            spacing.clone(),
            num_inference_steps.to_string(),
            steps_offset.to_string(),
            largest_timestep.to_string(),
            (num_train_timesteps - 1).to_string(),
        ]),
        DdimError::TimestepsNotSet => must.push("set_timesteps".into()),
        DdimError::TimestepOutOfRange {
            timestep,
            num_train_timesteps,
        } => must.extend([timestep.to_string(), (num_train_timesteps - 1).to_string()]),
        DdimError::ShapeMismatch {
            name,
            found,
            reference_name,
            expected,
        } => must.extend([
            "shape".to_string(),
            name.to_string(),
            reference_name.to_string(),
            format!("{found:?}"),
            format!("{expected:?}"),
        ]),
        DdimError::BatchSizeMismatch { count, batch_size } => {
            must.extend([count.to_string(), batch_size.to_string(), "batch".into()])
        }
        DdimError::TooFewAxes {
            operation,
            found,
            required,
        } => must.extend([
            operation.to_string(),
            found.to_string(),
            required.to_string(),
            "axes".into(),
        ]),
        DdimError::InvalidTimesteps { reason } => {
            if reason.is_empty() {
                return Err("InvalidTimesteps without a reason".into());
            }
            must.extend([reason.clone(), "timesteps".into()]);
        }
        DdimError::TimestepNotInSchedule { timestep } => {
            must.extend([timestep.to_string(), "schedule".into()])
        }
        DdimError::InvalidEta { eta } => must.extend([format!("eta is {eta:?}")]),
        DdimError::MissingNoise { eta } => {
            must.extend([format!("eta is {eta:?}"), "NoiseSource".into()])
        }
        DdimError::InvalidGuidance {
            parameter, value, ..
        } => must.extend([parameter.to_string(), format!("is {value:?}")]),
        DdimError::InvalidArgument {
            name,
            value,
            allowed,
        } => must.extend([format!("{name} is {value:?}"), allowed.to_string()]),
        DdimError::NoStepsLeft { name, value } => must.push(format!("{name} {value:?}")),
        DdimError::UnknownConfigKey { key, did_you_mean } => {
            must.push(format!("`{key}`"));
            must.extend(did_you_mean.map(|k| format!("`{k}`")));
        }
        _ => {}
    }
    if message.trim().is_empty() {
        return Err(format!("{err:?} has an empty message"));
    }
    match must.iter().find(|part| !message.contains(part.as_str())) {
        Some(part) => Err(format!("message {message:?} does not contain {part:?}")),
        None => Ok(()),
    }
}

/// Collects the failures of one randomized run.
struct Failures {
    list: Vec<String>,
    context: String,
    /// How often each `call outcome` was seen (`Ok` or the error's kind), to check that the run
    /// reaches them.
    outcomes: BTreeMap<String, usize>,
}

impl Failures {
    fn new() -> Self {
        Failures {
            list: Vec::new(),
            context: String::new(),
            outcomes: BTreeMap::new(),
        }
    }

    fn fail(&mut self, what: String) {
        if self.list.len() < 1000 {
            self.list.push(format!("[{}] {what}", self.context));
        }
    }

    /// Runs `f`, recording a panic as a failure.
    fn guard<R>(&mut self, call: &str, f: impl FnOnce() -> R) -> Option<R> {
        match catch_unwind(AssertUnwindSafe(f)) {
            Ok(r) => Some(r),
            Err(payload) => {
                let text = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                self.fail(format!("PANIC in {call}: {text}"));
                None
            }
        }
    }

    /// Checks a result against the set of errors the contract allows: `Ok` exactly when the set
    /// is empty, otherwise an error of one of the allowed kinds with a proper message. Returns
    /// whether the call succeeded.
    fn expect<R>(&mut self, call: &str, result: &Result<R, DdimError>, allowed: &[&str]) -> bool {
        let outcome = result.as_ref().map_or_else(kind, |_| "Ok");
        *self
            .outcomes
            .entry(format!("{call} {outcome}"))
            .or_default() += 1;
        match result {
            Ok(_) if allowed.is_empty() => true,
            Ok(_) => {
                self.fail(format!("{call}: Ok, but expected one of {allowed:?}"));
                true
            }
            Err(e) => {
                if let Err(problem) = check_message(e) {
                    self.fail(format!("{call}: {problem}"));
                }
                if !allowed.contains(&kind(e)) {
                    self.fail(format!("{call}: {e:?} ({e}), expected one of {allowed:?}"));
                }
                false
            }
        }
    }

    fn assert_empty(&self, cases: usize) {
        assert!(
            self.list.is_empty(),
            "{} failures in {cases} cases (first 25):\n{}",
            self.list.len(),
            self.list
                .iter()
                .take(25)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

// ---------------------------------------------------------------------------------------------
// A model of the documented contract
// ---------------------------------------------------------------------------------------------

/// What the scheduler should know, tracked independently of it.
struct Contract {
    config: DdimConfig,
    timesteps: Option<Vec<usize>>,
    num_inference_steps: usize,
    along: bool,
}

impl Contract {
    fn t(&self) -> usize {
        self.config.num_train_timesteps
    }

    /// The errors a step from `t` may give, whatever the arrays.
    fn timestep_problems(&self, t: usize) -> Vec<&'static str> {
        match &self.timesteps {
            None => vec!["TimestepsNotSet"],
            Some(_) if t >= self.t() => vec!["TimestepOutOfRange"],
            Some(ts) if self.along && !ts.contains(&t) => vec!["TimestepNotInSchedule"],
            Some(_) => vec![],
        }
    }

    fn eta_problems(eta: f64) -> Vec<&'static str> {
        if eta.is_finite() && eta >= 0.0 {
            vec![]
        } else {
            vec!["InvalidEta"]
        }
    }

    fn set_timesteps_problems(&self, n: usize) -> Vec<&'static str> {
        let t = self.t();
        if n == 0 || n > t {
            return vec!["InvalidNumInferenceSteps"];
        }
        if self.config.timestep_spacing == TimestepSpacing::Leading {
            let largest = (n - 1)
                .checked_mul(t / n)
                .and_then(|v| v.checked_add(self.config.steps_offset));
            if largest.is_none_or(|l| l >= t) {
                return vec!["ScheduleOutOfRange"];
            }
        }
        vec![]
    }

    fn custom_problems(&self, list: &[usize]) -> Vec<&'static str> {
        let bad = list.is_empty()
            || list.iter().any(|&x| x >= self.t())
            || list.windows(2).any(|w| w[0] <= w[1]);
        if bad {
            vec!["InvalidTimesteps"]
        } else {
            vec![]
        }
    }

    /// The errors a partial schedule may give before it looks at the schedule: before
    /// `set_timesteps`, and an argument outside its range.
    fn partial_problems(&self, argument_ok: bool) -> Vec<&'static str> {
        let mut p = vec![];
        if self.timesteps.is_none() {
            p.push("TimestepsNotSet");
        }
        if !argument_ok {
            p.push("InvalidArgument");
        }
        p
    }

    /// Where `img2img_timesteps(strength)` starts in the schedule: with `n` timesteps,
    /// `init = min(floor(n * strength), n)` (the product in double) and `start = n - init`;
    /// no step runs when `init = 0`.
    fn img2img_start(&self, strength: f64) -> Result<usize, Vec<&'static str>> {
        let p = self.partial_problems((0.0..=1.0).contains(&strength));
        let Some(ts) = self.timesteps.as_ref().filter(|_| p.is_empty()) else {
            return Err(p);
        };
        let n = ts.len();
        let init = ((n as f64 * strength).floor() as usize).min(n);
        if init == 0 {
            Err(vec!["NoStepsLeft"])
        } else {
            Ok(n - init)
        }
    }

    /// How many timesteps SDXL's base model runs at `fraction`: those `>= cutoff`, with
    /// `cutoff = round(T - fraction * T)` in double, half to even; the refiner runs the rest.
    fn base_count(&self, fraction: f64) -> Result<usize, Vec<&'static str>> {
        let p = self.partial_problems(fraction > 0.0 && fraction < 1.0);
        let Some(ts) = self.timesteps.as_ref().filter(|_| p.is_empty()) else {
            return Err(p);
        };
        let t = self.t() as f64;
        let cutoff = (t - fraction * t).round_ties_even();
        Ok(ts.iter().take_while(|&&x| x as f64 >= cutoff).count())
    }

    fn expected_prev_timestep(&self, t: usize) -> Option<usize> {
        let ts = self.timesteps.as_ref()?;
        if self.along {
            let i = ts.iter().position(|&x| x == t)?;
            ts.get(i + 1).copied()
        } else {
            t.checked_sub(self.t() / self.num_inference_steps)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Random arguments
// ---------------------------------------------------------------------------------------------

fn random_shape(rng: &mut StdRng) -> Vec<usize> {
    let ndim = pick(rng, &[0usize, 1, 2, 2, 3, 4]);
    (0..ndim)
        .map(|_| {
            if rng.random_bool(0.08) {
                0
            } else {
                rng.random_range(1..4)
            }
        })
        .collect()
}

/// Values in `[-3, 3]` with a share of NaN, infinities, huge and subnormal numbers.
fn random_values<T: DdimFloat>(rng: &mut StdRng, shape: &[usize], special: f64) -> ArrayD<T> {
    random_values_from(rng, shape, special, &SPECIAL_VALUES)
}

/// Values in `[-3, 3]` with a share `special` of values from `specials`.
fn random_values_from<T: DdimFloat>(
    rng: &mut StdRng,
    shape: &[usize],
    special: f64,
    specials: &[f64],
) -> ArrayD<T> {
    ArrayD::from_shape_simple_fn(IxDyn(shape), || {
        T::from_f64(if rng.random_bool(special) {
            pick(rng, specials)
        } else {
            rng.random_range(-3.0..3.0)
        })
    })
}

/// The sample's shape most of the time, another shape sometimes.
fn maybe_other_shape(rng: &mut StdRng, shape: &[usize]) -> Vec<usize> {
    match rng.random_range(0..24) {
        0 => random_shape(rng),
        1 => shape.iter().rev().copied().collect(),
        2 => {
            let mut s = shape.to_vec();
            s.push(1);
            s
        }
        _ => shape.to_vec(),
    }
}

fn random_timestep(rng: &mut StdRng, c: &Contract) -> usize {
    let t = c.t();
    match rng.random_range(0..10) {
        0..=3 => match &c.timesteps {
            Some(ts) if !ts.is_empty() => pick(rng, ts),
            _ => rng.random_range(0..t),
        },
        4 => rng.random_range(0..t),
        5 => t - 1,
        6 => t,
        7 => t + 1,
        8 => usize::MAX,
        _ => pick(rng, &[0, 1, usize::MAX / 2, 1 << 40]),
    }
}

fn random_step_count(rng: &mut StdRng, t: usize) -> usize {
    let (any, few) = (rng.random_range(1..=t), rng.random_range(1..=t.min(60)));
    pick(
        rng,
        &[
            0,
            1,
            2,
            t.saturating_sub(1),
            t,
            t + 1,
            usize::MAX,
            usize::MAX / 2,
            any,
            few,
        ],
    )
}

fn random_custom_list(rng: &mut StdRng, c: &Contract) -> Vec<usize> {
    let t = c.t();
    let descending = |rng: &mut StdRng, len: usize| {
        let mut v: Vec<usize> = (0..len).map(|_| rng.random_range(0..t)).collect();
        v.sort_unstable_by(|a, b| b.cmp(a));
        v.dedup();
        v
    };
    match rng.random_range(0..10) {
        0 => vec![],
        1 => vec![t - 1],
        2..=4 => {
            let len = rng.random_range(1..20);
            descending(rng, len)
        }
        5 => {
            let mut v = descending(rng, 5);
            v.push(*v.last().unwrap_or(&0));
            v
        }
        6 => {
            let mut v = descending(rng, 5);
            v.reverse();
            v
        }
        7 => vec![t, 0],
        8 => vec![usize::MAX],
        _ if t <= 5000 => (0..t).rev().collect(),
        _ => vec![0],
    }
}

fn random_eta(rng: &mut StdRng) -> f64 {
    pick(
        rng,
        &[
            0.0,
            0.0,
            0.0,
            0.0,
            0.5,
            0.5,
            1.0,
            1.0,
            1.0,
            2.0,
            1e30,
            1e39,
            -0.0,
            -1.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MIN_POSITIVE,
        ],
    )
}

fn bits_equal<T: TestFloat>(a: &ArrayD<T>, b: &ArrayD<T>) -> bool {
    a.shape() == b.shape() && bits(a) == bits(b)
}

/// Where a step's noise comes from in the randomized run: each of the [`NoiseSource`]s.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Source {
    None,
    Given,
    Rng,
    Torch,
}

/// The generators a step may draw from, compared before and after the call.
#[derive(Debug, Clone, PartialEq)]
struct Generators {
    rng: SmallRng,
    torch: TorchGenerator,
}

impl Generators {
    fn random(rng: &mut StdRng) -> Self {
        Generators {
            rng: SmallRng::seed_from_u64(rng.random()),
            torch: TorchGenerator::manual_seed(rng.random()),
        }
    }
}

impl Source {
    fn random(rng: &mut StdRng) -> Self {
        pick(
            rng,
            &[Source::None, Source::Given, Source::Rng, Source::Torch],
        )
    }

    /// The options of one step with this source: `z` as given noise, or one of `generators`.
    fn options<'a, T>(
        self,
        eta: f64,
        use_clipped_model_output: bool,
        z: &'a ArrayD<T>,
        generators: &'a mut Generators,
    ) -> StepOptions<'a, T> {
        let noise = match self {
            Source::None => NoiseSource::None,
            Source::Given => NoiseSource::given(z),
            Source::Rng => NoiseSource::Rng(&mut generators.rng),
            Source::Torch => NoiseSource::Torch(&mut generators.torch),
        };
        StepOptions {
            eta,
            noise,
            use_clipped_model_output,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The randomized run
// ---------------------------------------------------------------------------------------------

/// Runs `ops` random calls on a scheduler built from `config`, checking each against `Contract`.
fn exercise<T: TestFloat>(f: &mut Failures, rng: &mut StdRng, config: DdimConfig, ops: usize) {
    let Some(Ok(mut s)) = f.guard("new", || DdimScheduler::new(config.clone())) else {
        f.fail("a validated config was refused by new".into());
        return;
    };
    let mut c = Contract {
        config,
        timesteps: None,
        num_inference_steps: 0,
        along: false,
    };
    for op in 0..ops {
        let shape = random_shape(rng);
        let special = pick(rng, &[0.0, 0.0, 0.05, 0.3]);
        let x: ArrayD<T> = random_values(rng, &shape, special);
        let m_shape = maybe_other_shape(rng, &shape);
        let m: ArrayD<T> = random_values(rng, &m_shape, special);
        let z_shape = maybe_other_shape(rng, &shape);
        let z: ArrayD<T> = random_values(rng, &z_shape, special);
        let t = random_timestep(rng, &c);
        let eta = random_eta(rng);
        let clipped: bool = rng.random();
        let source = Source::random(rng);
        let ndim = shape.len();
        let batch = shape.first().copied();
        let thresholding = c.config.thresholding;
        let mut shape_problems = vec![];
        if m_shape != shape {
            shape_problems.push("ShapeMismatch");
        }
        let noise_problems = if z_shape != shape {
            vec!["ShapeMismatch"]
        } else {
            vec![]
        };
        let forward = |c: &Contract, eta: Option<f64>| {
            let mut p = shape_problems.clone();
            if let Some(eta) = eta {
                p.extend(Contract::eta_problems(eta));
            }
            p.extend(c.timestep_problems(t));
            if thresholding && ndim < 2 {
                p.push("TooFewAxes");
            }
            p
        };
        // The noise source is the last check of a step: given noise of another shape (at any
        // eta), or eta > 0 with no source, when nothing else is wrong.
        let with_noise = |mut p: Vec<&'static str>| {
            if source == Source::Given {
                p.extend_from_slice(&noise_problems);
            }
            if p.is_empty() && source == Source::None && eta > 0.0 {
                p.push("MissingNoise");
            }
            p
        };
        let name = |call: &str| format!("{call}/{source:?}");
        // Most runs start from a schedule, so that the step calls get past the timestep checks.
        let call = if op == 0 && rng.random_bool(0.8) {
            rng.random_range(0..2)
        } else {
            rng.random_range(0..27)
        };
        f.context = format!(
            "{} call {call} t={t} eta={eta} {source:?} shapes m{m_shape:?} x{shape:?} z{z_shape:?} config {:?} timesteps {:?}",
            std::any::type_name::<T>(),
            c.config,
            c.timesteps.as_ref().map(|ts| &ts[..ts.len().min(8)]),
        );
        match call {
            0 => {
                let n = if op == 0 {
                    rng.random_range(1..=c.t().min(50))
                } else {
                    random_step_count(rng, c.t())
                };
                let before = s.timesteps().to_vec();
                let Some(r) = f.guard("set_timesteps", || s.set_timesteps(n)) else {
                    continue;
                };
                if f.expect("set_timesteps", &r, &c.set_timesteps_problems(n)) {
                    c.timesteps = Some(s.timesteps().to_vec());
                    c.num_inference_steps = n;
                    c.along = c.config.step_along_schedule
                        || c.config.timestep_spacing == TimestepSpacing::Quadratic;
                } else if s.timesteps() != before {
                    f.fail("set_timesteps changed the schedule on error".into());
                }
            }
            1 => {
                let list = if op == 0 {
                    let t = c.t();
                    let mut v: Vec<usize> = (0..8).map(|_| rng.random_range(0..t)).collect();
                    v.sort_unstable_by(|a, b| b.cmp(a));
                    v.dedup();
                    v
                } else {
                    random_custom_list(rng, &c)
                };
                let before = s.timesteps().to_vec();
                let Some(r) = f.guard("set_custom_timesteps", || s.set_custom_timesteps(&list))
                else {
                    continue;
                };
                if f.expect("set_custom_timesteps", &r, &c.custom_problems(&list)) {
                    c.num_inference_steps = list.len();
                    c.timesteps = Some(list);
                    c.along = true;
                } else if s.timesteps() != before {
                    f.fail("set_custom_timesteps changed the schedule on error".into());
                }
            }
            2 => {
                let Some(r) = f.guard("prev_timestep", || s.prev_timestep(t)) else {
                    continue;
                };
                if f.expect("prev_timestep", &r, &c.timestep_problems(t)) {
                    let got = r.ok().flatten();
                    if got != c.expected_prev_timestep(t) {
                        f.fail(format!(
                            "prev_timestep({t}) is {got:?}, expected {:?}",
                            c.expected_prev_timestep(t)
                        ));
                    }
                }
            }
            3 => {
                let Some(r) = f.guard("step_scalars", || s.step_scalars(t, eta)) else {
                    continue;
                };
                let mut p = Contract::eta_problems(eta);
                p.extend(c.timestep_problems(t));
                if f.expect("step_scalars", &r, &p) {
                    if let Ok(k) = r {
                        check_scalars(f, &k, eta);
                    }
                }
            }
            4 => {
                let Some(r) = f.guard("inverse_step_scalars", || s.inverse_step_scalars(t)) else {
                    continue;
                };
                if f.expect("inverse_step_scalars", &r, &c.timestep_problems(t)) {
                    if let Ok(k) = r {
                        check_scalars(f, &k, 0.0);
                    }
                }
            }
            5 => {
                let r = f.guard("step", || s.step(&m, t, &x));
                check_output(f, "step", r, &forward(&c, None), &shape);
            }
            6..=13 => {
                // One of the destinations, with one of the noise sources.
                let mut generators = Generators::random(rng);
                let before = generators.clone();
                let done = match rng.random_range(0..3) {
                    0 => {
                        let r = f.guard(&name("step_with"), || {
                            let options = source.options(eta, clipped, &z, &mut generators);
                            s.step_with(&m, t, &x, options)
                        });
                        let p = with_noise(forward(&c, Some(eta)));
                        check_output(f, &name("step_with"), r, &p, &shape)
                    }
                    1 => {
                        // Buffers of the sample's shape, or sometimes of another.
                        let out_shape = maybe_other_shape(rng, &shape);
                        let mut out = DdimSchedulerOutput {
                            prev_sample: random_values::<T>(rng, &out_shape, 0.1),
                            pred_original_sample: random_values::<T>(rng, &out_shape, 0.1),
                        };
                        let before = out.clone();
                        let mut p = if out_shape != shape {
                            vec!["ShapeMismatch"]
                        } else {
                            vec![]
                        };
                        p.extend(forward(&c, Some(eta)));
                        let r = f.guard(&name("step_into"), || {
                            let options = source.options(eta, clipped, &z, &mut generators);
                            let (prev, x0) = (&mut out.prev_sample, &mut out.pred_original_sample);
                            s.step_into(&m, t, &x, options, prev, x0)
                        });
                        r.map(|r| {
                            let untouched = bits_equal(&out.prev_sample, &before.prev_sample)
                                && bits_equal(
                                    &out.pred_original_sample,
                                    &before.pred_original_sample,
                                );
                            let ok = f.expect(&name("step_into"), &r, &with_noise(p));
                            if !ok && !untouched {
                                f.fail("step_into wrote into the buffers on error".into());
                            }
                            ok
                        })
                    }
                    _ => {
                        let mut sample = x.clone();
                        let r = f.guard(&name("step_in_place"), || {
                            let options = source.options(eta, clipped, &z, &mut generators);
                            s.step_in_place(&m, t, &mut sample, options)
                        });
                        r.map(|r| {
                            let p = with_noise(forward(&c, Some(eta)));
                            let ok = f.expect(&name("step_in_place"), &r, &p);
                            if !ok && !bits_equal(&sample, &x) {
                                f.fail("step_in_place changed the sample on error".into());
                            }
                            ok
                        })
                    }
                };
                check_generators(f, done, eta, &before, &generators);
            }
            14 => {
                let r = f.guard("inverse_step", || s.inverse_step(&m, t, &x));
                let mut p = shape_problems.clone();
                p.extend(c.timestep_problems(t));
                check_output(f, "inverse_step", r, &p, &shape);
            }
            15 | 16 => {
                let ts = batch_timesteps(rng, &c, batch.unwrap_or(0));
                let mut p = shape_problems.clone();
                p.extend(Contract::eta_problems(eta));
                if thresholding && ndim < 2 {
                    p.push("TooFewAxes");
                }
                match batch {
                    None => p.push("TooFewAxes"),
                    Some(b) if ts.len() != b => p.push("BatchSizeMismatch"),
                    Some(_) => {}
                }
                for &t in &ts {
                    p.extend(c.timestep_problems(t));
                }
                if ts.is_empty() && batch == Some(0) && c.timesteps.is_none() {
                    // An empty batch is checked like any other call.
                    p.push("TimestepsNotSet");
                }
                p.dedup();
                let mut generators = Generators::random(rng);
                let before = generators.clone();
                let r = f.guard(&name("step_batch"), || {
                    let options = source.options(eta, clipped, &z, &mut generators);
                    s.step_batch(&m, &ts, &x, options)
                });
                let done = check_output(f, &name("step_batch"), r, &with_noise(p), &shape);
                check_generators(f, done, eta, &before, &generators);
            }
            17 | 18 => {
                let ts = batch_timesteps(rng, &c, batch.unwrap_or(0));
                let mut p = noise_problems.clone();
                match batch {
                    None => p.push("TooFewAxes"),
                    Some(b) if ts.len() != b => p.push("BatchSizeMismatch"),
                    Some(_) => {}
                }
                if ts.iter().any(|&t| t >= c.t()) {
                    p.push("TimestepOutOfRange");
                }
                let r = if call == 17 {
                    f.guard("add_noise", || s.add_noise(&x, &z, &ts))
                } else {
                    f.guard("get_velocity", || s.get_velocity(&x, &z, &ts))
                };
                if let Some(r) = r {
                    if f.expect("add_noise/get_velocity", &r, &p) {
                        if let Ok(out) = r {
                            if out.shape() != &shape[..] {
                                f.fail(format!("add_noise/get_velocity shape {:?}", out.shape()));
                            }
                        }
                    }
                }
            }
            22 => {
                let strength = random_strength(rng, &c);
                let Some(r) = f.guard("img2img_timesteps", || s.img2img_timesteps(strength)) else {
                    continue;
                };
                let ts = c.timesteps.as_deref().unwrap_or(&[]);
                let expected = c.img2img_start(strength).map(|start| start..ts.len());
                let what = ("img2img_timesteps", "strength", strength);
                check_partial(f, what, &r, expected, ts);
            }
            23 => {
                // Base and refiner at the same fraction: each against the model, and together
                // the whole schedule once.
                let fraction = random_fraction(rng, &c);
                let base = f.guard("base_timesteps", || s.base_timesteps(fraction));
                let refiner = f.guard("refiner_timesteps", || s.refiner_timesteps(fraction));
                let ts = c.timesteps.as_deref().unwrap_or(&[]);
                let count = c.base_count(fraction);
                let no_steps = || vec!["NoStepsLeft"];
                if let Some(r) = &base {
                    let expected = count
                        .clone()
                        .and_then(|k| (k > 0).then_some(0..k).ok_or_else(no_steps));
                    check_partial(
                        f,
                        ("base_timesteps", "denoising_end", fraction),
                        r,
                        expected,
                        ts,
                    );
                }
                if let Some(r) = &refiner {
                    let n = ts.len();
                    let expected = count.and_then(|k| (k < n).then_some(k..n).ok_or_else(no_steps));
                    let what = ("refiner_timesteps", "denoising_start", fraction);
                    check_partial(f, what, r, expected, ts);
                }
                if let (Some(Ok(b)), Some(Ok(r))) = (&base, &refiner) {
                    if b.timesteps.len() + r.timesteps.len() != s.timesteps().len()
                        || r.start != b.timesteps.len()
                    {
                        f.fail(format!("base {b:?} and refiner {r:?} at {fraction} do not partition the schedule"));
                    }
                }
            }
            24 | 25 => {
                // The image latents are `m`, the noise `z`: of the latents' shape, or not.
                let mask_shape = random_mask_shape(rng, &shape);
                let mask: ArrayD<T> = random_mask(rng, &mask_shape, special);
                let next = rng.random_bool(0.8).then(|| random_timestep(rng, &c));
                let mut p = shape_problems.clone();
                p.extend_from_slice(&noise_problems);
                if !broadcasts(&mask_shape, &shape) {
                    p.push("ShapeMismatch");
                }
                if next.is_some_and(|t| t >= c.t()) {
                    p.push("TimestepOutOfRange");
                }
                f.context
                    .push_str(&format!(" mask{mask_shape:?} next {next:?}"));
                let mut latents = x.clone();
                let Some(r) = f.guard("blend_inpainting", || {
                    s.blend_inpainting(&mut latents, &m, &z, &mask, next)
                }) else {
                    continue;
                };
                if !f.expect("blend_inpainting", &r, &p) {
                    if !bits_equal(&latents, &x) {
                        f.fail("blend_inpainting changed the latents on error".into());
                    }
                } else if p.is_empty() {
                    let alpha_bar = next.and_then(|t| s.alphas_cumprod().get(t).copied());
                    let want = expected_blend(&x, &m, &z, &mask, alpha_bar);
                    check_blend(f, &latents, &want, [&x, &m, &z]);
                }
            }
            26 => {
                let alpha = random_alpha(rng);
                let mut p = shape_problems.clone();
                if !(0.0..=1.0).contains(&alpha) {
                    p.push("InvalidArgument");
                }
                if ndim == 0 {
                    p.push("TooFewAxes");
                }
                let Some(r) = f.guard("slerp", || slerp(&x, &m, alpha)) else {
                    continue;
                };
                match &r {
                    Err(e) => check_argument(f, "slerp", e, "alpha", alpha),
                    Ok(out) => check_slerp(f, out, &x, &m, alpha),
                }
                f.expect("slerp", &r, &p);
            }
            19 => {
                if let Some(out) = f.guard("scale_model_input", || s.scale_model_input(&x, t)) {
                    if !bits_equal(&out, &x) {
                        f.fail("scale_model_input is not the identity".into());
                    }
                }
            }
            _ => {
                let scale = pick(
                    rng,
                    &[
                        7.5,
                        1.0,
                        0.0,
                        -3.0,
                        1e30,
                        f64::NAN,
                        f64::INFINITY,
                        -f64::INFINITY,
                    ],
                );
                let rescale = pick(
                    rng,
                    &[
                        0.0,
                        0.0,
                        0.7,
                        1.0,
                        -0.0,
                        1.000_000_1,
                        -0.1,
                        f64::NAN,
                        f64::INFINITY,
                    ],
                );
                let mut p = vec![];
                if !scale.is_finite() || !(0.0..=1.0).contains(&rescale) {
                    p.push("InvalidGuidance");
                }
                let required = if rescale > 0.0 { 2 } else { 1 };
                if ndim < required {
                    p.push("TooFewAxes");
                }
                p.extend_from_slice(&shape_problems);
                if call == 20 {
                    let r = f.guard("classifier_free_guidance", || {
                        classifier_free_guidance(&x, &m, scale, rescale)
                    });
                    if let Some(r) = r {
                        if f.expect("classifier_free_guidance", &r, &p) {
                            if let Ok(out) = r {
                                if out.shape() != &shape[..] {
                                    f.fail(format!("guidance shape {:?}", out.shape()));
                                }
                            }
                        }
                    }
                } else {
                    let out_shape = maybe_other_shape(rng, &shape);
                    let mut out = random_values::<T>(rng, &out_shape, 0.0);
                    let before = out.clone();
                    if out_shape != shape {
                        p.push("ShapeMismatch");
                    }
                    let r = f.guard("classifier_free_guidance_into", || {
                        classifier_free_guidance_into(&x, &m, scale, rescale, &mut out)
                    });
                    if let Some(r) = r {
                        if !f.expect("classifier_free_guidance_into", &r, &p)
                            && !bits_equal(&out, &before)
                        {
                            f.fail("guidance wrote into the buffer on error".into());
                        }
                    }
                }
            }
        }
    }
}

/// One timestep per batch item, or sometimes one too many or too few.
fn batch_timesteps(rng: &mut StdRng, c: &Contract, batch: usize) -> Vec<usize> {
    let len = match rng.random_range(0..10) {
        0 => batch + 1,
        1 => batch.saturating_sub(1),
        2 => 0,
        _ => batch,
    };
    (0..len).map(|_| random_timestep(rng, c)).collect()
}

/// Step scalars hold no NaN, except in the two cases where the reference's own formulas give NaN
/// (pinned by `nan_scalars_arise_only_where_the_reference_gives_nan`).
fn check_scalars(f: &mut Failures, k: &StepScalars, eta: f64) {
    let all = [
        k.alpha_bar,
        k.alpha_bar_prev,
        k.sqrt_alpha_bar,
        k.sqrt_one_minus_alpha_bar,
        k.sqrt_alpha_bar_prev,
        k.sigma,
        k.direction,
    ];
    let zero_over_zero = k.alpha_bar == 1.0 && k.alpha_bar_prev == 1.0;
    let eta_overflows_f32 = (eta as f32).is_infinite();
    let explained = eta > 0.0 && (zero_over_zero || eta_overflows_f32);
    if all.iter().any(|v| v.is_nan()) && !explained {
        f.fail(format!("NaN in step scalars {k:?}"));
    }
}

/// Checks the outcome of a call that returns new arrays (`None` if it panicked); returns whether
/// it succeeded, as [`Failures::expect`].
fn check_output<T: DdimFloat>(
    f: &mut Failures,
    call: &str,
    r: Option<Result<DdimSchedulerOutput<T, IxDyn>, DdimError>>,
    allowed: &[&'static str],
    shape: &[usize],
) -> Option<bool> {
    let r = r?;
    let succeeded = f.expect(call, &r, allowed);
    if let Ok(out) = r {
        if out.prev_sample.shape() != shape || out.pred_original_sample.shape() != shape {
            f.fail(format!(
                "{call}: output shape {:?}",
                out.prev_sample.shape()
            ));
        }
    }
    Some(succeeded)
}

/// A step's generators draw nothing at eta = 0, and nothing when the step fails (every check
/// comes before any draw). `done` is whether the step succeeded (`None` if it panicked).
fn check_generators(
    f: &mut Failures,
    done: Option<bool>,
    eta: f64,
    before: &Generators,
    after: &Generators,
) {
    let Some(succeeded) = done else { return };
    let may_draw = succeeded && eta > 0.0;
    if !may_draw && after != before {
        let when = if succeeded { "at eta = 0" } else { "on error" };
        f.fail(format!("the step drew from its generator {when}"));
    }
}

// ---------------------------------------------------------------------------------------------
// The pipeline calls: partial schedules, the inpainting blend, slerp
// ---------------------------------------------------------------------------------------------

/// Values of a fraction argument (strength, denoising_end, denoising_start, slerp's alpha)
/// at and beyond the edges of its range.
const FRACTION_SPECIALS: [f64; 18] = [
    0.0,
    -0.0,
    1.0,
    0.5,
    0.8,
    0.29,
    1e-300,
    5e-324,
    -5e-324,
    1.0 - f64::EPSILON / 2.0,
    1.0 + f64::EPSILON,
    -1.0,
    2.0,
    f64::NAN,
    f64::INFINITY,
    f64::NEG_INFINITY,
    f64::MAX,
    f64::MIN_POSITIVE,
];

/// `x` and its two neighbouring doubles, for `x >= 0` (where a floor or a rounding flips).
fn around(rng: &mut StdRng, x: f64) -> f64 {
    let bits = x.to_bits();
    pick(
        rng,
        &[
            x,
            f64::from_bits(bits + 1),
            f64::from_bits(bits.saturating_sub(1)),
        ],
    )
}

/// An img2img strength: uniform, `k / n` for the schedule's `n` timesteps and its neighbours
/// (where `floor(n * strength)` changes), or a value at or beyond the edges.
fn random_strength(rng: &mut StdRng, c: &Contract) -> f64 {
    let n = c.timesteps.as_ref().map_or(10, Vec::len).max(1);
    match rng.random_range(0..6) {
        0 | 1 => rng.random_range(0.0..=1.0),
        2 | 3 => {
            let k = rng.random_range(0..=n.min(3)) + if rng.random() { 0 } else { n - n.min(3) };
            around(rng, k as f64 / n as f64)
        }
        _ => pick(rng, &FRACTION_SPECIALS),
    }
}

/// An SDXL fraction: uniform, one that puts the cut-off exactly on a timestep of the schedule
/// or half-way between two integers (where rounding half to even decides), or a value at or
/// beyond the edges.
fn random_fraction(rng: &mut StdRng, c: &Contract) -> f64 {
    let t = c.t() as f64;
    match rng.random_range(0..7) {
        0 | 1 => rng.random_range(0.0..1.0),
        2 | 3 => {
            let at = match &c.timesteps {
                Some(ts) if !ts.is_empty() && rng.random_bool(0.7) => pick(rng, ts),
                _ => rng.random_range(0..=c.t()),
            };
            around(rng, 1.0 - at as f64 / t)
        }
        4 => (rng.random_range(0..c.t()) as f64 + 0.5) / t,
        _ => pick(rng, &FRACTION_SPECIALS),
    }
}

fn random_alpha(rng: &mut StdRng) -> f64 {
    if rng.random_bool(0.4) {
        rng.random_range(0.0..=1.0)
    } else {
        pick(rng, &FRACTION_SPECIALS)
    }
}

/// A mask shape for latents of `shape`: one that broadcasts to it (some axes 1, leading axes
/// left out, 0-dimensional) or, sometimes, one that does not.
fn random_mask_shape(rng: &mut StdRng, shape: &[usize]) -> Vec<usize> {
    match rng.random_range(0..9) {
        0 | 1 => shape.to_vec(),
        2 | 3 => shape
            .iter()
            .map(|&d| if rng.random_bool(0.5) { 1 } else { d })
            .collect(),
        4 | 5 => {
            let drop = rng.random_range(0..=shape.len());
            shape[drop..]
                .iter()
                .map(|&d| if rng.random_bool(0.3) { 1 } else { d })
                .collect()
        }
        6 => vec![],
        7 => random_shape(rng),
        _ => {
            let mut s = shape.to_vec();
            match s.last_mut() {
                Some(d) if rng.random() => *d += 1,
                _ => s.insert(0, 2),
            }
            s
        }
    }
}

/// Mask values: 0, 1 or between, with a share `special` of NaN, infinite, huge and subnormal
/// values.
fn random_mask<T: DdimFloat>(rng: &mut StdRng, shape: &[usize], special: f64) -> ArrayD<T> {
    ArrayD::from_shape_simple_fn(IxDyn(shape), || {
        T::from_f64(match rng.random_range(0..4) {
            _ if rng.random_bool(special) => pick(rng, &SPECIAL_VALUES),
            0 => 0.0,
            1 => 1.0,
            _ => rng.random_range(0.0..=1.0),
        })
    })
}

/// Whether an array of shape `from` broadcasts to `to` as numpy broadcasts: aligned at the last
/// axis, each axis equal or 1, no more axes than `to`.
fn broadcasts(from: &[usize], to: &[usize]) -> bool {
    from.len() <= to.len()
        && from
            .iter()
            .rev()
            .zip(to.iter().rev())
            .all(|(&f, &t)| f == t || f == 1)
}

/// The inpainting blend, evaluated element by element in the element type:
/// `(1 - m) * known + m * x`, with `known = sqrt(ab) * image + sqrt(1 - ab) * noise` for
/// `ab = alphas_cumprod[t]` widened to the element type, or the image itself after the last
/// step; the mask indexed as numpy broadcasts it. The square roots go through `f64`, rounded
/// once to the element type: for `f32` that is `f32`'s own correctly rounded square root
/// (53 >= 2 * 24 + 2 bits make the double rounding innocuous).
fn expected_blend<T: TestFloat>(
    x: &ArrayD<T>,
    image: &ArrayD<T>,
    noise: &ArrayD<T>,
    mask: &ArrayD<T>,
    alpha_bar: Option<f32>,
) -> ArrayD<T> {
    let sqrt = |v: T| T::from_f64(v.to_f64().sqrt());
    let weights = alpha_bar.map(|ab| {
        let ab = T::from_f32(ab);
        (sqrt(ab), sqrt(T::ONE - ab))
    });
    let offset = x.ndim() - mask.ndim();
    let mut out = x.clone();
    for (index, v) in out.indexed_iter_mut() {
        let at: Vec<usize> = (0..mask.ndim())
            .map(|k| {
                if mask.shape()[k] == 1 {
                    0
                } else {
                    index[offset + k]
                }
            })
            .collect();
        let m = mask[IxDyn(&at)];
        let known = match weights {
            Some((sa, sb)) => sa * image[&index] + sb * noise[&index],
            None => image[&index],
        };
        *v = (T::ONE - m) * known + m * *v;
    }
    out
}

/// The blend's result against [`expected_blend`]: bit for bit, and NaN where it is NaN (Rust
/// leaves the sign and payload of a NaN produced by arithmetic unspecified).
fn check_blend<T: TestFloat>(
    f: &mut Failures,
    got: &ArrayD<T>,
    want: &ArrayD<T>,
    [x, image, noise]: [&ArrayD<T>; 3],
) {
    let found = got
        .iter()
        .zip(want.iter())
        .position(|(&g, &w)| !(g.bits() == w.bits() || (g.is_nan() && w.is_nan())));
    if let Some(i) = found.or((got.shape() != want.shape()).then_some(0)) {
        let at = |a: &ArrayD<T>| a.iter().nth(i).map(|v| v.to_f64());
        f.fail(format!(
            "blend_inpainting element {i} is {:?}, expected {:?} (latents {:?}, image {:?}, noise {:?})",
            at(got),
            at(want),
            at(x),
            at(image),
            at(noise)
        ));
    }
}

/// A partial schedule against the model: `expected` is the range of the schedule `ts` it
/// should be, or the errors allowed. `what` is the call, its argument's name and value, which
/// an `InvalidArgument` or `NoStepsLeft` must repeat.
fn check_partial(
    f: &mut Failures,
    (call, name, value): (&str, &str, f64),
    r: &Result<PartialSchedule<'_>, DdimError>,
    expected: Result<std::ops::Range<usize>, Vec<&'static str>>,
    ts: &[usize],
) {
    let allowed = expected.clone().err().unwrap_or_default();
    f.expect(call, r, &allowed);
    match (r, expected) {
        (Ok(run), Ok(range)) => {
            let want = ts.get(range.clone()).unwrap_or(&[]);
            if run.timesteps != want
                || run.start != range.start
                || Some(&run.first()) != want.first()
            {
                f.fail(format!(
                    "{call}({value}) gave {run:?} (first {}), expected timesteps[{range:?}] of {} = {want:?}",
                    run.first(),
                    ts.len()
                ));
            }
        }
        (Err(e), _) => check_argument(f, call, e, name, value),
        _ => {}
    }
}

/// An `InvalidArgument` or `NoStepsLeft` names the argument and holds its value, bit for bit.
fn check_argument(f: &mut Failures, call: &str, err: &DdimError, name: &str, value: f64) {
    if let DdimError::InvalidArgument {
        name: n, value: v, ..
    }
    | DdimError::NoStepsLeft { name: n, value: v } = err
    {
        if *n != name || v.to_bits() != value.to_bits() {
            f.fail(format!("{call}: {err:?} should name {name} = {value:?}"));
        }
    }
}

/// slerp's result: of the inputs' shape, exactly `a` at alpha 0 and `b` at 1, and finite
/// between where the inputs are finite.
fn check_slerp<T: TestFloat>(
    f: &mut Failures,
    out: &ArrayD<T>,
    a: &ArrayD<T>,
    b: &ArrayD<T>,
    alpha: f64,
) {
    let finite = |x: &ArrayD<T>| x.iter().all(|v| v.to_f64().is_finite());
    let problem = if out.shape() != a.shape() {
        Some("a shape other than the inputs'")
    } else if alpha == 0.0 && !bits_equal(out, a) {
        Some("not `a` at alpha 0")
    } else if alpha == 1.0 && !bits_equal(out, b) {
        Some("not `b` at alpha 1")
    } else if finite(a) && finite(b) && !finite(out) {
        Some("non-finite values from finite inputs")
    } else {
        None
    };
    if let Some(problem) = problem {
        let flat = |x: &ArrayD<T>| x.iter().map(|v| v.to_f64()).collect::<Vec<_>>();
        f.fail(format!(
            "slerp at alpha {alpha:?}: {problem}: {:?} from a {:?} and b {:?}",
            flat(out),
            flat(a),
            flat(b)
        ));
    }
}

/// Which keys of a config built in code are out of their documented range (what
/// `DdimConfig::validate` must name before it looks at the schedule).
fn field_problems(c: &DdimConfig) -> Vec<String> {
    let mut keys = vec![];
    let t = c.num_train_timesteps;
    if t == 0 || t > MAX_TRAIN_TIMESTEPS {
        keys.push("num_train_timesteps".to_string());
    }
    for (key, v) in [("beta_start", c.beta_start), ("beta_end", c.beta_end)] {
        if !v.is_finite() {
            keys.push(key.into());
        }
    }
    if let Some(b) = &c.trained_betas {
        if b.len() != t {
            keys.push("trained_betas".into());
        }
        if let Some(i) = b.iter().position(|v| !(0.0..1.0).contains(v)) {
            keys.push(format!("trained_betas[{i}]"));
        }
    }
    if !(0.0..=1.0).contains(&c.dynamic_thresholding_ratio) {
        keys.push("dynamic_thresholding_ratio".into());
    }
    for (key, v) in [
        ("clip_sample_range", c.clip_sample_range),
        ("sample_max_value", c.sample_max_value),
    ] {
        if !(v.is_finite() && v > 0.0) {
            keys.push(key.into());
        }
    }
    if c.rescale_betas_zero_snr && t < 2 {
        keys.push("num_train_timesteps".into());
    }
    keys
}

fn hostile_f64(rng: &mut StdRng) -> f64 {
    if rng.random_bool(0.5) {
        pick(rng, &SPECIAL_VALUES)
    } else {
        pick(rng, &[-1.0, 0.5, 1.0, 0.0001, 0.02, 1.5, 1e-9])
    }
}

/// A config built in code, where NaN and infinities are possible.
fn struct_config(rng: &mut StdRng) -> DdimConfig {
    let t = pick(
        rng,
        &[0, 1, 2, 7, 1000, MAX_TRAIN_TIMESTEPS + 1, usize::MAX],
    );
    let len = if rng.random_bool(0.7) {
        t.min(2000)
    } else {
        rng.random_range(0..5)
    };
    DdimConfig {
        num_train_timesteps: t,
        beta_start: if rng.random_bool(0.3) {
            hostile_f64(rng)
        } else {
            0.0001
        },
        beta_end: if rng.random_bool(0.3) {
            hostile_f64(rng)
        } else {
            0.02
        },
        beta_schedule: pick(
            rng,
            &[
                BetaSchedule::Linear,
                BetaSchedule::ScaledLinear,
                BetaSchedule::SquaredcosCapV2,
            ],
        ),
        trained_betas: rng.random_bool(0.3).then(|| {
            (0..len)
                .map(|_| {
                    if rng.random_bool(0.01) {
                        hostile_f64(rng)
                    } else {
                        rng.random_range(0.0..0.02)
                    }
                })
                .collect()
        }),
        dynamic_thresholding_ratio: if rng.random_bool(0.3) {
            hostile_f64(rng)
        } else {
            0.9
        },
        clip_sample_range: if rng.random_bool(0.3) {
            hostile_f64(rng)
        } else {
            1.0
        },
        sample_max_value: if rng.random_bool(0.3) {
            hostile_f64(rng)
        } else {
            1.0
        },
        rescale_betas_zero_snr: rng.random(),
        steps_offset: pick(rng, &[0, 1, usize::MAX]),
        ..DdimConfig::default()
    }
}

/// `ignored_keys` and `from_json_str_strict` on one text, against a model: `ignored_keys` is a
/// `ConfigParse` error exactly when the text is not a JSON object, and otherwise lists its keys
/// other than DDIM's and the private `_` ones, sorted and once each, each saying whether a
/// diffusers scheduler knows it and, if none does, the closest DDIM key at most two edits away.
/// `from_json_str_strict` gives `ignored_keys`' error, then `UnknownConfigKey` for the first
/// unknown key, then what `from_json_str` gives (`lenient`).
fn check_key_report(f: &mut Failures, text: &str, lenient: &Result<DdimConfig, DdimError>) {
    let Some(ignored) = f.guard("ignored_keys", || DdimConfig::ignored_keys(text)) else {
        return;
    };
    let Some(strict) = f.guard("from_json_str_strict", || {
        DdimConfig::from_json_str_strict(text)
    }) else {
        return;
    };
    let keys = json_object_keys(text);
    if keys.is_none() && matches!(lenient, Ok(_) | Err(DdimError::InvalidConfig { .. })) {
        f.fail("the test's JSON reader refuses a text that from_json_str reads".into());
    }
    let same_error = |a: &DdimError, b: &Result<DdimConfig, DdimError>| matches!(b, Err(b) if b.to_string() == a.to_string());
    let problems = if keys.is_some() {
        vec![]
    } else {
        vec!["ConfigParse"]
    };
    f.expect("ignored_keys", &ignored, &problems);
    let (Ok(list), Some(keys)) = (&ignored, keys) else {
        if let Err(e) = &ignored {
            if !same_error(e, &strict) {
                f.fail(format!(
                    "from_json_str_strict {strict:?} after ignored_keys {e:?}"
                ));
            }
            f.expect("from_json_str_strict", &strict, &["ConfigParse"]);
        }
        return;
    };
    let expected: BTreeSet<&str> = keys
        .iter()
        .map(String::as_str)
        .filter(|k| !k.starts_with('_') && !REAL_KEYS.contains(k))
        .collect();
    let reported: Vec<&str> = list.iter().map(|k| k.key.as_str()).collect();
    if reported != expected.into_iter().collect::<Vec<_>>() {
        f.fail(format!(
            "ignored_keys reported {reported:?} of the keys {keys:?}"
        ));
    }
    for k in list {
        let in_vocabulary = JUNK_KEYS.contains(&k.key.as_str()) || k.key == "x";
        let known = DIFFUSERS_JUNK_KEYS.contains(&k.key.as_str());
        let candidates = typo_candidates(&k.key);
        let good = if k.known_to_diffusers {
            k.did_you_mean.is_none() && (known || !in_vocabulary)
        } else {
            !known
                && match k.did_you_mean {
                    None => candidates.is_empty(),
                    Some(m) => candidates.contains(&m),
                }
        };
        if !good {
            f.fail(format!(
                "ignored_keys: {k:?} (known to diffusers: {}; closest DDIM keys {candidates:?})",
                if in_vocabulary {
                    known.to_string()
                } else {
                    "?".into()
                }
            ));
        }
    }
    let allowed = match (list.iter().find(|k| !k.known_to_diffusers), lenient) {
        (Some(unknown), _) => {
            let named = matches!(&strict, Err(DdimError::UnknownConfigKey { key, did_you_mean })
                if *key == unknown.key && *did_you_mean == unknown.did_you_mean);
            if strict.is_err() && !named {
                f.fail(format!(
                    "from_json_str_strict {strict:?}, expected {unknown:?} named"
                ));
            }
            vec!["UnknownConfigKey"]
        }
        (None, Ok(config)) => {
            if strict.as_ref().is_ok_and(|c| c != config) {
                f.fail(format!(
                    "from_json_str_strict read {strict:?}, from_json_str {config:?}"
                ));
            }
            vec![]
        }
        (None, Err(e)) => {
            if !same_error(e, &strict) {
                f.fail(format!(
                    "from_json_str_strict {strict:?}, from_json_str {e:?}"
                ));
            }
            vec![kind(e)]
        }
    };
    f.expect("from_json_str_strict", &strict, &allowed);
}

/// Thousands of random config texts and, for those that load, random calls of every public
/// method with hostile arguments: no panic, and every outcome as the contract says.
#[test]
fn random_configs_and_calls_never_panic_and_fail_as_documented() {
    const CASES: usize = 3000;
    let mut f = Failures::new();
    let dir = ScratchDir::new("hostile-configs");
    let (mut parsed, mut refused) = (0, 0);
    for case in 0..CASES {
        let mut rng = StdRng::seed_from_u64(SEED + case as u64);
        let text = config_text(&mut rng);
        f.context = format!(
            "case {case}: text {:?}",
            text.chars().take(300).collect::<String>()
        );
        let Some(r) = f.guard("from_json_str", || DdimConfig::from_json_str(&text)) else {
            continue;
        };
        // The strict loader validates the config again, which costs time for huge tables:
        // most of their texts skip the key report.
        let huge = matches!(&r, Ok(c) if c.num_train_timesteps > 100_000);
        if !huge || case % 10 == 0 {
            check_key_report(&mut f, &text, &r);
        }
        // Every 20th text also goes through a file and from_pretrained.
        if case % 20 == 0 {
            let file = dir.path().join("scheduler_config.json");
            std::fs::write(&file, &text).expect("write");
            let via_file = f.guard("from_pretrained", || {
                DdimScheduler::from_pretrained(dir.path())
            });
            if let Some(via_file) = via_file {
                let same = match (&r, &via_file) {
                    (Ok(c), Ok(s)) => s.config() == c,
                    (Err(a), Err(b)) => a.to_string() == b.to_string(),
                    _ => false,
                };
                if !same {
                    f.fail(format!(
                        "from_pretrained {via_file:?} vs from_json_str {r:?}"
                    ));
                }
            }
        }
        let config = match r {
            Ok(config) => config,
            Err(e) => {
                refused += 1;
                if let Err(problem) = check_message(&e) {
                    f.fail(format!("from_json_str: {problem}"));
                }
                if !matches!(kind(&e), "ConfigParse" | "InvalidConfig") {
                    f.fail(format!("from_json_str gave {e:?}"));
                }
                continue;
            }
        };
        parsed += 1;
        if config.validate().is_err() {
            f.fail("a loaded config does not validate".into());
        }
        match config
            .to_json_string()
            .map(|j| DdimConfig::from_json_str(&j))
        {
            Ok(Ok(back)) if back == config => {}
            other => f.fail(format!("round trip failed: {other:?}")),
        }
        // Huge tables cost time; most cases exercise small ones.
        if config.num_train_timesteps <= 100_000 || case % 10 == 0 {
            if case % 2 == 0 {
                exercise::<f32>(&mut f, &mut rng, config, 16);
            } else {
                exercise::<f64>(&mut f, &mut rng, config, 16);
            }
        }
    }
    // Configs built in code: NaN and infinities where JSON cannot put them.
    for case in 0..CASES / 3 {
        let mut rng = StdRng::seed_from_u64(SEED ^ ((case as u64) << 20));
        let config = struct_config(&mut rng);
        f.context = format!("struct case {case}: {config:?}");
        let problems = field_problems(&config);
        let Some(r) = f.guard("validate", || config.validate()) else {
            continue;
        };
        let new = f.guard("new", || DdimScheduler::new(config.clone()));
        let json = f.guard("to_json_string", || config.to_json_string());
        if let Err(e) = &r {
            if let Err(problem) = check_message(e) {
                f.fail(problem);
            }
        }
        match (&r, problems.is_empty()) {
            (Ok(()), false) => f.fail(format!("validate accepted {problems:?}")),
            (Err(DdimError::InvalidConfig { key, .. }), false) if !problems.contains(key) => f
                .fail(format!(
                    "validate named {key}, expected one of {problems:?}"
                )),
            (Err(e), _) if kind(e) != "InvalidConfig" => f.fail(format!("validate gave {e:?}")),
            _ => {}
        }
        if new.as_ref().map(|n| n.is_ok()) != Some(r.is_ok()) {
            f.fail(format!("new disagrees with validate: {new:?}"));
        }
        if json.as_ref().map(|j| j.is_ok()) != Some(r.is_ok()) {
            f.fail(format!("to_json_string disagrees with validate: {json:?}"));
        }
        if r.is_ok() && config.num_train_timesteps <= 2000 {
            exercise::<f32>(&mut f, &mut rng, config, 6);
        }
    }
    f.assert_empty(CASES);
    // The generator must reach both outcomes often.
    assert!(
        parsed > CASES / 5 && refused > CASES / 5,
        "{parsed} parsed, {refused} refused"
    );
    // Every destination succeeds with every noise source, and refuses eta > 0 without one.
    for call in ["step_with", "step_into", "step_in_place", "step_batch"] {
        for source in ["None", "Given", "Rng", "Torch"] {
            let ok = format!("{call}/{source} Ok");
            assert!(f.outcomes.contains_key(&ok), "never reached: {ok}");
        }
        let missing = format!("{call}/None MissingNoise");
        assert!(
            f.outcomes.contains_key(&missing),
            "never reached: {missing}"
        );
    }
    // The pipeline calls and the key report reach every outcome.
    let partial = ["Ok", "NoStepsLeft", "InvalidArgument", "TimestepsNotSet"];
    let expected: [(&str, &[&str]); 7] = [
        ("img2img_timesteps", &partial),
        ("base_timesteps", &partial),
        ("refiner_timesteps", &partial),
        (
            "blend_inpainting",
            &["Ok", "ShapeMismatch", "TimestepOutOfRange"],
        ),
        (
            "slerp",
            &["Ok", "InvalidArgument", "ShapeMismatch", "TooFewAxes"],
        ),
        ("ignored_keys", &["Ok", "ConfigParse"]),
        (
            "from_json_str_strict",
            &["Ok", "UnknownConfigKey", "ConfigParse", "InvalidConfig"],
        ),
    ];
    let mut new_calls = 0;
    for (call, outcomes) in expected {
        for outcome in outcomes {
            let key = format!("{call} {outcome}");
            assert!(f.outcomes.contains_key(&key), "never reached: {key}");
        }
        new_calls += f
            .outcomes
            .iter()
            .filter(|(k, _)| k.split(' ').next() == Some(call))
            .map(|(_, n)| n)
            .sum::<usize>();
    }
    eprintln!("{new_calls} checked calls of the pipeline functions and the key report");
    for (outcome, n) in &f.outcomes {
        let call = outcome.split(' ').next().unwrap_or_default();
        if expected.iter().any(|&(c, _)| c == call) {
            eprintln!("  {outcome}: {n}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Specific messages
// ---------------------------------------------------------------------------------------------

fn config_error(json: &str) -> DdimError {
    match DdimConfig::from_json_str(json) {
        Ok(c) => panic!("{json} was accepted as {c:?}"),
        Err(e) => {
            check_message(&e).unwrap_or_else(|p| panic!("{json}: {p}"));
            e
        }
    }
}

fn assert_mentions(err: &DdimError, parts: &[&str]) {
    let message = err.to_string();
    for part in parts {
        assert!(
            message.contains(part),
            "{message:?} should mention {part:?}"
        );
    }
}

#[test]
fn config_errors_name_the_key_the_value_and_what_is_allowed() {
    let cases: [(&str, &str, &[&str]); 12] = [
        (
            r#"{"num_train_timesteps": 0}"#,
            "InvalidConfig",
            &["num_train_timesteps", "0", "between 1 and 1000000"],
        ),
        (
            r#"{"num_train_timesteps": 18446744073709551615}"#,
            "InvalidConfig",
            &["num_train_timesteps", "18446744073709551615"],
        ),
        (
            r#"{"num_train_timesteps": -5}"#,
            "ConfigParse",
            &["`-5`", "usize", "line 1"],
        ),
        (
            r#"{"num_train_timesteps": 1e30}"#,
            "ConfigParse",
            &["1e+30", "usize"],
        ),
        (
            r#"{"beta_schedule": "cosine"}"#,
            "ConfigParse",
            &["`cosine`", "linear", "scaled_linear", "squaredcos_cap_v2"],
        ),
        (
            r#"{"clip_sample": "yes"}"#,
            "ConfigParse",
            &["\"yes\"", "boolean"],
        ),
        (
            r#"{"trained_betas": [0.1, 0.2]}"#,
            "InvalidConfig",
            &["trained_betas", "2 values", "(1000)"],
        ),
        (
            r#"{"num_train_timesteps": 3, "trained_betas": [0.1, 1.5, 0.2]}"#,
            "InvalidConfig",
            &["trained_betas[1]", "1.5", "[0, 1)"],
        ),
        (
            r#"{"dynamic_thresholding_ratio": 1.5}"#,
            "InvalidConfig",
            &["dynamic_thresholding_ratio", "1.5"],
        ),
        (
            r#"{"clip_sample_range": 0}"#,
            "InvalidConfig",
            &["clip_sample_range", "> 0"],
        ),
        (
            r#"{"num_train_timesteps": 1, "rescale_betas_zero_snr": true}"#,
            "InvalidConfig",
            &["num_train_timesteps", "rescale_betas_zero_snr"],
        ),
        (
            r#"{"num_train_timesteps": 10, "num_train_timesteps": 20}"#,
            "ConfigParse",
            &["duplicate field", "num_train_timesteps"],
        ),
    ];
    for (json, expected_kind, parts) in cases {
        let err = config_error(json);
        assert_eq!(kind(&err), expected_kind, "{json}: {err}");
        assert_mentions(&err, parts);
    }
    // A config that is not an object, and nesting far beyond any recursion limit under a junk
    // key: errors or ignored, never a stack overflow.
    assert_mentions(&config_error("[]"), &["expected a JSON object", "`[`"]);
    let deep = format!("{{\"x\": {}{}}}", "[".repeat(200_000), "]".repeat(200_000));
    assert!(DdimConfig::from_json_str(&deep).is_ok());
    let deep = format!(
        "{{\"trained_betas\": {}{}}}",
        "[".repeat(200_000),
        "]".repeat(200_000)
    );
    assert_eq!(kind(&config_error(&deep)), "ConfigParse");
}

/// A key holding a JSON value of the wrong type for an enum (null, a number, a bool, a list)
/// should name the value given and the allowed strings, as a wrong string does. serde_json's
/// message for these is "expected value", which names neither (and a value was given).
#[test]
fn a_non_string_enum_value_is_named_with_the_allowed_strings() {
    for json in [
        r#"{"prediction_type": null}"#,
        r#"{"beta_schedule": 5}"#,
        r#"{"timestep_spacing": true}"#,
        r#"{"prediction_type": ["epsilon"]}"#,
    ] {
        let err = config_error(json);
        let message = err.to_string();
        assert!(
            !message.ends_with("expected value")
                && ["epsilon", "linear", "leading"]
                    .iter()
                    .any(|allowed| message.contains(allowed)),
            "{json}: {message}"
        );
    }
}

#[test]
fn call_errors_name_the_value_given() {
    let mut s = DdimScheduler::new(DdimConfig::default()).expect("default");
    let x = ArrayD::<f32>::zeros(IxDyn(&[2, 3]));
    assert_eq!(kind(&s.step(&x, 10, &x).unwrap_err()), "TimestepsNotSet");
    let err = s.set_timesteps(usize::MAX).unwrap_err();
    assert_mentions(&err, &["18446744073709551615", "1000"]);
    let err = s.set_timesteps(0).unwrap_err();
    assert_mentions(&err, &["num_inference_steps is 0"]);
    s.set_timesteps(10).expect("10 steps");

    let err = s.step(&x, usize::MAX, &x).unwrap_err();
    assert_mentions(&err, &["timestep 18446744073709551615", "0..=999"]);
    let err = s.step(&x, 1000, &x).unwrap_err();
    assert_mentions(&err, &["timestep 1000", "0..=999"]);

    let other = ArrayD::<f32>::zeros(IxDyn(&[3, 2]));
    let err = s.step(&other, 500, &x).unwrap_err();
    assert_mentions(
        &err,
        &["model_output has shape [3, 2]", "sample has shape [2, 3]"],
    );
    let given = |eta, noise| StepOptions {
        eta,
        noise: NoiseSource::given(noise),
        use_clipped_model_output: false,
    };
    let err = s.step_with(&x, 500, &x, given(0.0, &other)).unwrap_err();
    assert_mentions(&err, &["variance_noise has shape [3, 2]"]);

    for (eta, text) in [
        (f64::NAN, "eta is NaN"),
        (-1.0, "eta is -1"),
        (f64::INFINITY, "eta is inf"),
    ] {
        let err = s.step_with(&x, 500, &x, given(eta, &x)).unwrap_err();
        assert_eq!(kind(&err), "InvalidEta");
        assert_mentions(&err, &[text, ">= 0"]);
    }
    let no_noise = StepOptions {
        eta: 0.5,
        ..StepOptions::default()
    };
    let err = s.step_with(&x, 500, &x, no_noise).unwrap_err();
    assert_eq!(kind(&err), "MissingNoise");
    assert_mentions(&err, &["eta is 0.5", "NoiseSource", "eta = 0"]);

    let err = s
        .step_batch(&x, &[900, 800, 700], &x, StepOptions::default())
        .unwrap_err();
    assert_mentions(&err, &["3 timesteps", "batch of 2"]);
    let scalar = ArrayD::<f32>::zeros(IxDyn(&[]));
    let err = s.add_noise(&scalar, &scalar, &[]).unwrap_err();
    assert_mentions(&err, &["at least 1 axes", "has 0"]);

    let err = s.set_custom_timesteps(&[999, 999]).unwrap_err();
    assert_mentions(&err, &["timesteps[1] is 999", "strictly decreasing"]);
    let err = s.set_custom_timesteps(&[usize::MAX]).unwrap_err();
    assert_mentions(&err, &["timesteps[0] is 18446744073709551615", "0..=999"]);
    assert_mentions(&s.set_custom_timesteps(&[]).unwrap_err(), &["empty"]);
    s.set_custom_timesteps(&[999, 500, 0]).expect("custom");
    let err = s.step(&x, 501, &x).unwrap_err();
    assert_mentions(&err, &["timestep 501 is not on the current schedule"]);

    let thresholding = DdimConfig {
        thresholding: true,
        ..DdimConfig::default()
    };
    let mut t = DdimScheduler::new(thresholding).expect("thresholding");
    t.set_timesteps(10).expect("10 steps");
    let line = ArrayD::<f32>::zeros(IxDyn(&[4]));
    let err = t.step(&line, 500, &line).unwrap_err();
    assert_mentions(&err, &["dynamic thresholding", "at least 2 axes", "has 1"]);

    let err = classifier_free_guidance(&x, &x, f64::NAN, 0.0).unwrap_err();
    assert_mentions(&err, &["guidance_scale is NaN"]);
    let err = classifier_free_guidance(&x, &x, 7.5, 1.5).unwrap_err();
    assert_mentions(&err, &["guidance_rescale is 1.5", "between 0 and 1"]);
    let err = classifier_free_guidance(&line, &line, 7.5, 0.7).unwrap_err();
    assert_mentions(&err, &["guidance rescale", "has 1"]);

    let dir = ScratchDir::new("hostile-bad-utf8");
    let file = dir.path().join("scheduler_config.json");
    std::fs::write(&file, [b'{', 0xff, 0xfe, b'}']).expect("write");
    let err = DdimScheduler::from_pretrained(dir.path()).unwrap_err();
    assert_eq!(kind(&err), "Io");
    assert_mentions(&err, &["scheduler_config.json", "UTF-8"]);
    let missing = std::env::temp_dir().join("ddim-hostile-no-such-model");
    let err = DdimScheduler::from_pretrained(&missing).unwrap_err();
    assert_eq!(kind(&err), "ConfigNotFound");
    assert_mentions(
        &err,
        &["ddim-hostile-no-such-model", "scheduler_config.json"],
    );
}

/// The errors of the pipeline calls, slerp and the strict loader name the value given.
#[test]
fn pipeline_and_key_errors_name_the_value_given() {
    let mut s = DdimScheduler::new(DdimConfig::default()).expect("default");
    for err in [
        s.img2img_timesteps(0.5).unwrap_err(),
        s.base_timesteps(0.5).unwrap_err(),
        s.refiner_timesteps(0.5).unwrap_err(),
    ] {
        assert_eq!(kind(&err), "TimestepsNotSet");
        assert_mentions(&err, &["set_timesteps"]);
    }
    s.set_timesteps(10).expect("10 steps"); // 900, 800, ..., 0
    for (strength, text) in [
        (1.5, "strength is 1.5"),
        (-0.25, "strength is -0.25"),
        (f64::NAN, "strength is NaN"),
        (f64::NEG_INFINITY, "strength is -inf"),
    ] {
        let err = s.img2img_timesteps(strength).unwrap_err();
        assert_eq!(kind(&err), "InvalidArgument");
        assert_mentions(&err, &[text, "between 0 and 1"]);
    }
    // 10 * 0.05 = 0.5 steps.
    let err = s.img2img_timesteps(0.05).unwrap_err();
    assert_eq!(kind(&err), "NoStepsLeft");
    assert_mentions(&err, &["strength 0.05"]);
    for (fraction, text) in [(0.0, "is 0"), (1.0, "is 1"), (f64::NAN, "is NaN")] {
        let err = s.base_timesteps(fraction).unwrap_err();
        assert_eq!(kind(&err), "InvalidArgument");
        assert_mentions(
            &err,
            &[&format!("denoising_end {text}"), "strictly between 0 and 1"],
        );
        let err = s.refiner_timesteps(fraction).unwrap_err();
        assert_eq!(kind(&err), "InvalidArgument");
        assert_mentions(&err, &[&format!("denoising_start {text}")]);
    }
    // Cut-off 950: no timestep at or above it; cut-off round(0.1) = 0: none below it.
    let err = s.base_timesteps(0.05).unwrap_err();
    assert_eq!(kind(&err), "NoStepsLeft");
    assert_mentions(&err, &["denoising_end 0.05"]);
    let err = s.refiner_timesteps(0.9999).unwrap_err();
    assert_eq!(kind(&err), "NoStepsLeft");
    assert_mentions(&err, &["denoising_start 0.9999"]);

    let x = ArrayD::<f32>::zeros(IxDyn(&[2, 3]));
    let err = slerp(&x, &x, 1.5).unwrap_err();
    assert_mentions(&err, &["alpha is 1.5", "between 0"]);
    let err = slerp(&x, &x, f64::NAN).unwrap_err();
    assert_mentions(&err, &["alpha is NaN"]);
    let scalar = ArrayD::<f32>::zeros(IxDyn(&[]));
    assert_mentions(&slerp(&scalar, &scalar, 0.5).unwrap_err(), &["has 0"]);

    let mut latents = x.clone();
    let err = s
        .blend_inpainting(&mut latents, &x, &x, &x, Some(1000))
        .unwrap_err();
    assert_mentions(&err, &["timestep 1000", "0..=999"]);
    let mask = ArrayD::<f32>::zeros(IxDyn(&[1, 5]));
    let err = s
        .blend_inpainting(&mut latents, &x, &x, &mask, None)
        .unwrap_err();
    assert_mentions(&err, &["mask", "[1, 5]", "latents has shape [2, 3]"]);

    let err =
        DdimConfig::from_json_str_strict(r#"{"prediction_typ": "v_prediction"}"#).unwrap_err();
    assert_mentions(
        &err,
        &["`prediction_typ`", "did you mean `prediction_type`?"],
    );
    let err = DdimConfig::from_json_str_strict(r#"{"bt_ed": 1}"#).unwrap_err();
    assert_mentions(&err, &["`bt_ed`"]);
    assert!(!err.to_string().contains("did you mean"), "{err}");
}

/// `ignored_keys` reads every JSON object, whatever its values hold (its documentation: "the
/// values are not checked"), and `from_json_str_strict` then names the unknown key. These texts
/// load with `from_json_str`, which skips the values of keys it does not use; reading them into
/// `serde_json::Value` would refuse nesting deeper than 128, a number beyond `f64` and a lone
/// surrogate, so `ignored_keys` skips the values too (a regression test of that bug).
#[test]
fn ignored_keys_reads_every_json_object() {
    let deep = format!("{{\"x\": {}{}}}", "[".repeat(200), "]".repeat(200));
    for text in [deep.as_str(), r#"{"x": 1e400}"#, r#"{"x": "\ud800"}"#] {
        assert!(DdimConfig::from_json_str(text).is_ok(), "{text}");
        let ignored = DdimConfig::ignored_keys(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        let keys: Vec<&str> = ignored.iter().map(|k| k.key.as_str()).collect();
        assert_eq!(keys, ["x"], "{text}");
        let err = DdimConfig::from_json_str_strict(text).unwrap_err();
        assert_eq!(kind(&err), "UnknownConfigKey", "{text}: {err}");
    }
    let known = r#"{"skip_prk_steps": 1e400}"#;
    assert!(DdimConfig::from_json_str(known).is_ok());
    assert!(DdimConfig::from_json_str_strict(known).is_ok());
}

/// An empty batch is checked like any other call: eta = NaN, eta > 0 without a noise source, or
/// a step before `set_timesteps`, is an error even with zero items, as it is for `step` on empty
/// arrays.
#[test]
fn an_empty_batch_is_checked_for_eta_and_timesteps() {
    let mut s = DdimScheduler::new(DdimConfig::default()).expect("default");
    let empty = ArrayD::<f32>::zeros(IxDyn(&[0, 3]));
    let before = s
        .step_batch(&empty, &[], &empty, StepOptions::default())
        .unwrap_err();
    assert_eq!(kind(&before), "TimestepsNotSet");
    assert_eq!(
        kind(&s.step(&empty, 0, &empty).unwrap_err()),
        "TimestepsNotSet"
    );
    s.set_timesteps(10).expect("valid");
    let nan_eta = StepOptions {
        eta: f64::NAN,
        noise: NoiseSource::given(&empty),
        use_clipped_model_output: false,
    };
    let bad_eta = s.step_batch(&empty, &[], &empty, nan_eta).unwrap_err();
    assert_eq!(kind(&bad_eta), "InvalidEta");
    let no_noise = StepOptions {
        eta: 1.0,
        ..StepOptions::default()
    };
    let missing = s.step_batch(&empty, &[], &empty, no_noise).unwrap_err();
    assert_eq!(kind(&missing), "MissingNoise");
    let out = s
        .step_batch(&empty, &[], &empty, StepOptions::default())
        .expect("empty batch");
    assert_eq!(out.prev_sample.shape(), &[0, 3]);
}

// ---------------------------------------------------------------------------------------------
// NaN and infinity policy: propagate as the reference does
// ---------------------------------------------------------------------------------------------

/// diffusers' `DDIMScheduler.step`, element by element, in its order of operations, with the
/// scalars of `step_scalars` (whose parity the golden tests check). Dynamic thresholding sorts
/// `|x0|` (the crate selects) and interpolates as `torch.quantile` does.
fn reference_step<T: TestFloat>(
    config: &DdimConfig,
    k: &StepScalars,
    options: CaseOptions,
    m: &ArrayD<T>,
    x: &ArrayD<T>,
    z: &ArrayD<T>,
) -> (ArrayD<T>, ArrayD<T>) {
    let w = T::from_f32;
    let (sa, sb, sap) = (
        w(k.sqrt_alpha_bar),
        w(k.sqrt_one_minus_alpha_bar),
        w(k.sqrt_alpha_bar_prev),
    );
    let (direction, sigma) = (w(k.direction), w(k.sigma));
    let mut x0 = m.clone();
    let mut eps = m.clone();
    for ((x0, eps), (&m, &x)) in x0
        .iter_mut()
        .zip(eps.iter_mut())
        .zip(m.iter().zip(x.iter()))
    {
        (*x0, *eps) = match config.prediction_type {
            PredictionType::Epsilon => ((x - sb * m) / sa, m),
            PredictionType::Sample => (m, (x - sa * m) / sb),
            _ => (sa * x - sb * m, sa * m + sb * x),
        };
    }
    let torch_clamp = |v: T, lo: T, hi: T| {
        if v.is_nan() || lo.is_nan() || hi.is_nan() {
            T::from_f64(f64::NAN)
        } else if v < lo {
            lo
        } else if v > hi {
            hi
        } else {
            v
        }
    };
    if config.thresholding {
        for mut item in x0.axis_iter_mut(Axis(0)) {
            let mut abs: Vec<T> = item.iter().map(|&v| magnitude(v)).collect();
            let s = if abs.iter().any(|v| v.is_nan()) {
                T::from_f64(f64::NAN)
            } else if abs.is_empty() {
                T::ONE
            } else {
                abs.sort_by(|a, b| a.to_f64().total_cmp(&b.to_f64()));
                let rank = T::from_f64(config.dynamic_thresholding_ratio).to_f64()
                    * (abs.len() - 1) as f64;
                let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
                let weight = T::from_f64(rank - lo as f64);
                let (start, end) = (abs[lo], abs[hi]);
                let q = if magnitude(weight) < T::from_f64(0.5) {
                    weight.fma(end - start, start)
                } else {
                    (weight - T::ONE).fma(end - start, end)
                };
                torch_clamp(q, T::ONE, T::from_f64(config.sample_max_value))
            };
            item.mapv_inplace(|v| torch_clamp(v, -s, s) / s);
        }
    } else if config.clip_sample {
        let r = T::from_f64(config.clip_sample_range);
        x0.mapv_inplace(|v| torch_clamp(v, -r, r));
    }
    let mut prev = x0.clone();
    for (((prev, &x0), eps), (&x, &z)) in prev
        .iter_mut()
        .zip(x0.iter())
        .zip(eps.iter_mut())
        .zip(x.iter().zip(z.iter()))
    {
        if options.use_clipped_model_output {
            *eps = (x - sa * x0) / sb;
        }
        *prev = sap * x0 + direction * *eps;
        if options.eta > 0.0 {
            *prev = *prev + sigma * z;
        }
    }
    (prev, x0)
}

/// `|v|`, exactly (through `f64`, which holds every `f32`).
fn magnitude<T: DdimFloat>(v: T) -> T {
    T::from_f64(v.to_f64().abs())
}

/// Equal values, or NaN for NaN (the sign of zero and NaN payloads aside).
fn same_value<T: DdimFloat>(a: T, b: T) -> bool {
    (a.is_nan() && b.is_nan()) || a == b
}

/// All the step configurations of the reference: every prediction type, clipping or
/// thresholding or neither, `use_clipped_model_output`, eta 0 and 0.6, at the first, a middle
/// and the last step of a 10-step schedule, with and without `set_alpha_to_one`.
fn step_variants() -> Vec<(DdimConfig, CaseOptions, usize)> {
    let mut variants = vec![];
    for prediction_type in [
        PredictionType::Epsilon,
        PredictionType::Sample,
        PredictionType::VPrediction,
    ] {
        for (clip_sample, thresholding) in [(false, false), (true, false), (false, true)] {
            for set_alpha_to_one in [true, false] {
                for use_clipped_model_output in [false, true] {
                    for eta in [0.0, 0.6] {
                        for t in [900, 500, 0] {
                            let config = DdimConfig {
                                prediction_type,
                                clip_sample,
                                thresholding,
                                set_alpha_to_one,
                                dynamic_thresholding_ratio: 0.7,
                                sample_max_value: 2.5,
                                clip_sample_range: 1.5,
                                ..DdimConfig::default()
                            };
                            let options = CaseOptions {
                                eta,
                                use_clipped_model_output,
                            };
                            variants.push((config, options, t));
                        }
                    }
                }
            }
        }
    }
    variants
}

/// Compares the crate with `reference_step` over random arrays in which a share `special` of
/// the elements are NaN, infinite, huge or subnormal; returns the mismatches, described.
fn compare_with_reference<T: TestFloat>(special: f64, specials: &[f64], seed: u64) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut mismatches = vec![];
    for (config, options, t) in step_variants() {
        let mut s = DdimScheduler::new(config.clone()).expect("valid");
        s.set_timesteps(10).expect("10 steps");
        let k = s.step_scalars(t, options.eta).expect("scalars");
        for _ in 0..4 {
            let shape = [3, 4, 5];
            let m: ArrayD<T> = random_values_from(&mut rng, &shape, special, specials);
            let x: ArrayD<T> = random_values_from(&mut rng, &shape, special, specials);
            let z: ArrayD<T> = random_values_from(&mut rng, &shape, special, specials);
            let out = s
                .step_with(&m, t, &x, options.with(NoiseSource::given(&z)))
                .expect("no error for any values");
            let (prev, x0) = reference_step(&config, &k, options, &m, &x, &z);
            for (name, got, want) in [
                ("prev_sample", &out.prev_sample, &prev),
                ("pred_original_sample", &out.pred_original_sample, &x0),
            ] {
                for (i, (&g, &r)) in got.iter().zip(want.iter()).enumerate() {
                    if !same_value(g, r) {
                        let flat = |a: &ArrayD<T>| a.iter().copied().nth(i).unwrap_or(T::ZERO);
                        mismatches.push(format!(
                            "{}: {:?} clip {} thresholding {} use_clipped {} eta {} t {t}: {name} {g} vs reference {r} (model_output {}, sample {}, noise {})",
                            std::any::type_name::<T>(),
                            config.prediction_type,
                            config.clip_sample,
                            config.thresholding,
                            options.use_clipped_model_output,
                            options.eta,
                            flat(&m),
                            flat(&x),
                            flat(&z),
                        ));
                    }
                }
            }
        }
    }
    mismatches
}

/// With finite inputs (zeros of both signs, 1e30 and subnormals included) the step is the
/// reference's formulas, to the value: the zero-weighted terms of the fused update are exact
/// zeros then.
#[test]
fn finite_inputs_give_the_reference_formulas_to_the_value() {
    let finite = [0.0, -0.0, 1e30, -1e30, 1e-40, 5e-324];
    for seed in 0..3 {
        for mismatches in [
            compare_with_reference::<f32>(0.2, &finite, seed),
            compare_with_reference::<f64>(0.2, &finite, seed),
        ] {
            assert!(
                mismatches.is_empty(),
                "{}",
                mismatches[..mismatches.len().min(10)].join("\n")
            );
        }
    }
}

/// The policy: NaN and infinite values propagate as the reference propagates them, element by
/// element, NaN for NaN. This needs the fused update to leave out the terms the reference does
/// not have rather than weight them by 0 (`0 * inf` is NaN): a zero-weighted `sample` in
/// epsilon's `eps` and sample prediction's `x0`, or `x0` in `eps` unless
/// use_clipped_model_output. Examples (default config, 10 steps, t = 500): epsilon with
/// clip_sample and `sample = inf`, where the reference clips `x0` to 1 and gives a finite
/// `prev_sample`; sample prediction with `sample = inf` or `NaN`, where the reference's
/// `pred_original_sample` is the model output (and, with thresholding, the batch item is not
/// poisoned).
#[test]
fn special_values_propagate_as_in_the_reference() {
    let mut mismatches = compare_with_reference::<f32>(0.15, &SPECIAL_VALUES, 7);
    mismatches.extend(compare_with_reference::<f64>(0.15, &SPECIAL_VALUES, 8));
    assert!(
        mismatches.is_empty(),
        "{} mismatches, first:\n{}",
        mismatches.len(),
        mismatches[..mismatches.len().min(12)].join("\n")
    );
}

/// Indices (in iteration order) of the NaN elements.
fn nan_positions<T: DdimFloat>(a: &ArrayD<T>) -> Vec<usize> {
    a.iter()
        .enumerate()
        .filter(|(_, v)| v.is_nan())
        .map(|(i, _)| i)
        .collect()
}

/// A NaN in model_output, in the sample or (at eta > 0) in the noise gives NaN in exactly that
/// element of `prev_sample`, without thresholding; every other element is bit-for-bit the clean
/// step's. At eta = 0 NaN noise is not read at all. `pred_original_sample` is NaN where the
/// reference's is: at a NaN of model_output, or of the sample unless the model predicts the
/// sample (then the reference's `x0` is the model output, free of NaN).
#[test]
fn nan_gives_nan_in_exactly_the_affected_elements() {
    fn check<T: TestFloat>() {
        let mut rng = StdRng::seed_from_u64(31);
        for (config, options, t) in step_variants() {
            if config.thresholding {
                continue;
            }
            let mut s = DdimScheduler::new(config.clone()).expect("valid");
            s.set_timesteps(10).expect("10 steps");
            let shape = [2, 3, 7];
            let m: ArrayD<T> = random_values(&mut rng, &shape, 0.0);
            let x: ArrayD<T> = random_values(&mut rng, &shape, 0.0);
            let z: ArrayD<T> = random_values(&mut rng, &shape, 0.0);
            let clean = s
                .step_with(&m, t, &x, options.with(NoiseSource::given(&z)))
                .expect("step");
            let positions = [3usize, 17, 40];
            for which in 0..3 {
                let mut inputs = [m.clone(), x.clone(), z.clone()];
                for &p in &positions {
                    if let Some(v) = inputs[which].iter_mut().nth(p) {
                        *v = T::from_f64(f64::NAN);
                    }
                }
                let [m2, x2, z2] = &inputs;
                let out = s
                    .step_with(m2, t, x2, options.with(NoiseSource::given(z2)))
                    .expect("NaN is no error");
                let noise_ignored = which == 2 && options.eta == 0.0;
                let expected: Vec<usize> = if noise_ignored {
                    vec![]
                } else {
                    positions.to_vec()
                };
                let what = format!("{config:?} {options:?} t {t} NaN in input {which}");
                assert_eq!(nan_positions(&out.prev_sample), expected, "{what}");
                let x0_is_model_output = config.prediction_type == PredictionType::Sample;
                let x0_expected = if which == 2 || (which == 1 && x0_is_model_output) {
                    vec![]
                } else {
                    positions.to_vec()
                };
                assert_eq!(
                    nan_positions(&out.pred_original_sample),
                    x0_expected,
                    "{what}"
                );
                for (i, (a, b)) in out
                    .prev_sample
                    .iter()
                    .zip(clean.prev_sample.iter())
                    .enumerate()
                {
                    if !expected.contains(&i) {
                        assert_eq!(a.bits(), b.bits(), "{what}: element {i}");
                    }
                }
            }
        }
    }
    check::<f32>();
    check::<f64>();
}

/// Infinities in model_output or sample, without clipping or thresholding, give a non-finite
/// value in exactly that element of `prev_sample`; the others are the clean step's.
#[test]
fn unclipped_infinities_stay_in_their_elements() {
    let mut rng = StdRng::seed_from_u64(41);
    for (config, options, t) in step_variants() {
        if config.thresholding || config.clip_sample || options.use_clipped_model_output {
            continue;
        }
        let mut s = DdimScheduler::new(config.clone()).expect("valid");
        s.set_timesteps(10).expect("10 steps");
        let shape = [2, 9];
        let m: ArrayD<f32> = random_values(&mut rng, &shape, 0.0);
        let x: ArrayD<f32> = random_values(&mut rng, &shape, 0.0);
        let z: ArrayD<f32> = random_values(&mut rng, &shape, 0.0);
        let clean = s
            .step_with(&m, t, &x, options.with(NoiseSource::given(&z)))
            .expect("step");
        for (which, value) in [
            (0, f32::INFINITY),
            (0, f32::NEG_INFINITY),
            (1, f32::INFINITY),
        ] {
            let (mut m2, mut x2) = (m.clone(), x.clone());
            let target = if which == 0 { &mut m2 } else { &mut x2 };
            target[[1, 4]] = value;
            let out = s
                .step_with(&m2, t, &x2, options.with(NoiseSource::given(&z)))
                .expect("no error");
            let what = format!("{config:?} {options:?} t {t} input {which} = {value}");
            for (i, (a, b)) in out
                .prev_sample
                .iter()
                .zip(clean.prev_sample.iter())
                .enumerate()
            {
                if i == 9 + 4 {
                    assert!(!a.is_finite(), "{what}: {a}");
                } else {
                    assert_eq!(a.to_bits(), b.to_bits(), "{what}: element {i}");
                }
            }
        }
    }
}

/// With dynamic thresholding, a NaN in one batch item makes that item's threshold NaN, hence the
/// whole item NaN (as `torch.quantile` does); the other items are bit-for-bit the clean step's.
/// A NaN in the sample of a sample-predicting model does not reach `x0` (the model output), so
/// there, as in the reference, only that element of `prev_sample` is NaN and everything else is
/// the clean step's.
#[test]
fn thresholding_with_a_nan_poisons_only_its_batch_item() {
    let mut rng = StdRng::seed_from_u64(51);
    for (config, options, t) in step_variants() {
        if !config.thresholding {
            continue;
        }
        let mut s = DdimScheduler::new(config.clone()).expect("valid");
        s.set_timesteps(10).expect("10 steps");
        let shape = [4, 3, 5];
        let m: ArrayD<f32> = random_values(&mut rng, &shape, 0.0);
        let x: ArrayD<f32> = random_values(&mut rng, &shape, 0.0);
        let z: ArrayD<f32> = random_values(&mut rng, &shape, 0.0);
        let clean = s
            .step_with(&m, t, &x, options.with(NoiseSource::given(&z)))
            .expect("step");
        for item in 0..4 {
            for which in 0..2 {
                let poisons_item = which == 0 || config.prediction_type != PredictionType::Sample;
                let (mut m2, mut x2) = (m.clone(), x.clone());
                let target = if which == 0 { &mut m2 } else { &mut x2 };
                target[[item, 2, 1]] = f32::NAN;
                let out = s
                    .step_with(&m2, t, &x2, options.with(NoiseSource::given(&z)))
                    .expect("no error");
                let what = format!("{config:?} {options:?} t {t} item {item} input {which}");
                for b in 0..4 {
                    for (name, got, want) in [
                        ("prev", &out.prev_sample, &clean.prev_sample),
                        ("x0", &out.pred_original_sample, &clean.pred_original_sample),
                    ] {
                        let got = got.index_axis(Axis(0), b);
                        let want = want.index_axis(Axis(0), b);
                        if b == item && poisons_item {
                            assert!(got.iter().all(|v| v.is_nan()), "{what}: {name} {got}");
                        } else if b == item && name == "prev" {
                            // Only the element, [2, 1] of the item, is NaN.
                            for (i, (a, c)) in got.iter().zip(want.iter()).enumerate() {
                                if i == 2 * 5 + 1 {
                                    assert!(a.is_nan(), "{what}: {name} {got}");
                                } else {
                                    assert_eq!(a.to_bits(), c.to_bits(), "{what}: {name} {i}");
                                }
                            }
                        } else {
                            let same = got
                                .iter()
                                .zip(want.iter())
                                .all(|(a, c)| a.to_bits() == c.to_bits());
                            assert!(same, "{what}: {name} of item {b} changed");
                        }
                    }
                }
            }
        }
    }
}

/// step_batch, inverse_step, add_noise, get_velocity and guidance keep NaN in its element (or,
/// for guidance rescale and thresholding, its batch item), with no error.
#[test]
fn nan_in_the_other_array_calls_stays_local() {
    let mut s = DdimScheduler::new(DdimConfig::default()).expect("default");
    s.set_timesteps(10).expect("10 steps");
    let mut rng = StdRng::seed_from_u64(61);
    let mut x: ArrayD<f32> = random_values(&mut rng, &[3, 8], 0.0);
    let m: ArrayD<f32> = random_values(&mut rng, &[3, 8], 0.0);
    x[[1, 5]] = f32::NAN;
    let expect_one = |a: &ArrayD<f32>, what: &str| {
        assert_eq!(nan_positions(a), vec![8 + 5], "{what}");
    };
    let out = s
        .step_batch(&m, &[900, 500, 0], &x, StepOptions::default())
        .expect("batch");
    expect_one(&out.prev_sample, "step_batch");
    let out = s.inverse_step(&m, 500, &x).expect("inverse");
    expect_one(&out.prev_sample, "inverse_step");
    expect_one(
        &s.add_noise(&x, &m, &[10, 500, 999]).expect("add_noise"),
        "add_noise",
    );
    expect_one(
        &s.get_velocity(&x, &m, &[10, 500, 999]).expect("velocity"),
        "get_velocity",
    );
    expect_one(
        &classifier_free_guidance(&m, &x, 7.5, 0.0).expect("cfg"),
        "guidance",
    );
    // With rescale, the item's standard deviation is NaN: the whole item, and only it.
    let rescaled = classifier_free_guidance(&m, &x, 7.5, 0.7).expect("cfg");
    assert_eq!(
        nan_positions(&rescaled),
        (8..16).collect::<Vec<_>>(),
        "guidance rescale"
    );
}

/// Two valid inputs make the step scalars NaN, exactly as the reference's formulas do (so the
/// crate reproduces them rather than refusing them; reported for a decision, pinned here):
///
/// - a schedule whose first beta is 0 (`beta_start = 0`, or `trained_betas[0] = 0`) has
///   `alpha_bar_0 = 1`; a step from timestep 0 with eta > 0 then computes the variance as
///   `(0 / 0) * 0`, NaN, and the whole sample is NaN (diffusers' `_get_variance` does the same);
/// - an eta that is finite in `f64` but beyond `f32::MAX` (1e39) passes the eta check, becomes
///   an infinite `sigma` in float32, and gives `inf` (or `inf * 0 = NaN` where the variance is 0).
#[test]
fn nan_scalars_arise_only_where_the_reference_gives_nan() {
    let x = ArrayD::<f32>::from_elem(IxDyn(&[1, 3]), 0.5);
    for set_alpha_to_one in [true, false] {
        let config = DdimConfig {
            beta_start: 0.0,
            set_alpha_to_one,
            ..DdimConfig::default()
        };
        let mut s = DdimScheduler::new(config).expect("beta_start = 0 is valid");
        s.set_timesteps(10).expect("10 steps");
        let k = s.step_scalars(0, 1.0).expect("scalars");
        assert!(k.sigma.is_nan() && k.direction.is_nan(), "{k:?}");
        let eta_one = CaseOptions {
            eta: 1.0,
            use_clipped_model_output: false,
        };
        let out = s
            .step_with(&x, 0, &x, eta_one.with(NoiseSource::given(&x)))
            .expect("no error");
        assert!(out.prev_sample.iter().all(|v| v.is_nan()));
        // Deterministic steps and other timesteps are unaffected.
        let k = s.step_scalars(0, 0.0).expect("scalars");
        assert_eq!((k.sigma, k.direction), (0.0, 0.0));
        let k = s.step_scalars(100, 1.0).expect("scalars");
        assert!(k.sigma.is_finite() && k.direction.is_finite(), "{k:?}");
    }
    let mut s = DdimScheduler::new(DdimConfig {
        set_alpha_to_one: false,
        ..DdimConfig::default()
    })
    .expect("valid");
    s.set_timesteps(10).expect("10 steps");
    let huge = CaseOptions {
        eta: 1e39,
        use_clipped_model_output: false,
    };
    assert_eq!(
        s.step_scalars(500, huge.eta).expect("accepted").sigma,
        f32::INFINITY
    );
    // At t = 0 with set_alpha_to_one = false the variance is 0: inf * 0.
    assert!(s
        .step_scalars(0, huge.eta)
        .expect("accepted")
        .sigma
        .is_nan());
    let out = s
        .step_with(&x, 500, &x, huge.with(NoiseSource::given(&x)))
        .expect("accepted");
    assert!(out.prev_sample.iter().all(|v| v.is_infinite()));
}

/// `TorchGenerator::try_randn` on random shapes, zero-size and overflowing ones among them: never
/// a panic; an error exactly when the product of the non-zero lengths overflows `isize`, naming
/// the shape; the generator untouched on error and, on success, the draw `randn` makes.
#[test]
fn try_randn_never_panics_and_refuses_exactly_the_shapes_ndarray_cannot_hold() {
    let mut rng = StdRng::seed_from_u64(0x7a11);
    let lengths = [
        0,
        1,
        2,
        3,
        17,
        1 << 20,
        1 << 31,
        1 << 62,
        usize::MAX / 2,
        usize::MAX,
    ];
    let (mut refused, mut drawn) = (0, 0);
    for case in 0..2000 {
        let axes = rng.random_range(0..5usize);
        let shape: Vec<usize> = (0..axes)
            .map(|_| lengths[rng.random_range(0..lengths.len())])
            .collect();
        let fits = shape
            .iter()
            .filter(|&&d| d != 0)
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .is_some_and(|n| n <= isize::MAX as usize);
        // Shapes that fit but are too large to draw here are left to the model alone.
        let affordable = shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .is_some_and(|n| n <= 1 << 16);
        if fits && !affordable {
            continue;
        }
        let mut g = TorchGenerator::manual_seed(case);
        let before = g.clone();
        let result = catch_unwind(AssertUnwindSafe(|| g.try_randn::<f32, _>(IxDyn(&shape))))
            .unwrap_or_else(|_| panic!("try_randn panicked on {shape:?}"));
        match result {
            Ok(a) => {
                assert!(fits, "{shape:?}");
                assert_eq!(a.shape(), shape.as_slice());
                let expected: ArrayD<f32> = before.clone().randn(IxDyn(&shape));
                assert_eq!(bits(&a), bits(&expected), "{shape:?}");
                drawn += 1;
            }
            Err(e) => {
                assert!(!fits, "{shape:?}: {e}");
                assert!(
                    matches!(&e, DdimError::ShapeTooLarge { shape: s } if s == &shape),
                    "{e:?}"
                );
                assert!(e.to_string().contains(&format!("{shape:?}")), "{e}");
                assert!(g == before, "{shape:?}: the generator moved on error");
                refused += 1;
            }
        }
    }
    assert!(
        refused > 100 && drawn > 100,
        "refused {refused}, drawn {drawn}"
    );
}
