//! `DdimConfig`: its defaults, reading the `scheduler_config.json` files real models ship, the
//! JSON spelling of every enum value, and writing configs back without losing anything.

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::common::{fixture_path, ScratchDir, CONFIG_KEYS};
use ddim::{BetaSchedule, DdimConfig, DdimError, DdimScheduler, PredictionType, TimestepSpacing};
use serde_json::Value;

/// The real model configs kept in `tests/fixtures/configs/`.
const FIXTURES: [&str; 5] = [
    "ddpm-cifar10-32",
    "deepfloyd-if-stage-1",
    "stable-diffusion-2-1",
    "stable-diffusion-v1-5",
    "stable-diffusion-xl-base-1.0",
];

fn fixture(name: &str) -> PathBuf {
    fixture_path(&format!("configs/{name}.json"))
}

fn load_fixture(name: &str) -> DdimConfig {
    DdimConfig::from_file(fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn parse(json: &str) -> DdimConfig {
    DdimConfig::from_json_str(json).unwrap_or_else(|e| panic!("{json}: {e}"))
}

/// Writes `config`, reads it back, and checks nothing changed (bit for bit in the floats).
fn assert_round_trips(config: &DdimConfig, label: &str) {
    let json = config
        .to_json_string()
        .unwrap_or_else(|e| panic!("{label}: {e}"));
    let back = DdimConfig::from_json_str(&json).unwrap_or_else(|e| panic!("{label}: {e}\n{json}"));
    assert_eq!(&back, config, "{label}: JSON was\n{json}");
    let bits = |c: &DdimConfig| {
        let mut v = vec![
            c.beta_start.to_bits(),
            c.beta_end.to_bits(),
            c.dynamic_thresholding_ratio.to_bits(),
            c.clip_sample_range.to_bits(),
            c.sample_max_value.to_bits(),
        ];
        v.extend(c.trained_betas.iter().flatten().map(|b| b.to_bits()));
        v
    };
    assert_eq!(bits(&back), bits(config), "{label}: floats changed");
}

// ---------------------------------------------------------------------------------------------
// Defaults
// ---------------------------------------------------------------------------------------------

#[test]
fn defaults_match_diffusers_ddim_scheduler() {
    let c = DdimConfig::default();
    assert_eq!(c.num_train_timesteps, 1000);
    assert_eq!(c.beta_start, 0.0001);
    assert_eq!(c.beta_end, 0.02);
    assert_eq!(c.beta_schedule, BetaSchedule::Linear);
    assert_eq!(c.trained_betas, None);
    assert!(c.clip_sample);
    assert!(c.set_alpha_to_one);
    assert_eq!(c.steps_offset, 0);
    assert_eq!(c.prediction_type, PredictionType::Epsilon);
    assert!(!c.thresholding);
    assert_eq!(c.dynamic_thresholding_ratio, 0.995);
    assert_eq!(c.clip_sample_range, 1.0);
    assert_eq!(c.sample_max_value, 1.0);
    assert_eq!(c.timestep_spacing, TimestepSpacing::Leading);
    assert!(!c.rescale_betas_zero_snr);
    assert!(c.validate().is_ok());

    // The enums default to the same values on their own.
    assert_eq!(BetaSchedule::default(), BetaSchedule::Linear);
    assert_eq!(PredictionType::default(), PredictionType::Epsilon);
    assert_eq!(TimestepSpacing::default(), TimestepSpacing::Leading);
}

#[test]
fn empty_json_object_parses_to_the_defaults() {
    assert_eq!(parse("{}"), DdimConfig::default());
    assert_eq!(parse(" \n{ }\n "), DdimConfig::default());
}

#[test]
fn missing_keys_take_their_defaults() {
    let c = parse(r#"{"beta_schedule": "scaled_linear", "steps_offset": 1}"#);
    assert_eq!(
        c,
        DdimConfig {
            beta_schedule: BetaSchedule::ScaledLinear,
            steps_offset: 1,
            ..DdimConfig::default()
        }
    );
}

#[test]
fn unknown_keys_are_ignored() {
    let json = r#"{
        "_class_name": "PNDMScheduler",
        "_diffusers_version": "0.6.0",
        "skip_prk_steps": true,
        "variance_type": "fixed_small",
        "use_karras_sigmas": false,
        "interpolation_type": "linear",
        "nested": {"deeper": {"list": [1, 2.5, null, "x"]}, "flag": true},
        "a_list": [{"k": 1}, [], {}],
        "num_train_timesteps": 500
    }"#;
    assert_eq!(
        parse(json),
        DdimConfig {
            num_train_timesteps: 500,
            ..DdimConfig::default()
        }
    );
}

#[test]
fn null_trained_betas_is_accepted_as_none() {
    assert_eq!(parse(r#"{"trained_betas": null}"#).trained_betas, None);
    assert_eq!(parse(r#"{"trained_betas": null}"#), DdimConfig::default());
}

#[test]
fn trained_betas_list_is_read_in_order() {
    let c = parse(r#"{"num_train_timesteps": 3, "trained_betas": [0.25, 0, 1e-4]}"#);
    assert_eq!(c.trained_betas, Some(vec![0.25, 0.0, 0.0001]));
    let s = DdimScheduler::new(c).expect("valid betas");
    assert_eq!(s.betas(), &[0.25f32, 0.0, 0.0001]);
}

// ---------------------------------------------------------------------------------------------
// Real model configs
// ---------------------------------------------------------------------------------------------

#[test]
fn fixture_list_covers_every_config_in_the_folder() {
    let mut on_disk: Vec<String> = std::fs::read_dir(fixture_path("configs"))
        .expect("fixtures folder")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| p.file_stem().expect("stem").to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    assert_eq!(on_disk, FIXTURES.to_vec());
}

#[test]
fn every_fixture_config_loads_and_builds_a_scheduler() {
    for name in FIXTURES {
        let config = load_fixture(name);
        let mut s = DdimScheduler::new(config.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(s.config(), &config, "{name}");
        assert_eq!(s.alphas_cumprod().len(), config.num_train_timesteps);
        s.set_timesteps(50)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(s.timesteps().len(), 50, "{name}");
    }
}

#[test]
fn every_fixture_key_we_know_is_read_with_its_value() {
    // Compares each known key present in the file with what the loaded config writes back.
    for name in FIXTURES {
        let text = std::fs::read_to_string(fixture(name)).expect("read fixture");
        let file: Value = serde_json::from_str(&text).expect("fixture is JSON");
        let written: Value =
            serde_json::from_str(&load_fixture(name).to_json_string().expect("serialises"))
                .expect("output is JSON");
        let mut compared = 0;
        for key in CONFIG_KEYS {
            if let Some(value) = file.get(key) {
                assert_eq!(&written[key], value, "{name}: {key}");
                compared += 1;
            }
        }
        assert!(compared >= 6, "{name}: only {compared} known keys");
    }
}

#[test]
fn every_fixture_loads_through_from_pretrained_in_each_layout() {
    for name in FIXTURES {
        let expected = load_fixture(name);
        let text = std::fs::read_to_string(fixture(name)).expect("read fixture");

        // 1. The file itself.
        let s = DdimScheduler::from_pretrained(fixture(name))
            .unwrap_or_else(|e| panic!("{name} as a file: {e}"));
        assert_eq!(s.config(), &expected, "{name} as a file");

        // 2. A folder holding `scheduler_config.json`.
        let folder = ScratchDir::new("folder");
        std::fs::write(folder.path().join("scheduler_config.json"), &text).expect("write");
        let s = DdimScheduler::from_pretrained(folder.path())
            .unwrap_or_else(|e| panic!("{name} in a folder: {e}"));
        assert_eq!(s.config(), &expected, "{name} in a folder");

        // 3. A model folder with `scheduler/scheduler_config.json`, next to other parts.
        let model = ScratchDir::new("model");
        let scheduler_dir = model.path().join("scheduler");
        std::fs::create_dir_all(&scheduler_dir).expect("mkdir scheduler");
        std::fs::create_dir_all(model.path().join("unet")).expect("mkdir unet");
        std::fs::write(model.path().join("unet").join("config.json"), "{}").expect("write");
        std::fs::write(model.path().join("model_index.json"), "{}").expect("write");
        std::fs::write(scheduler_dir.join("scheduler_config.json"), &text).expect("write");
        let s = DdimScheduler::from_pretrained(model.path())
            .unwrap_or_else(|e| panic!("{name} in a model folder: {e}"));
        assert_eq!(s.config(), &expected, "{name} in a model folder");
    }
}

#[test]
fn from_pretrained_prefers_the_folders_own_config_over_the_scheduler_subfolder() {
    // The order of the three candidates: a config next to `scheduler/` wins.
    let model = ScratchDir::new("precedence");
    std::fs::create_dir_all(model.path().join("scheduler")).expect("mkdir");
    std::fs::write(
        model.path().join("scheduler_config.json"),
        r#"{"num_train_timesteps": 10}"#,
    )
    .expect("write");
    std::fs::write(
        model.path().join("scheduler").join("scheduler_config.json"),
        r#"{"num_train_timesteps": 20}"#,
    )
    .expect("write");
    let s = DdimScheduler::from_pretrained(model.path()).expect("loads");
    assert_eq!(s.config().num_train_timesteps, 10);
}

#[test]
fn stable_diffusion_2_1_config_has_its_values() {
    let c = load_fixture("stable-diffusion-2-1");
    let expected = DdimConfig {
        num_train_timesteps: 1000,
        beta_start: 0.00085,
        beta_end: 0.012,
        beta_schedule: BetaSchedule::ScaledLinear,
        trained_betas: None,
        clip_sample: false,
        set_alpha_to_one: false,
        steps_offset: 1,
        prediction_type: PredictionType::VPrediction,
        // Not in the file: defaults.
        ..DdimConfig::default()
    };
    assert_eq!(c, expected);
    let s = DdimScheduler::new(c).expect("builds");
    // set_alpha_to_one false: the last step lands on alpha_bar_0, not 1.
    assert_eq!(s.final_alpha_cumprod(), s.alphas_cumprod()[0]);
    assert!(s.final_alpha_cumprod() < 1.0);
}

#[test]
fn deepfloyd_if_stage_1_config_has_its_values() {
    let c = load_fixture("deepfloyd-if-stage-1");
    let expected = DdimConfig {
        num_train_timesteps: 1000,
        beta_start: 0.0001,
        beta_end: 0.02,
        beta_schedule: BetaSchedule::SquaredcosCapV2,
        trained_betas: None,
        clip_sample: true,
        clip_sample_range: 1.0,
        dynamic_thresholding_ratio: 0.95,
        prediction_type: PredictionType::Epsilon,
        sample_max_value: 1.5,
        thresholding: true,
        ..DdimConfig::default()
    };
    assert_eq!(c, expected);
}

#[test]
fn stable_diffusion_v1_5_and_xl_configs_have_their_values() {
    // Both: scaled_linear 0.00085..0.012, no clipping, offset 1, epsilon, leading.
    for name in ["stable-diffusion-v1-5", "stable-diffusion-xl-base-1.0"] {
        let expected = DdimConfig {
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::ScaledLinear,
            clip_sample: false,
            set_alpha_to_one: false,
            steps_offset: 1,
            ..DdimConfig::default()
        };
        assert_eq!(load_fixture(name), expected, "{name}");
    }
    // The DDPM CIFAR-10 config is the defaults throughout.
    assert_eq!(load_fixture("ddpm-cifar10-32"), DdimConfig::default());
}

// ---------------------------------------------------------------------------------------------
// Enum spellings
// ---------------------------------------------------------------------------------------------

/// `value` is written as the JSON string `spelling`, read back from it, shown as it by
/// `Display`, and read from a config file.
fn assert_spelling<T>(value: T, spelling: &str, key: &str, read: impl Fn(&DdimConfig) -> T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + std::fmt::Display + PartialEq,
    T: std::fmt::Debug,
{
    let quoted = format!("\"{spelling}\"");
    assert_eq!(serde_json::to_string(&value).expect("serialises"), quoted);
    assert_eq!(
        serde_json::from_str::<T>(&quoted).expect("deserialises"),
        value
    );
    assert_eq!(value.to_string(), spelling);
    let config = parse(&format!(r#"{{"{key}": {quoted}}}"#));
    assert_eq!(read(&config), value, "{key} = {spelling}");
}

#[test]
fn beta_schedule_spellings() {
    let read = |c: &DdimConfig| c.beta_schedule;
    assert_spelling(BetaSchedule::Linear, "linear", "beta_schedule", read);
    assert_spelling(
        BetaSchedule::ScaledLinear,
        "scaled_linear",
        "beta_schedule",
        read,
    );
    assert_spelling(
        BetaSchedule::SquaredcosCapV2,
        "squaredcos_cap_v2",
        "beta_schedule",
        read,
    );
}

#[test]
fn prediction_type_spellings() {
    let read = |c: &DdimConfig| c.prediction_type;
    assert_spelling(PredictionType::Epsilon, "epsilon", "prediction_type", read);
    assert_spelling(PredictionType::Sample, "sample", "prediction_type", read);
    assert_spelling(
        PredictionType::VPrediction,
        "v_prediction",
        "prediction_type",
        read,
    );
}

#[test]
fn timestep_spacing_spellings() {
    let read = |c: &DdimConfig| c.timestep_spacing;
    assert_spelling(
        TimestepSpacing::Leading,
        "leading",
        "timestep_spacing",
        read,
    );
    assert_spelling(
        TimestepSpacing::Trailing,
        "trailing",
        "timestep_spacing",
        read,
    );
    assert_spelling(
        TimestepSpacing::Linspace,
        "linspace",
        "timestep_spacing",
        read,
    );
    assert_spelling(
        TimestepSpacing::Quadratic,
        "quadratic",
        "timestep_spacing",
        read,
    );
}

// ---------------------------------------------------------------------------------------------
// Writing configs
// ---------------------------------------------------------------------------------------------

#[test]
fn to_json_string_names_the_class_and_writes_every_key() {
    let json = DdimConfig::default()
        .to_json_string()
        .expect("defaults serialise");
    assert!(json.contains(r#""_class_name": "DDIMScheduler""#), "{json}");
    let value: Value = serde_json::from_str(&json).expect("output is JSON");
    let object = value.as_object().expect("an object");
    let keys: BTreeSet<&str> = object.keys().map(String::as_str).collect();
    let mut expected: BTreeSet<&str> = CONFIG_KEYS.into_iter().collect();
    expected.insert("_class_name");
    expected.insert("_diffusers_version");
    assert_eq!(keys, expected);
    // diffusers reads `null` for "no trained betas".
    assert_eq!(object["trained_betas"], Value::Null);
    assert_eq!(object["beta_schedule"], "linear");
    assert_eq!(object["prediction_type"], "epsilon");
    assert_eq!(object["timestep_spacing"], "leading");
    assert!(object["_diffusers_version"].is_string());
}

#[test]
fn defaults_round_trip_through_json() {
    assert_round_trips(&DdimConfig::default(), "defaults");
}

#[test]
fn every_fixture_round_trips_through_json() {
    for name in FIXTURES {
        assert_round_trips(&load_fixture(name), name);
    }
}

#[test]
fn config_with_every_field_changed_round_trips_through_json() {
    let config = DdimConfig {
        num_train_timesteps: 4,
        beta_start: 0.00085,
        beta_end: 0.012,
        beta_schedule: BetaSchedule::SquaredcosCapV2,
        trained_betas: Some(vec![0.001, 0.01, 0.1, 0.5]),
        clip_sample: false,
        set_alpha_to_one: false,
        steps_offset: 3,
        prediction_type: PredictionType::Sample,
        thresholding: true,
        dynamic_thresholding_ratio: 0.9,
        clip_sample_range: 2.5,
        sample_max_value: 7.25,
        timestep_spacing: TimestepSpacing::Quadratic,
        rescale_betas_zero_snr: true,
        step_along_schedule: true,
    };
    assert_round_trips(&config, "all changed");
}

#[test]
fn awkward_trained_betas_round_trip_losslessly() {
    let betas = vec![
        0.1,
        1e-7,
        0.30000000000000004,
        0.999999,
        0.0,
        5e-324,
        f64::EPSILON,
        // The largest value below 1 that stays below 1 in float32 (1 - 2^-24).
        1.0 - f64::EPSILON * 2f64.powi(28),
        1.0 / 3.0,
        0.00085,
        123_456_789e-15,
    ];
    let config = DdimConfig {
        num_train_timesteps: betas.len(),
        trained_betas: Some(betas),
        ..DdimConfig::default()
    };
    assert_round_trips(&config, "awkward betas");
}

/// Shortest-form decimals that serde_json's default (fast, approximate) number parser reads back
/// one ulp off; the crate enables its `float_roundtrip` feature so that they survive.
#[test]
fn trained_betas_that_need_exact_float_parsing_round_trip() {
    let betas = vec![0.9978681966941043, 0.9626457467171381, 0.9158675135288491];
    let config = DdimConfig {
        num_train_timesteps: betas.len(),
        trained_betas: Some(betas),
        ..DdimConfig::default()
    };
    assert_round_trips(&config, "betas needing exact parsing");
}

#[test]
fn to_file_then_from_file_round_trips() {
    let dir = ScratchDir::new("to-file");
    let path = dir.path().join("scheduler_config.json");
    for name in FIXTURES {
        let config = load_fixture(name);
        config
            .to_file(&path)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            DdimConfig::from_file(&path).expect("reads back"),
            config,
            "{name}"
        );
        // And the written folder is a valid from_pretrained target.
        let s = DdimScheduler::from_pretrained(dir.path()).expect("from_pretrained");
        assert_eq!(s.config(), &config, "{name}");
    }
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(text.ends_with('\n'), "file ends with a newline");
}

#[test]
fn to_json_string_of_an_invalid_config_is_an_error_not_null() {
    let config = DdimConfig {
        clip_sample_range: f64::NAN,
        ..DdimConfig::default()
    };
    let err = config.to_json_string().expect_err("NaN cannot be written");
    assert!(
        matches!(&err, DdimError::InvalidConfig { key, .. } if key == "clip_sample_range"),
        "{err:?}"
    );

    let infinite = DdimConfig {
        beta_end: f64::INFINITY,
        ..DdimConfig::default()
    };
    let err = infinite
        .to_json_string()
        .expect_err("inf cannot be written");
    assert!(
        matches!(&err, DdimError::InvalidConfig { key, .. } if key == "beta_end"),
        "{err:?}"
    );

    // to_file refuses as well, and leaves no file behind.
    let dir = ScratchDir::new("invalid");
    let path = dir.path().join("scheduler_config.json");
    let err = config.to_file(&path).expect_err("invalid config");
    assert!(matches!(err, DdimError::InvalidConfig { .. }), "{err:?}");
    assert!(!path.exists());
}

#[test]
fn to_file_into_a_missing_folder_is_io_error_naming_the_path() {
    let dir = ScratchDir::new("missing-folder");
    let path = dir.path().join("absent").join("scheduler_config.json");
    let err = DdimConfig::default().to_file(&path).expect_err("no folder");
    assert!(
        matches!(&err, DdimError::Io { path: p, .. } if p == &path),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

/// Every key of the five public models' configs is either read or known to some diffusers
/// scheduler: nothing in them looks like a typo, and the strict loader accepts them all.
#[test]
fn real_configs_have_no_unknown_keys() {
    let dir = fixture_path("configs");
    let mut ignored_somewhere = 0;
    for entry in std::fs::read_dir(&dir).expect("configs folder") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("readable");
        let ignored = DdimConfig::ignored_keys(&text).expect("a JSON object");
        for key in &ignored {
            assert!(key.known_to_diffusers, "{}: {key:?}", path.display());
            assert_eq!(key.did_you_mean, None);
            assert!(!key.key.starts_with('_'), "private keys are not reported");
        }
        ignored_somewhere += ignored.len();
        assert_eq!(
            DdimConfig::from_json_str_strict(&text).expect("strict load"),
            DdimConfig::from_json_str(&text).expect("lenient load")
        );
    }
    // Stable Diffusion's configs carry PNDMScheduler's `skip_prk_steps`, at least.
    assert!(ignored_somewhere > 0);
}

#[test]
fn a_misspelled_key_is_reported_with_the_key_it_meant() {
    let json = r#"{
        "_class_name": "DDIMScheduler",
        "prediction_typ": "v_prediction",
        "use_karras_sigmas": true,
        "guidance": 7.5,
        "Timestep_Spacing": "trailing"
    }"#;
    let ignored = DdimConfig::ignored_keys(json).expect("a JSON object");
    let described: Vec<(&str, bool, Option<&str>)> = ignored
        .iter()
        .map(|k| (k.key.as_str(), k.known_to_diffusers, k.did_you_mean))
        .collect();
    // In the order of the keys (byte order: capitals first).
    assert_eq!(
        described,
        [
            ("Timestep_Spacing", false, Some("timestep_spacing")),
            ("guidance", false, None),
            ("prediction_typ", false, Some("prediction_type")),
            ("use_karras_sigmas", true, None),
        ]
    );
    // The lenient loader ignores all four, as diffusers does (which only warns) ...
    let lenient = DdimConfig::from_json_str(json).expect("lenient load");
    assert_eq!(lenient.prediction_type, PredictionType::Epsilon);
    // ... the strict one refuses an unknown key, naming what it meant.
    match DdimConfig::from_json_str_strict(
        r#"{"skip_prk_steps": true, "prediction_typ": "sample"}"#,
    ) {
        Err(DdimError::UnknownConfigKey { key, did_you_mean }) => {
            assert_eq!(key, "prediction_typ");
            assert_eq!(did_you_mean, Some("prediction_type"));
        }
        other => panic!("{other:?}"),
    }
    let message = DdimConfig::from_json_str_strict(r#"{"guidance": 1}"#)
        .expect_err("unknown key")
        .to_string();
    assert!(
        message.contains("`guidance`") && !message.contains("did you mean"),
        "{message}"
    );
    assert!(DdimConfig::ignored_keys("[1, 2]").is_err());
    assert_eq!(DdimConfig::ignored_keys("{}").expect("empty object"), []);
}
