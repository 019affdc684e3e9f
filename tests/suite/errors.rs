//! Every way of misusing the crate must come back as a `DdimError` (never a panic), with the
//! variant that names the problem and a message that says what was wrong and what is accepted.

use crate::common::{scheduler, ScratchDir};

use ddim::ndarray::{Array, Array0, Array1, Array2, Array4, ArrayD, ArrayRef, Dimension, IxDyn};
use ddim::{
    DdimConfig, DdimError, DdimFloat, DdimScheduler, DdimSchedulerOutput, NoiseSource, StepOptions,
    TorchGenerator, MAX_TRAIN_TIMESTEPS,
};
use rand::rngs::StdRng;
use rand::SeedableRng;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The error of `result`, which must match `pattern` (and its guard, whose bindings are
/// references): the assertion every test here makes. A failure shows the pattern and what came
/// back instead.
macro_rules! assert_err {
    ($result:expr, $pattern:pat $(if $guard:expr)? $(,)?) => {
        match $result {
            Ok(_) => panic!("expected {}, got Ok", stringify!($pattern)),
            Err(err) => {
                assert!(
                    matches!(&err, $pattern $(if $guard)?),
                    "expected {}, got {err:?}",
                    stringify!($pattern)
                );
                err
            }
        }
    };
}

/// Parses `json`, which must be rejected, and returns the error.
fn rejected(json: &str) -> DdimError {
    match DdimConfig::from_json_str(json) {
        Ok(config) => panic!("{json} was accepted as {config:?}"),
        Err(err) => err,
    }
}

/// The `(key, value, allowed)` of an `InvalidConfig`, after checking that the rendered message
/// repeats all three.
fn invalid_config(err: DdimError) -> (String, String, String) {
    let message = err.to_string();
    match err {
        DdimError::InvalidConfig {
            key,
            value,
            allowed,
        } => {
            for part in [&key, &value, &allowed] {
                assert!(
                    message.contains(part.as_str()),
                    "message {message:?} should contain {part:?}"
                );
            }
            (key, value, allowed)
        }
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
}

/// The message of a `ConfigParse`, after checking that the rendered error gives its position.
fn parse_message(err: DdimError) -> String {
    let rendered = err.to_string();
    match err {
        DdimError::ConfigParse {
            line,
            column,
            message,
        } => {
            assert!(
                line >= 1 && column >= 1,
                "positions are 1-based: {rendered}"
            );
            assert!(
                rendered.contains(&format!("line {line}, column {column}")),
                "{rendered}"
            );
            assert!(rendered.contains(&message), "{rendered}");
            message
        }
        other => panic!("expected ConfigParse, got {other:?}"),
    }
}

/// `validate` and `DdimScheduler::new` must both reject `config` with the same error text.
fn rejected_by_validate_and_new(config: DdimConfig) -> DdimError {
    let from_validate = config.validate().expect_err("validate should reject");
    let from_new = DdimScheduler::new(config).expect_err("new should reject");
    assert_eq!(from_validate.to_string(), from_new.to_string());
    from_new
}

/// Asserts a `ShapeMismatch` naming `name` with shape `found` against the sample's `expected`,
/// with both shapes in the message.
fn assert_shape_mismatch(err: DdimError, name: &str, found: &[usize], expected: &[usize]) {
    let message = err.to_string();
    match err {
        DdimError::ShapeMismatch {
            name: n,
            found: f,
            reference_name,
            expected: e,
        } => {
            assert_eq!((n, f.as_slice(), e.as_slice()), (name, found, expected));
            assert_eq!(reference_name, "sample");
        }
        other => panic!("expected ShapeMismatch, got {other:?}"),
    }
    for shape in [found, expected] {
        assert!(message.contains(&format!("{shape:?}")), "{message}");
    }
}

fn thresholding_scheduler() -> DdimScheduler {
    let config = DdimConfig {
        thresholding: true,
        ..DdimConfig::default()
    };
    scheduler(config, 10)
}

/// The options of a step with `eta` and noise from `noise`.
fn options<T>(eta: f64, noise: NoiseSource<'_, T>) -> StepOptions<'_, T> {
    StepOptions {
        eta,
        noise,
        use_clipped_model_output: false,
    }
}

/// The options of a step with `eta` and no noise source.
fn eta<'a, T>(eta: f64) -> StepOptions<'a, T> {
    options(eta, NoiseSource::None)
}

fn rng() -> StdRng {
    StdRng::seed_from_u64(0x5eed)
}

/// Calls `f` with the options of a step with `eta` and each noise source in turn: none, `noise`
/// given, a seeded `rand` generator and a seeded torch generator. Only the step's last check
/// looks at the source, so an error that an earlier check finds must not depend on it.
fn for_each_source<T: DdimFloat, D: Dimension>(
    eta: f64,
    noise: &ArrayRef<T, D>,
    mut f: impl FnMut(StepOptions<'_, T>),
) {
    let mut rng = rng();
    let mut generator = TorchGenerator::manual_seed(0);
    f(options(eta, NoiseSource::None));
    f(options(eta, NoiseSource::given(noise)));
    f(options(eta, NoiseSource::Rng(&mut rng)));
    f(options(eta, NoiseSource::Torch(&mut generator)));
}

// ---------------------------------------------------------------------------------------------
// JSON that does not parse
// ---------------------------------------------------------------------------------------------

#[test]
fn invalid_json_reports_line_and_column_of_the_problem() {
    // The value of `beta_start` is missing: the parser stops at the comma, line 3, column 17.
    let text = "{\n  \"num_train_timesteps\": 1000,\n  \"beta_start\": ,\n  \"beta_end\": 0.02\n}";
    let err = rejected(text);
    let rendered = err.to_string();
    match err {
        DdimError::ConfigParse {
            line,
            column,
            message,
        } => {
            assert_eq!((line, column), (3, 17), "{rendered}");
            assert!(message.contains("expected value"), "{message}");
            // The position lives in the fields, not twice in the text.
            assert!(!message.contains("at line"), "{message}");
            assert!(rendered.contains("line 3, column 17"), "{rendered}");
        }
        other => panic!("expected ConfigParse, got {other:?}"),
    }
}

#[test]
fn truncated_json_reports_end_of_input() {
    let err = rejected("{\"beta_start\": 0.001");
    let rendered = err.to_string();
    match err {
        DdimError::ConfigParse {
            line,
            column,
            message,
        } => {
            assert_eq!((line, column), (1, 20), "{rendered}");
            assert!(message.contains("EOF"), "{message}");
        }
        other => panic!("expected ConfigParse, got {other:?}"),
    }
}

#[test]
fn json_that_is_not_an_object_is_a_parse_error() {
    for (text, found) in [("42", "`4`"), ("null", "`n`"), ("\"linear\"", "`\"`")] {
        let message = parse_message(rejected(text));
        assert!(message.contains("expected a JSON object"), "{message}");
        assert!(message.contains(found), "{message} should name {found}");
    }
}

/// A value of the wrong JSON type: the message names the value given and the type expected.
#[test]
fn wrong_json_types_name_the_value_and_the_expected_type() {
    for (json, value, expected) in [
        (r#"{"num_train_timesteps": "1000"}"#, "\"1000\"", "usize"),
        (r#"{"clip_sample": 1}"#, "integer `1`", "boolean"),
        (r#"{"steps_offset": -1}"#, "-1", "usize"),
        (r#"{"beta_start": "0.1"}"#, "\"0.1\"", "f64"),
    ] {
        let message = parse_message(rejected(json));
        assert!(message.contains("invalid"), "{json}: {message}");
        assert!(
            message.contains(value),
            "{json}: names the value: {message}"
        );
        assert!(
            message.contains(expected),
            "{json}: names the type: {message}"
        );
    }
}

/// An unknown enum string: the message names it and lists every allowed spelling.
#[test]
fn unknown_enum_strings_list_the_allowed_values() {
    for (key, bad, allowed) in [
        (
            "beta_schedule",
            "cosine",
            &["linear", "scaled_linear", "squaredcos_cap_v2"],
        ),
        (
            "prediction_type",
            "v-prediction",
            &["epsilon", "sample", "v_prediction"],
        ),
        (
            "timestep_spacing",
            "uniform",
            &["leading", "trailing", "linspace"],
        ),
    ] {
        let message = parse_message(rejected(&format!(r#"{{"{key}": "{bad}"}}"#)));
        assert!(
            message.contains(&format!("unknown variant `{bad}`")),
            "{message}"
        );
        for allowed in allowed {
            assert!(
                message.contains(&format!("`{allowed}`")),
                "{message} should list {allowed}"
            );
        }
    }
}

#[test]
fn enum_strings_are_case_sensitive() {
    let message = parse_message(rejected(r#"{"beta_schedule": "Linear"}"#));
    assert!(message.contains("unknown variant `Linear`"), "{message}");
}

// ---------------------------------------------------------------------------------------------
// Values out of range
// ---------------------------------------------------------------------------------------------

#[test]
fn zero_num_train_timesteps_is_rejected() {
    let (key, value, allowed) = invalid_config(rejected(r#"{"num_train_timesteps": 0}"#));
    assert_eq!(key, "num_train_timesteps");
    assert_eq!(value, "0");
    assert!(allowed.contains('1'), "{allowed}");
    assert!(
        allowed.contains(&MAX_TRAIN_TIMESTEPS.to_string()),
        "{allowed}"
    );
}

#[test]
fn num_train_timesteps_above_the_maximum_is_rejected() {
    let (key, value, allowed) = invalid_config(rejected(r#"{"num_train_timesteps": 4000000000}"#));
    assert_eq!(key, "num_train_timesteps");
    assert_eq!(value, "4000000000");
    assert!(
        allowed.contains(&MAX_TRAIN_TIMESTEPS.to_string()),
        "{allowed}"
    );

    // The bound itself is allowed, one more is not.
    // (With betas small enough that a million of them leave some signal.)
    let at_max = DdimConfig {
        num_train_timesteps: MAX_TRAIN_TIMESTEPS,
        beta_start: 1e-9,
        beta_end: 2e-8,
        ..DdimConfig::default()
    };
    assert!(at_max.validate().is_ok());
    let above = DdimConfig {
        num_train_timesteps: MAX_TRAIN_TIMESTEPS + 1,
        ..DdimConfig::default()
    };
    let (key, value, _) = invalid_config(rejected_by_validate_and_new(above));
    assert_eq!(key, "num_train_timesteps");
    assert_eq!(value, (MAX_TRAIN_TIMESTEPS + 1).to_string());
}

#[test]
fn trained_betas_of_wrong_length_are_rejected() {
    let json = r#"{"num_train_timesteps": 4, "trained_betas": [0.1, 0.2, 0.3]}"#;
    let (key, value, allowed) = invalid_config(rejected(json));
    assert_eq!(key, "trained_betas");
    assert!(value.contains('3'), "names the given length: {value}");
    assert!(
        allowed.contains('4'),
        "names num_train_timesteps: {allowed}"
    );

    // An empty list is a wrong length too.
    let (key, value, _) = invalid_config(rejected(
        r#"{"num_train_timesteps": 4, "trained_betas": []}"#,
    ));
    assert_eq!(key, "trained_betas");
    assert!(value.contains('0'), "{value}");
}

#[test]
fn trained_beta_outside_zero_one_is_rejected() {
    for (bad, shown) in [("-0.1", "-0.1"), ("1.0", "1.0"), ("1.5", "1.5")] {
        let json =
            format!(r#"{{"num_train_timesteps": 4, "trained_betas": [0.1, 0.2, {bad}, 0.3]}}"#);
        let (key, value, allowed) = invalid_config(rejected(&json));
        assert_eq!(key, "trained_betas[2]", "for {bad}");
        assert_eq!(value, shown, "for {bad}");
        assert!(allowed.contains("[0, 1)"), "{allowed}");
    }
    // The bounds: 0 is allowed, just below 1 is allowed.
    let ok = r#"{"num_train_timesteps": 3, "trained_betas": [0.0, 0.5, 0.9999]}"#;
    DdimScheduler::new(DdimConfig::from_json_str(ok).expect("betas in [0, 1)"))
        .expect("scheduler from betas in [0, 1)");
}

#[test]
fn non_finite_trained_beta_is_rejected() {
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let config = DdimConfig {
            num_train_timesteps: 3,
            trained_betas: Some(vec![0.1, bad, 0.2]),
            ..DdimConfig::default()
        };
        let (key, value, allowed) = invalid_config(rejected_by_validate_and_new(config));
        assert_eq!(key, "trained_betas[1]");
        assert_eq!(value, bad.to_string());
        assert!(allowed.contains("[0, 1)"), "{allowed}");
    }
}

#[test]
fn trained_beta_that_rounds_to_one_in_f32_is_rejected() {
    // Below 1 as a double, but exactly 1 once the tables are built in float32, which would make
    // alpha_bar 0 from there on.
    let config = DdimConfig {
        num_train_timesteps: 2,
        trained_betas: Some(vec![0.5, 0.999_999_99]),
        ..DdimConfig::default()
    };
    let (key, value, allowed) = invalid_config(rejected_by_validate_and_new(config));
    assert_eq!(key, "trained_betas[1]");
    assert!(value.contains("float32"), "{value}");
    assert!(allowed.contains("[0, 1)"), "{allowed}");
}

#[test]
fn linear_beta_end_above_one_is_rejected() {
    // The betas that beta_start and beta_end produce are checked as soon as the config is read.
    let from_json = DdimConfig::from_json_str(r#"{"beta_end": 1.5}"#).expect_err("betas above 1");
    let config = DdimConfig {
        beta_end: 1.5,
        ..DdimConfig::default()
    };
    assert_eq!(
        from_json.to_string(),
        config.validate().expect_err("betas above 1").to_string()
    );
    let (key, value, allowed) = invalid_config(rejected_by_validate_and_new(config));
    assert_eq!(key, "beta_start/beta_end");
    assert!(value.contains("1.5"), "names beta_end: {value}");
    assert!(value.contains("linear"), "names the schedule: {value}");
    assert!(allowed.contains("[0, 1)"), "{allowed}");
}

#[test]
fn negative_linear_beta_start_is_rejected() {
    let config = DdimConfig {
        beta_start: -0.001,
        ..DdimConfig::default()
    };
    let (key, value, _) = invalid_config(rejected_by_validate_and_new(config));
    assert_eq!(key, "beta_start/beta_end");
    assert!(value.contains("-0.001"), "names beta_start: {value}");
    assert!(
        value.contains("beta[0]"),
        "names the first bad beta: {value}"
    );
}

#[test]
fn negative_scaled_linear_beta_start_giving_nan_is_rejected() {
    // The square root of a negative beta_start is NaN, so every beta of the first half is NaN.
    let err = DdimConfig::from_json_str(
        r#"{"beta_schedule": "scaled_linear", "beta_start": -0.00085, "beta_end": 0.012}"#,
    )
    .expect_err("NaN betas");
    let (key, value, _) = invalid_config(err);
    assert_eq!(key, "beta_start/beta_end");
    assert!(value.contains("-0.00085"), "{value}");
    assert!(value.contains("NaN"), "shows the NaN beta: {value}");
    assert!(value.contains("scaled_linear"), "{value}");
}

#[test]
fn non_finite_beta_start_or_end_is_rejected() {
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let config = DdimConfig {
            beta_start: bad,
            ..DdimConfig::default()
        };
        let (key, value, allowed) = invalid_config(rejected_by_validate_and_new(config));
        assert_eq!(key, "beta_start");
        assert_eq!(value, bad.to_string());
        assert!(allowed.contains("finite"), "{allowed}");

        let config = DdimConfig {
            beta_end: bad,
            ..DdimConfig::default()
        };
        let (key, _, _) = invalid_config(rejected_by_validate_and_new(config));
        assert_eq!(key, "beta_end");
    }
    // Even the cosine schedule, which ignores both values, refuses a non-finite one.
    let config = DdimConfig {
        beta_schedule: ddim::BetaSchedule::SquaredcosCapV2,
        beta_start: f64::NAN,
        ..DdimConfig::default()
    };
    let (key, _, _) = invalid_config(rejected_by_validate_and_new(config));
    assert_eq!(key, "beta_start");
}

#[test]
fn json_number_too_large_for_f64_is_a_parse_error() {
    let message = parse_message(rejected(r#"{"beta_start": 1e400}"#));
    assert!(message.contains("out of range"), "{message}");
}

#[test]
fn dynamic_thresholding_ratio_outside_zero_one_is_rejected() {
    for (bad, shown) in [(-0.1, "-0.1"), (1.1, "1.1"), (f64::NAN, "NaN")] {
        let config = DdimConfig {
            dynamic_thresholding_ratio: bad,
            ..DdimConfig::default()
        };
        let (key, value, allowed) = invalid_config(rejected_by_validate_and_new(config));
        assert_eq!(key, "dynamic_thresholding_ratio");
        assert_eq!(value, shown);
        assert!(allowed.contains("[0, 1]"), "{allowed}");
    }
    // Both ends of the closed interval are fine.
    for ok in [0.0, 1.0] {
        let config = DdimConfig {
            dynamic_thresholding_ratio: ok,
            thresholding: true,
            ..DdimConfig::default()
        };
        assert!(DdimScheduler::new(config).is_ok(), "ratio {ok}");
    }
}

#[test]
fn non_positive_or_non_finite_clip_sample_range_and_sample_max_value_are_rejected() {
    type Setter = fn(&mut DdimConfig, f64);
    let setters: [(&str, Setter); 2] = [
        ("clip_sample_range", |c, v| c.clip_sample_range = v),
        ("sample_max_value", |c, v| c.sample_max_value = v),
    ];
    for (name, set) in setters {
        for bad in [0.0, -1.5, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let mut config = DdimConfig::default();
            set(&mut config, bad);
            let (key, value, allowed) = invalid_config(rejected_by_validate_and_new(config));
            // Floats are shown in their shortest round-trip form.
            assert_eq!((key.as_str(), value), (name, format!("{bad:?}")));
            assert!(
                allowed.contains("finite") && allowed.contains("> 0"),
                "{allowed}"
            );
        }
        let (key, value, _) = invalid_config(rejected(&format!(r#"{{"{name}": -2.5}}"#)));
        assert_eq!((key.as_str(), value.as_str()), (name, "-2.5"));
    }
}

#[test]
fn zero_snr_rescale_needs_two_training_timesteps() {
    let json = r#"{"num_train_timesteps": 1, "rescale_betas_zero_snr": true}"#;
    let (key, value, allowed) = invalid_config(rejected(json));
    assert_eq!(key, "num_train_timesteps");
    assert_eq!(value, "1");
    assert!(allowed.contains("rescale_betas_zero_snr"), "{allowed}");
    assert!(allowed.contains('2'), "{allowed}");

    // Two timesteps are enough, and one is fine without the rescale.
    let two = r#"{"num_train_timesteps": 2, "rescale_betas_zero_snr": true}"#;
    DdimScheduler::new(DdimConfig::from_json_str(two).expect("two timesteps")).expect("builds");
    let one = r#"{"num_train_timesteps": 1}"#;
    DdimScheduler::new(DdimConfig::from_json_str(one).expect("one timestep")).expect("builds");
}

#[test]
fn zero_snr_rescale_of_all_zero_betas_is_rejected() {
    // alpha_bar never decreases, so there is no shift that brings its end to zero.
    let config = DdimConfig {
        num_train_timesteps: 4,
        trained_betas: Some(vec![0.0; 4]),
        rescale_betas_zero_snr: true,
        ..DdimConfig::default()
    };
    let (key, value, _) = invalid_config(rejected_by_validate_and_new(config));
    assert_eq!(key, "rescale_betas_zero_snr");
    assert_eq!(value, "true");
}

#[test]
fn zero_snr_rescale_of_a_flat_tail_is_rejected_not_nan() {
    // The last two alpha_bar are equal: both shift to 0 and their ratio is 0/0.
    let config = DdimConfig {
        num_train_timesteps: 4,
        trained_betas: Some(vec![0.1, 0.2, 0.0, 0.0]),
        rescale_betas_zero_snr: true,
        ..DdimConfig::default()
    };
    let (key, value, allowed) = invalid_config(rejected_by_validate_and_new(config));
    assert_eq!(key, "rescale_betas_zero_snr");
    assert_eq!(value, "true");
    assert!(allowed.contains("0/0"), "{allowed}");
}

#[test]
fn schedule_whose_alpha_bar_underflows_to_zero_is_rejected() {
    // 20000 linear betas up to 0.02 remove every bit of signal long before the end: alpha_bar
    // is exactly 0 in float32 from some timestep on, and a step there would divide by zero.
    let err =
        DdimConfig::from_json_str(r#"{"num_train_timesteps": 20000}"#).expect_err("no signal");
    let (key, value, allowed) = invalid_config(err);
    assert_eq!(key, "num_train_timesteps");
    assert!(
        value.contains("20000") && value.contains("underflows"),
        "{value}"
    );
    assert!(allowed.contains("alpha_bar > 0"), "{allowed}");
    // Rescaling that table would divide its zero tail by itself; that is refused first.
    let err = DdimConfig::from_json_str(
        r#"{"num_train_timesteps": 20000, "rescale_betas_zero_snr": true}"#,
    )
    .expect_err("flat tail");
    assert_eq!(invalid_config(err).0, "rescale_betas_zero_snr");
    // Trained betas are named as the culprit when they are the source: each keeps 1e-6 of the
    // signal, so alpha_bar is 1e-42 (subnormal, still > 0) at timestep 6 and 0 from timestep 7.
    let underflow = DdimConfig {
        num_train_timesteps: 10,
        trained_betas: Some(vec![0.999_999; 10]),
        ..DdimConfig::default()
    };
    let (key, value, _) = invalid_config(rejected_by_validate_and_new(underflow));
    assert!(value.contains("timestep 7"), "{value}");
    // Only a true underflow is refused; a zero at the last timestep (zero terminal SNR) is fine.
    let last_only = DdimConfig {
        num_train_timesteps: 8,
        trained_betas: Some(vec![0.999_999; 8]),
        ..DdimConfig::default()
    };
    assert!(last_only.validate().is_ok());
    assert_eq!(key, "trained_betas");
}

#[test]
fn json_array_is_not_a_config() {
    // serde could read a struct from an array by position; a config file is always an object.
    for text in ["[5]", "[]", "\n  [1000, 0.1]"] {
        let err = DdimConfig::from_json_str(text).expect_err("array");
        let DdimError::ConfigParse { message, .. } = &err else {
            panic!("{text}: expected ConfigParse, got {err:?}");
        };
        assert!(
            message.contains("JSON object") && message.contains('['),
            "{message}"
        );
    }
    let DdimError::ConfigParse { line, column, .. } =
        DdimConfig::from_json_str("\n  [1000]").expect_err("array")
    else {
        panic!("expected ConfigParse");
    };
    assert_eq!((line, column), (2, 3));
}

// ---------------------------------------------------------------------------------------------
// set_timesteps
// ---------------------------------------------------------------------------------------------

#[test]
fn zero_inference_steps_is_rejected_and_keeps_previous_timesteps() {
    let mut s = scheduler(DdimConfig::default(), 5);
    let before = s.timesteps().to_vec();
    let err = assert_err!(
        s.set_timesteps(0),
        DdimError::InvalidNumInferenceSteps {
            requested: 0,
            num_train_timesteps: 1000
        }
    );
    let message = err.to_string();
    assert!(
        message.contains("is 0") && message.contains("1000"),
        "{message}"
    );
    assert_eq!(s.timesteps(), before.as_slice());
    assert_eq!(s.num_inference_steps(), Some(5));
}

#[test]
fn more_inference_steps_than_training_timesteps_is_rejected_and_keeps_previous_timesteps() {
    let mut s = scheduler(DdimConfig::default(), 4);
    let before = s.timesteps().to_vec();
    let err = assert_err!(
        s.set_timesteps(1001),
        DdimError::InvalidNumInferenceSteps {
            requested: 1001,
            num_train_timesteps: 1000
        }
    );
    assert!(err.to_string().contains("1001"), "{err}");
    assert_eq!(s.timesteps(), before.as_slice());
    assert_eq!(s.num_inference_steps(), Some(4));

    // Exactly num_train_timesteps is the largest allowed count.
    s.set_timesteps(1000).expect("1000 steps of 1000");
    assert_eq!(s.timesteps().len(), 1000);
}

#[test]
fn failed_set_timesteps_on_a_fresh_scheduler_leaves_it_unset() {
    let mut s = DdimScheduler::new(DdimConfig::default()).expect("default");
    assert!(s.set_timesteps(0).is_err());
    assert!(s.timesteps().is_empty());
    assert_eq!(s.num_inference_steps(), None);
    let x = Array2::<f32>::zeros((1, 2));
    assert_err!(s.step(&x, 0, &x), DdimError::TimestepsNotSet);
}

#[test]
fn leading_schedule_pushed_past_the_last_timestep_is_rejected() {
    let config = DdimConfig {
        steps_offset: 1,
        ..DdimConfig::default()
    };
    let mut s = DdimScheduler::new(config).expect("offset 1");
    s.set_timesteps(50).expect("50 steps");
    let before = s.timesteps().to_vec();

    let err = assert_err!(
        s.set_timesteps(1000),
        DdimError::ScheduleOutOfRange {
            spacing,
            num_inference_steps: 1000,
            steps_offset: 1,
            largest_timestep: 1000,
            num_train_timesteps: 1000,
        } if spacing == "leading"
    );
    let message = err.to_string();
    assert!(message.contains("timestep 1000"), "{message}");
    assert!(message.contains("0..=999"), "{message}");
    assert!(message.contains("steps_offset 1"), "{message}");
    assert_eq!(s.timesteps(), before.as_slice());
    assert_eq!(s.num_inference_steps(), Some(50));

    // One step fewer fits: 999 steps of stride 1, offset 1, end at 999.
    s.set_timesteps(999).expect("999 steps");
    assert_eq!(s.timesteps()[0], 999);
}

#[test]
fn huge_steps_offset_is_rejected_without_overflow() {
    let config = DdimConfig {
        steps_offset: usize::MAX,
        ..DdimConfig::default()
    };
    let mut s = DdimScheduler::new(config).expect("offset is not validated up front");
    assert_err!(
        s.set_timesteps(10),
        DdimError::ScheduleOutOfRange {
            steps_offset: usize::MAX,
            ..
        }
    );
}

// ---------------------------------------------------------------------------------------------
// step
// ---------------------------------------------------------------------------------------------

#[test]
fn step_before_set_timesteps_is_timesteps_not_set() {
    let s = DdimScheduler::new(DdimConfig::default()).expect("default");
    let x = Array4::<f32>::zeros((1, 4, 8, 8));
    let err = assert_err!(s.step(&x, 500, &x), DdimError::TimestepsNotSet);
    assert!(err.to_string().contains("set_timesteps"), "{err}");

    for_each_source(1.0, &x, |options| {
        assert_err!(
            s.step_with(&x, 500, &x, options),
            DdimError::TimestepsNotSet
        );
    });
}

#[test]
fn timestep_equal_to_num_train_timesteps_is_out_of_range() {
    let s = scheduler(DdimConfig::default(), 10);
    let x = Array2::<f32>::zeros((2, 3));
    let err = assert_err!(
        s.step(&x, 1000, &x),
        DdimError::TimestepOutOfRange {
            timestep: 1000,
            num_train_timesteps: 1000
        }
    );
    let message = err.to_string();
    assert!(
        message.contains("1000") && message.contains("0..=999"),
        "{message}"
    );

    // The last training timestep is fine, on the schedule or not.
    assert!(s.step(&x, 999, &x).is_ok());
}

#[test]
fn timestep_far_above_num_train_timesteps_is_out_of_range() {
    let s = scheduler(DdimConfig::default(), 10);
    let x = Array2::<f64>::zeros((2, 3));
    for t in [1001, 1_000_000, usize::MAX] {
        let err = assert_err!(
            s.step(&x, t, &x),
            DdimError::TimestepOutOfRange { timestep, .. } if *timestep == t
        );
        assert!(err.to_string().contains(&t.to_string()), "{err}");
        for_each_source(0.5, &x, |options| {
            assert_err!(
                s.step_with(&x, t, &x, options),
                DdimError::TimestepOutOfRange { .. }
            );
        });
    }
}

#[test]
fn model_output_of_another_shape_is_shape_mismatch_naming_both_shapes() {
    let s = scheduler(DdimConfig::default(), 10);
    let output = Array4::<f32>::zeros((1, 4, 8, 8));
    let sample = Array4::<f32>::zeros((1, 4, 8, 9));
    let err = s.step(&output, 500, &sample).expect_err("shapes differ");
    assert_shape_mismatch(err, "model_output", &[1, 4, 8, 8], &[1, 4, 8, 9]);

    // Also when the number of axes differs (dynamic dimensionality).
    let output = ArrayD::<f32>::zeros(IxDyn(&[2, 3]));
    let sample = ArrayD::<f32>::zeros(IxDyn(&[2, 3, 1]));
    assert_err!(
        s.step(&output, 500, &sample),
        DdimError::ShapeMismatch { found, expected, .. }
            if found == &[2, 3] && expected == &[2, 3, 1]
    );

    // The same check guards the noisy steps, whatever their noise source.
    let output = Array2::<f32>::zeros((2, 3));
    let sample = Array2::<f32>::zeros((3, 2));
    for_each_source(1.0, &sample, |options| {
        let err = s
            .step_with(&output, 500, &sample, options)
            .expect_err("shapes differ");
        assert_shape_mismatch(err, "model_output", &[2, 3], &[3, 2]);
    });
}

#[test]
fn variance_noise_of_another_shape_is_shape_mismatch_even_at_eta_zero() {
    let s = scheduler(DdimConfig::default(), 10);
    let x = Array2::<f32>::zeros((2, 3));
    let noise = Array2::<f32>::zeros((2, 4));
    for e in [0.0, 1.0] {
        let given = || options(e, NoiseSource::given(&noise));
        let err = s.step_with(&x, 500, &x, given()).expect_err("noise shape");
        assert_shape_mismatch(err, "variance_noise", &[2, 4], &[2, 3]);
        // Every destination, and the per-item batch, check it too.
        let mut sample = x.clone();
        let err = s
            .step_in_place(&x, 500, &mut sample, given())
            .expect_err("noise shape");
        assert_shape_mismatch(err, "variance_noise", &[2, 4], &[2, 3]);
        let err = s
            .step_batch(&x, &[900, 100], &x, given())
            .expect_err("noise shape");
        assert_shape_mismatch(err, "variance_noise", &[2, 4], &[2, 3]);
    }
}

#[test]
fn thresholding_a_one_dimensional_array_is_too_few_axes() {
    let s = thresholding_scheduler();
    let x = Array1::<f32>::from_elem(6, 0.5);
    let check = |result: Result<_, DdimError>| {
        let err = assert_err!(
            result,
            DdimError::TooFewAxes {
                found: 1,
                required: 2,
                ..
            }
        );
        assert!(err.to_string().contains("thresholding"), "{err}");
    };
    check(s.step(&x, 500, &x));
    for_each_source(1.0, &x, |options| check(s.step_with(&x, 500, &x, options)));

    // Two axes (batch and features) are enough.
    let x2 = Array2::<f32>::from_elem((2, 3), 0.5);
    let out = s.step(&x2, 500, &x2).expect("2-D thresholding");
    assert_eq!(out.prev_sample.shape(), &[2, 3]);
    assert!(out.prev_sample.iter().all(|v| v.is_finite()));

    // Without thresholding a 1-D array is fine.
    let plain = scheduler(DdimConfig::default(), 10);
    assert!(plain.step(&x, 500, &x).is_ok());
}

#[test]
fn bad_eta_is_invalid_eta_with_given_noise() {
    let s = scheduler(DdimConfig::default(), 10);
    let x = Array2::<f32>::from_elem((2, 3), 0.25);
    for bad in [
        -0.5,
        -f64::MIN_POSITIVE,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
    ] {
        let err = assert_err!(
            s.step_with(&x, 500, &x, options(bad, NoiseSource::given(&x))),
            DdimError::InvalidEta { eta }
                if eta.to_bits() == bad.to_bits() || (eta.is_nan() && bad.is_nan())
        );
        let message = err.to_string();
        assert!(message.contains(&format!("{bad:?}")), "{message}");
        assert!(message.contains(">= 0"), "{message}");
    }
}

#[test]
fn bad_eta_is_invalid_eta_with_drawn_noise() {
    let s = scheduler(DdimConfig::default(), 10);
    let x = Array2::<f64>::from_elem((2, 3), 0.25);
    let t = thresholding_scheduler();
    for bad in [-1.0, f64::NAN, f64::INFINITY] {
        let (mut rng, mut generator) = (rng(), TorchGenerator::manual_seed(0));
        for options in [
            options(bad, NoiseSource::Rng(&mut rng)),
            options(bad, NoiseSource::Torch(&mut generator)),
        ] {
            let err = assert_err!(
                s.step_with(&x, 500, &x, options),
                DdimError::InvalidEta { eta }
                    if eta.to_bits() == bad.to_bits() || (eta.is_nan() && bad.is_nan())
            );
            assert!(err.to_string().contains(&bad.to_string()), "{err}");
        }
        // Nothing was drawn.
        assert_eq!(rng, self::rng());
        assert!(generator == TorchGenerator::manual_seed(0));
    }
    // Also with thresholding, where the step runs per batch item.
    assert_err!(
        t.step_with(
            &x,
            500,
            &x,
            options(f64::INFINITY, NoiseSource::Rng(&mut rng()))
        ),
        DdimError::InvalidEta { .. }
    );
}

/// `eta > 0` with no noise source is an error, not a silent deterministic step; it is the last
/// check of a step, so any other problem is reported instead.
#[test]
fn positive_eta_without_a_noise_source_is_missing_noise() {
    let s = scheduler(DdimConfig::default(), 10);
    let x = Array2::<f32>::from_elem((2, 3), 0.25);
    for e in [0.5, 1.0, f64::MIN_POSITIVE, 1e39] {
        let missing = |result: Result<_, DdimError>| {
            let err = assert_err!(
                result,
                DdimError::MissingNoise { eta } if eta.to_bits() == e.to_bits()
            );
            let message = err.to_string();
            assert!(
                message.contains(&format!("eta is {e:?}")) && message.contains("NoiseSource"),
                "{message}"
            );
        };
        missing(s.step_with(&x, 500, &x, eta(e)).map(drop));
        missing(s.step_batch(&x, &[900, 100], &x, eta(e)).map(drop));
        // The caller's buffers and sample are left untouched.
        let mut out = DdimSchedulerOutput::zeros(x.raw_dim());
        out.prev_sample.fill(7.0);
        let before = out.clone();
        let (prev, x0) = (&mut out.prev_sample, &mut out.pred_original_sample);
        missing(s.step_into(&x, 500, &x, eta(e), prev, x0));
        assert_eq!(out, before);
        let mut sample = x.clone();
        missing(s.step_in_place(&x, 500, &mut sample, eta(e)));
        assert_eq!(sample, x);
    }
    // eta = 0, of either sign, needs no noise.
    let plain = s.step(&x, 500, &x).expect("step");
    for e in [0.0, -0.0] {
        assert_eq!(s.step_with(&x, 500, &x, eta(e)).expect("eta 0"), plain);
    }
    // Every other problem comes first.
    let other = Array2::<f32>::zeros((3, 2));
    let err = s.step_with(&other, 500, &x, eta(1.0)).expect_err("shape");
    assert_shape_mismatch(err, "model_output", &[3, 2], &[2, 3]);
    let mut buffer = other.clone();
    let err = s
        .step_into(&x, 500, &x, eta(1.0), &mut buffer, &mut other.clone())
        .expect_err("buffer shape");
    assert_shape_mismatch(err, "prev_sample", &[3, 2], &[2, 3]);
    assert_err!(
        s.step_with(&x, 500, &x, eta(f64::NAN)),
        DdimError::InvalidEta { .. }
    );
    assert_err!(
        s.step_with(&x, 1000, &x, eta(1.0)),
        DdimError::TimestepOutOfRange { .. }
    );
    assert_err!(
        s.step_batch(&x, &[900], &x, eta(1.0)),
        DdimError::BatchSizeMismatch { .. }
    );
    let line = Array1::<f32>::zeros(4);
    assert_err!(
        thresholding_scheduler().step_with(&line, 500, &line, eta(1.0)),
        DdimError::TooFewAxes { .. }
    );
}

// ---------------------------------------------------------------------------------------------
// add_noise and get_velocity
// ---------------------------------------------------------------------------------------------

#[test]
fn add_noise_needs_one_timestep_per_batch_item() {
    let s = scheduler(DdimConfig::default(), 10);
    let x = Array2::<f32>::zeros((3, 4));
    for timesteps in [&[10usize, 20][..], &[10, 20, 30, 40][..], &[][..]] {
        let err = assert_err!(
            s.add_noise(&x, &x, timesteps),
            DdimError::BatchSizeMismatch { count, batch_size: 3 } if *count == timesteps.len()
        );
        let message = err.to_string();
        assert!(
            message.contains(&format!("{} timesteps", timesteps.len()))
                && message.contains("batch of 3"),
            "{message}"
        );
    }
}

#[test]
fn get_velocity_needs_one_timestep_per_batch_item() {
    let s = scheduler(DdimConfig::default(), 10);
    let x = Array4::<f64>::zeros((2, 1, 2, 2));
    assert_err!(
        s.get_velocity(&x, &x, &[5]),
        DdimError::BatchSizeMismatch {
            count: 1,
            batch_size: 2
        }
    );
}

#[test]
fn add_noise_and_get_velocity_refuse_out_of_range_timesteps() {
    let s = DdimScheduler::new(DdimConfig::default()).expect("no set_timesteps needed");
    let x = Array2::<f32>::zeros((2, 3));
    assert_err!(
        s.add_noise(&x, &x, &[0, 1000]),
        DdimError::TimestepOutOfRange {
            timestep: 1000,
            num_train_timesteps: 1000
        }
    );
    assert_err!(
        s.get_velocity(&x, &x, &[usize::MAX, 3]),
        DdimError::TimestepOutOfRange {
            timestep: usize::MAX,
            ..
        }
    );
    // In range works without set_timesteps.
    assert!(s.add_noise(&x, &x, &[0, 999]).is_ok());
}

#[test]
fn add_noise_and_get_velocity_refuse_mismatched_shapes() {
    let s = DdimScheduler::new(DdimConfig::default()).expect("default");
    let a = Array2::<f32>::zeros((2, 3));
    let b = Array2::<f32>::zeros((2, 5));
    for err in [
        s.add_noise(&a, &b, &[1, 2]).expect_err("add_noise shapes"),
        s.get_velocity(&a, &b, &[1, 2])
            .expect_err("get_velocity shapes"),
    ] {
        assert_shape_mismatch(err, "noise", &[2, 5], &[2, 3]);
    }
}

#[test]
fn add_noise_and_get_velocity_need_a_batch_axis() {
    let s = DdimScheduler::new(DdimConfig::default()).expect("default");
    let scalar = Array0::<f32>::from_elem((), 1.0);
    for result in [
        s.add_noise(&scalar, &scalar, &[1]),
        s.get_velocity(&scalar, &scalar, &[1]),
        s.add_noise(&scalar, &scalar, &[]),
    ] {
        let err = assert_err!(
            result,
            DdimError::TooFewAxes {
                found: 0,
                required: 1,
                ..
            }
        );
        assert!(err.to_string().contains("at least 1 axes"), "{err}");
    }
}

// ---------------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------------

#[test]
fn missing_config_file_is_io_error_naming_the_path() {
    let dir = ScratchDir::new("missing");
    let path = dir.path().join("no_such_config.json");
    let err = DdimConfig::from_file(&path).expect_err("missing file");
    let message = err.to_string();
    match &err {
        DdimError::Io {
            action,
            path: p,
            source,
        } => {
            assert_eq!(*action, "read");
            assert_eq!(p, &path);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected Io, got {other:?}"),
    }
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(
        std::error::Error::source(&err).is_some(),
        "the io::Error is the source"
    );
}

#[test]
fn directory_given_as_config_file_is_not_a_file() {
    let dir = ScratchDir::new("is-a-dir");
    let err = assert_err!(
        DdimConfig::from_file(dir.path()),
        DdimError::NotAFile { path, found: "a directory" } if path == dir.path()
    );
    let message = err.to_string();
    assert!(
        message.contains(&dir.path().display().to_string()),
        "{message}"
    );
}

#[test]
fn config_file_with_bad_json_is_a_parse_error() {
    let dir = ScratchDir::new("bad-json");
    let path = dir.path().join("scheduler_config.json");
    std::fs::write(&path, "{\n  \"clip_sample\": maybe\n}\n").expect("write");
    assert_err!(
        DdimConfig::from_file(&path),
        DdimError::ConfigParse { line: 2, .. }
    );
    // from_pretrained finds the file and reports the same problem.
    assert_err!(
        DdimScheduler::from_pretrained(dir.path()),
        DdimError::ConfigParse { line: 2, .. }
    );
}

#[test]
fn from_pretrained_without_a_config_lists_the_three_paths_tried() {
    let dir = ScratchDir::new("no-config");
    // Something else in the folder, and an empty `scheduler` subfolder.
    std::fs::write(dir.path().join("model_index.json"), "{}").expect("write");
    std::fs::create_dir(dir.path().join("scheduler")).expect("mkdir");

    let expected = vec![
        dir.path().to_path_buf(),
        dir.path().join("scheduler_config.json"),
        dir.path().join("scheduler").join("scheduler_config.json"),
    ];
    let err = assert_err!(
        DdimScheduler::from_pretrained(dir.path()),
        DdimError::ConfigNotFound { path, tried } if path == dir.path() && tried == &expected
    );
    let message = err.to_string();
    for p in &expected {
        assert!(
            message.contains(&format!("`{}`", p.display())),
            "{message} should name {}",
            p.display()
        );
    }
}

#[test]
fn from_pretrained_on_a_missing_path_is_config_not_found() {
    let dir = ScratchDir::new("missing-path");
    let gone = dir.path().join("not-downloaded-yet");
    assert_err!(
        DdimScheduler::from_pretrained(&gone),
        DdimError::ConfigNotFound { path, tried } if path == &gone && tried.len() == 3
    );
}

// ---------------------------------------------------------------------------------------------
// Empty arrays are not errors
// ---------------------------------------------------------------------------------------------

/// Runs every array method on zero-element inputs of `shape` and checks the results are empty
/// arrays of the same shape.
fn assert_empty_inputs_give_empty_outputs(shape: &[usize]) {
    let x = ArrayD::<f32>::zeros(IxDyn(shape));
    let batch = shape[0];
    let timesteps: Vec<usize> = (0..batch).map(|i| 100 * i).collect();
    for thresholding in [false, true] {
        let config = DdimConfig {
            thresholding,
            ..DdimConfig::default()
        };
        let s = scheduler(config, 10);

        let out = s.step(&x, 500, &x).expect("empty step");
        assert_eq!(
            out.prev_sample.shape(),
            shape,
            "thresholding {thresholding}"
        );
        assert_eq!(out.pred_original_sample.shape(), shape);
        assert_eq!(out.prev_sample.len(), 0);

        let out = s
            .step_with(&x, 500, &x, options(1.0, NoiseSource::given(&x)))
            .expect("empty noisy step");
        assert_eq!(
            out.prev_sample.shape(),
            shape,
            "thresholding {thresholding}"
        );
        assert_eq!(out.pred_original_sample.shape(), shape);

        let out = s
            .step_with(&x, 500, &x, options(0.5, NoiseSource::Rng(&mut rng())))
            .expect("empty rng step");
        assert_eq!(
            out.prev_sample.shape(),
            shape,
            "thresholding {thresholding}"
        );
        let mut generator = TorchGenerator::manual_seed(0);
        let out = s
            .step_with(
                &x,
                500,
                &x,
                options(0.5, NoiseSource::Torch(&mut generator)),
            )
            .expect("empty torch step");
        assert_eq!(
            out.prev_sample.shape(),
            shape,
            "thresholding {thresholding}"
        );

        let noisy = s.add_noise(&x, &x, &timesteps).expect("empty add_noise");
        assert_eq!(noisy.shape(), shape);
        let v = s
            .get_velocity(&x, &x, &timesteps)
            .expect("empty get_velocity");
        assert_eq!(v.shape(), shape);
    }
}

#[test]
fn empty_batch_steps_and_noises_to_empty_results() {
    assert_empty_inputs_give_empty_outputs(&[0, 4, 8, 8]);
}

#[test]
fn empty_feature_axis_steps_and_noises_to_empty_results() {
    assert_empty_inputs_give_empty_outputs(&[2, 0]);
}

#[test]
fn empty_arrays_with_static_dimensions_are_fine_too() {
    let s = thresholding_scheduler();
    let x: Array<f64, _> = Array4::zeros((0, 4, 8, 8));
    let out = s.step(&x, 0, &x).expect("empty step");
    assert_eq!(out.prev_sample.dim(), (0, 4, 8, 8));
    assert_eq!(s.add_noise(&x, &x, &[]).expect("empty").dim(), (0, 4, 8, 8));
}

// ---------------------------------------------------------------------------------------------
// The error type itself
// ---------------------------------------------------------------------------------------------

#[test]
fn error_type_is_send_sync_static_and_a_std_error() {
    fn assert_traits<E: std::error::Error + Send + Sync + 'static>() {}
    assert_traits::<DdimError>();

    // It converts into the boxed error of `?`-based applications and keeps its message.
    let err = DdimConfig::from_json_str("{").expect_err("bad JSON");
    let text = err.to_string();
    let boxed: Box<dyn std::error::Error + Send + Sync + 'static> = Box::new(err);
    assert_eq!(boxed.to_string(), text);
    assert!(boxed.downcast_ref::<DdimError>().is_some());
}

/// A FIFO would block a reader forever: it is refused from its metadata, without opening it.
#[cfg(unix)]
#[test]
fn a_fifo_given_as_config_file_is_refused_without_blocking() {
    let dir = ScratchDir::new("fifo");
    let path = dir.path().join("scheduler_config.json");
    let made = std::process::Command::new("mkfifo").arg(&path).status();
    if !made.is_ok_and(|status| status.success()) {
        eprintln!("mkfifo is not available; skipping");
        return;
    }
    let err = assert_err!(
        DdimConfig::from_file(&path),
        DdimError::NotAFile {
            found: "a FIFO",
            ..
        }
    );
    assert!(err.to_string().contains("not a regular file"), "{err}");
    // from_pretrained looks for regular files only, and says what it looked for.
    assert_err!(
        DdimScheduler::from_pretrained(dir.path()),
        DdimError::ConfigNotFound { .. }
    );
}

/// A device that never ends is refused before anything is read.
#[cfg(unix)]
#[test]
fn dev_zero_given_as_config_file_is_refused() {
    let path = std::path::Path::new("/dev/zero");
    if !path.exists() {
        return;
    }
    assert_err!(
        DdimConfig::from_file(path),
        DdimError::NotAFile {
            found: "a character device",
            ..
        }
    );
}

/// A file over the limit is refused from its size, without reading it (a sparse file of a
/// gigabyte costs nothing to make and would cost a gigabyte to read).
#[test]
fn an_oversized_config_file_is_refused_by_its_size() {
    let dir = ScratchDir::new("huge");
    let path = dir.path().join("scheduler_config.json");
    let file = std::fs::File::create(&path).expect("create");
    file.set_len(1 << 30).expect("sparse gigabyte");
    let err = assert_err!(
        DdimConfig::from_file(&path),
        DdimError::ConfigTooLarge { size, limit, .. }
            if *size == 1 << 30 && *limit == ddim::MAX_CONFIG_FILE_BYTES
    );
    let message = err.to_string();
    assert!(
        message.contains("1073741824 bytes") && message.contains("33554432"),
        "{message}"
    );
    // At the limit exactly, the file is read (and here fails as JSON, not for its size).
    file.set_len(ddim::MAX_CONFIG_FILE_BYTES).expect("resize");
    assert_err!(DdimConfig::from_file(&path), DdimError::ConfigParse { .. });
}

/// A failed write says "write", not "read".
#[test]
fn a_failed_to_file_says_write() {
    let dir = ScratchDir::new("write");
    let path = dir
        .path()
        .join("missing-folder")
        .join("scheduler_config.json");
    let err = assert_err!(
        DdimConfig::default().to_file(&path),
        DdimError::Io {
            action: "write",
            ..
        }
    );
    let message = err.to_string();
    assert!(
        message.starts_with("cannot write scheduler config"),
        "{message}"
    );
}

/// Messages quote what the caller gave, but never more than a bounded part of it: a huge string
/// or a float of hundreds of digits does not make a huge message.
#[test]
fn messages_quote_huge_values_in_bounded_form() {
    let huge = "x".repeat(5_000_000);
    let texts = [
        // An unknown enum string, a string where a number belongs, an unknown key.
        format!(r#"{{"beta_schedule": "{huge}"}}"#),
        format!(r#"{{"beta_start": "{huge}"}}"#),
    ];
    for text in &texts {
        let message = rejected(text).to_string();
        assert!(message.len() < 1000, "{} bytes", message.len());
        assert!(message.contains("5000000 characters in all"), "{message}");
    }
    let strict = DdimConfig::from_json_str_strict(&format!(r#"{{"{huge}": 1}}"#));
    let message = strict.expect_err("unknown key").to_string();
    assert!(
        message.len() < 1000 && message.contains("5000000 characters"),
        "{message}"
    );
    let parsed: Result<ddim::BetaSchedule, _> = huge.parse();
    let message = parsed.expect_err("not a schedule").to_string();
    assert!(
        message.len() < 1000 && message.contains("`linear`"),
        "{message}"
    );

    // Floats in their shortest round-trip form: -1e-300, not 300 digits.
    let s = scheduler(DdimConfig::default(), 10);
    let x = Array1::<f32>::zeros(4);
    let message = s
        .step_with(&x, 900, &x, eta(-1e-300))
        .expect_err("bad eta")
        .to_string();
    assert!(message.starts_with("eta is -1e-300,"), "{message}");
    let config = DdimConfig {
        clip_sample_range: -1e-300,
        ..DdimConfig::default()
    };
    let message = config.validate().expect_err("negative").to_string();
    assert!(message.contains("is -1e-300,"), "{message}");
}
