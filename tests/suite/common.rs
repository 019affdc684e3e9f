//! Shared helpers of the integration tests: reading the golden fixtures written by
//! `scripts/generate_golden.py`, comparing arrays with a tolerance, scratch folders, and the
//! schedulers, random arrays and bit patterns of the array tests. Each helper exists once,
//! here; the test modules import it rather than defining their own.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use ddim::ndarray::{ArrayD, IxDyn};
use ddim::{DdimConfig, DdimFloat, DdimScheduler, NoiseSource, StepOptions};
use rand::{Rng, RngExt};
use serde_json::Value;

/// `tests/fixtures/<rest>`.
pub fn fixture_path(rest: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rest)
}

/// Parses `tests/fixtures/golden/<name>.json` and checks that it came from the reference.
pub fn golden(name: &str) -> Value {
    let path = fixture_path(&format!("golden/{name}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let value: Value = serde_json::from_str(&text).expect("fixture is JSON");
    assert_eq!(value["versions"]["diffusers"], "0.42.1", "fixture {name}");
    value
}

/// The `cases` array of a fixture.
pub fn cases(fixture: &Value) -> &Vec<Value> {
    fixture["cases"].as_array().expect("cases")
}

/// A decoded fixture array.
#[derive(Debug, Clone)]
pub enum Tensor {
    F32(ArrayD<f32>),
    F64(ArrayD<f64>),
}

impl Tensor {
    pub fn f32(&self) -> &ArrayD<f32> {
        match self {
            Tensor::F32(a) => a,
            Tensor::F64(_) => panic!("expected an f32 tensor"),
        }
    }

    pub fn f64(&self) -> &ArrayD<f64> {
        match self {
            Tensor::F64(a) => a,
            Tensor::F32(_) => panic!("expected an f64 tensor"),
        }
    }

    /// The values widened to f64, in row-major order.
    pub fn values(&self) -> Vec<f64> {
        match self {
            Tensor::F32(a) => a.iter().map(|&v| f64::from(v)).collect(),
            Tensor::F64(a) => a.iter().copied().collect(),
        }
    }
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    assert!(hex.len().is_multiple_of(2), "odd hex length");
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex digit"))
        .collect()
}

/// Decodes `{"dtype", "shape", "hex"}`.
pub fn tensor(value: &Value) -> Tensor {
    let shape: Vec<usize> = value["shape"]
        .as_array()
        .expect("shape")
        .iter()
        .map(|d| d.as_u64().expect("dim") as usize)
        .collect();
    let bytes = hex_bytes(value["hex"].as_str().expect("hex"));
    match value["dtype"].as_str().expect("dtype") {
        "f32" => {
            let data = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Tensor::F32(ArrayD::from_shape_vec(IxDyn(&shape), data).expect("shape"))
        }
        "f64" => {
            let data = bytes
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect();
            Tensor::F64(ArrayD::from_shape_vec(IxDyn(&shape), data).expect("shape"))
        }
        other => panic!("unknown dtype {other}"),
    }
}

/// Every entry of a fixture's `inputs` object, decoded.
pub fn inputs(fixture: &Value) -> HashMap<String, Tensor> {
    fixture["inputs"]
        .as_object()
        .expect("inputs")
        .iter()
        .map(|(k, v)| (k.clone(), tensor(v)))
        .collect()
}

/// The case's config, read through the crate's own JSON loader as a user's file would be.
pub fn config(case: &Value) -> DdimConfig {
    let text = serde_json::to_string(&case["config"]).expect("config serialises");
    DdimConfig::from_json_str(&text)
        .unwrap_or_else(|e| panic!("case {}: config rejected: {e}", case["name"]))
}

/// The scheduler of a fixture loop: the case's config with its `num_inference_steps` set, after
/// checking that the timesteps are the case's `timesteps`.
pub fn loop_scheduler(case: &Value) -> DdimScheduler {
    let label = name(case);
    let mut s = case_scheduler(case);
    let n = case["num_inference_steps"]
        .as_u64()
        .expect("num_inference_steps") as usize;
    s.set_timesteps(n)
        .unwrap_or_else(|e| panic!("{label}: {e}"));
    let reference: Vec<usize> = serde_json::from_value(case["timesteps"].clone()).expect("ints");
    assert_eq!(s.timesteps(), reference.as_slice(), "{label}: timesteps");
    s
}

/// The scheduler of a fixture case (timesteps not set).
pub fn case_scheduler(case: &Value) -> DdimScheduler {
    DdimScheduler::new(config(case))
        .unwrap_or_else(|e| panic!("case {}: scheduler rejected: {e}", case["name"]))
}

/// A scheduler of a valid config with `steps` inference steps set.
pub fn scheduler(config: DdimConfig, steps: usize) -> DdimScheduler {
    let mut s = DdimScheduler::new(config).expect("valid config");
    s.set_timesteps(steps).expect("valid step count");
    s
}

/// Uniform values in `[-range, range]` of the given shape, drawn in row-major order.
pub fn random_array<T: DdimFloat, R: Rng + ?Sized>(
    shape: &[usize],
    rng: &mut R,
    range: f64,
) -> ArrayD<T> {
    ArrayD::from_shape_simple_fn(IxDyn(shape), || {
        T::from_f64(rng.random_range(-range..=range))
    })
}

pub fn name(case: &Value) -> &str {
    case["name"].as_str().expect("name")
}

/// A fixture case's step options (`eta`, `use_clipped_model_output`), to be completed with a
/// noise source for each step ([`StepOptions`] borrows its source, so it is built per step).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CaseOptions {
    pub eta: f64,
    pub use_clipped_model_output: bool,
}

impl CaseOptions {
    pub fn of(case: &Value) -> Self {
        CaseOptions {
            eta: case["eta"].as_f64().expect("eta"),
            use_clipped_model_output: case["use_clipped_model_output"].as_bool().expect("flag"),
        }
    }

    /// Plain DDIM: what `step` does.
    pub fn is_default(self) -> bool {
        self.eta == 0.0 && !self.use_clipped_model_output
    }

    /// The options of one step, with noise from `noise`.
    pub fn with<T>(self, noise: NoiseSource<'_, T>) -> StepOptions<'_, T> {
        StepOptions {
            eta: self.eta,
            noise,
            use_clipped_model_output: self.use_clipped_model_output,
        }
    }
}

/// Asserts `|ours - reference| <= abs + rel * |reference|` for every element; NaN must meet NaN.
/// Reports the worst element on failure.
/// Panics with the worst element otherwise.
pub fn assert_close(what: &str, ours: &[f64], reference: &[f64], abs: f64, rel: f64) {
    assert_eq!(ours.len(), reference.len(), "{what}: length");
    let mut worst: Option<(usize, f64)> = None;
    for (i, (&o, &r)) in ours.iter().zip(reference).enumerate() {
        if r.is_nan() || o.is_nan() {
            assert!(
                r.is_nan() && o.is_nan(),
                "{what}: element {i}: ours {o}, reference {r}"
            );
            continue;
        }
        if r.is_infinite() || o.is_infinite() {
            assert_eq!(o, r, "{what}: element {i}");
            continue;
        }
        let excess = (o - r).abs() - (abs + rel * r.abs());
        if excess > 0.0 && worst.is_none_or(|(_, w)| excess > w) {
            worst = Some((i, excess));
        }
    }
    if let Some((i, _)) = worst {
        panic!(
            "{what}: element {i} is {}, reference {} (difference {:e}, allowed {:e} + {:e} * |reference|)",
            ours[i],
            reference[i],
            (ours[i] - reference[i]).abs(),
            abs,
            rel
        );
    }
}

/// Like [`assert_close`], with a per-element `allowance` added to the tolerance. Returns how many
/// elements needed it.
pub fn assert_close_with_allowance(
    what: &str,
    ours: &[f64],
    reference: &[f64],
    abs: f64,
    rel: f64,
    allowance: &[f64],
) -> usize {
    assert_eq!(ours.len(), allowance.len(), "{what}: allowance length");
    let mut needed = 0;
    for (i, ((&o, &r), &extra)) in ours.iter().zip(reference).zip(allowance).enumerate() {
        if o.is_nan() || r.is_nan() {
            assert!(
                o.is_nan() && r.is_nan(),
                "{what}: element {i}: ours {o}, reference {r}"
            );
            continue;
        }
        let diff = (o - r).abs();
        let tolerance = abs + rel * r.abs();
        if diff > tolerance {
            assert!(
                diff <= tolerance + extra,
                "{what}: element {i} is {o}, reference {r} (difference {diff:e}, allowed {tolerance:e} + conditioning allowance {extra:e})"
            );
            needed += 1;
        }
    }
    needed
}

/// A scratch folder below the system temp dir, unique to one test, removed when dropped.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    pub fn new(label: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("ddim-test-{}-{label}-{n}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path).expect("remove stale scratch dir");
        }
        std::fs::create_dir_all(&path).expect("create scratch dir");
        ScratchDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every key of a `scheduler_config.json` the crate reads (the reference's, and this crate's own
/// `step_along_schedule`).
pub const CONFIG_KEYS: [&str; 16] = [
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "clip_sample",
    "set_alpha_to_one",
    "steps_offset",
    "prediction_type",
    "thresholding",
    "dynamic_thresholding_ratio",
    "clip_sample_range",
    "sample_max_value",
    "timestep_spacing",
    "rescale_betas_zero_snr",
    "step_along_schedule",
];

// ---------------------------------------------------------------------------------------------
// Element bits and single-rounding arithmetic in generic tests
// ---------------------------------------------------------------------------------------------

/// What the tests need of an element type beyond [`ddim::DdimFloat`]'s public conversions.
pub trait TestFloat: ddim::DdimFloat {
    /// The bit pattern (an `f32`'s in the low 32 bits): equal exactly when the values are.
    fn bits(self) -> u64;
    /// `self * a + b` with a single rounding in this type.
    fn fma(self, a: Self, b: Self) -> Self;
}

impl TestFloat for f32 {
    fn bits(self) -> u64 {
        u64::from(self.to_bits())
    }
    fn fma(self, a: Self, b: Self) -> Self {
        self.mul_add(a, b)
    }
}

impl TestFloat for f64 {
    fn bits(self) -> u64 {
        self.to_bits()
    }
    fn fma(self, a: Self, b: Self) -> Self {
        self.mul_add(a, b)
    }
}

/// The bit patterns of the elements, in row-major order (any layout).
pub fn bits<T: TestFloat, D: ddim::ndarray::Dimension>(
    a: &ddim::ndarray::ArrayRef<T, D>,
) -> Vec<u64> {
    a.iter().map(|v| v.bits()).collect()
}
