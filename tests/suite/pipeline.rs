//! The pipelines' arithmetic around the scheduler, against diffusers' own pipeline code
//! (`tests/fixtures/golden/pipeline.json`, written by `scripts/golden_pipeline.py`): img2img's
//! `get_timesteps`, SDXL's `denoising_end` / `denoising_start` cut-offs, and whole inpainting runs
//! of a 4-channel UNet.

use std::collections::HashMap;

use crate::common::{assert_close, config, tensor, Tensor};
use ddim::ndarray::ArrayD;
use ddim::{DdimError, DdimScheduler, PartialSchedule};
use serde_json::Value;

fn fixture() -> Value {
    crate::common::golden("pipeline")
}

/// A config of the fixture, read through the crate's JSON loader.
fn parse(config: &Value) -> ddim::DdimConfig {
    ddim::DdimConfig::from_json_str(&config.to_string()).expect("valid config")
}

/// An exact double from its recorded bit pattern.
fn exact(entry: &Value) -> f64 {
    let bits = entry["bits"].as_str().expect("bits");
    f64::from_bits(u64::from_str_radix(bits, 16).expect("hex bits"))
}

fn usize_of(v: &Value) -> usize {
    v.as_u64().expect("non-negative integer") as usize
}

/// The reference's raw schedules (which may end in the spurious `-1` of `trailing` spacing).
fn schedules(f: &Value) -> HashMap<String, Vec<i64>> {
    f["schedules"]
        .as_object()
        .expect("schedules")
        .iter()
        .map(|(k, v)| {
            let ts = v
                .as_array()
                .expect("list")
                .iter()
                .map(|t| t.as_i64().expect("int"));
            (k.clone(), ts.collect())
        })
        .collect()
}

/// A scheduler of the fixture's config for `spacing`, with `n` timesteps set.
fn scheduler(f: &Value, spacing: &str, n: usize) -> DdimScheduler {
    let mut s = DdimScheduler::new(parse(&f["configs"][spacing])).expect("valid config");
    s.set_timesteps(n).expect("valid step count");
    s
}

/// `raw[start..start + len]` without the spurious `-1` (the crate never hands it out).
fn expected_run(raw: &[i64], start: usize, len: usize) -> Vec<usize> {
    raw[start..start + len]
        .iter()
        .filter(|&&t| t >= 0)
        .map(|&t| t as usize)
        .collect()
}

/// Checks one partial schedule against the reference's `(start, len)`: identical timesteps and
/// start, or `NoStepsLeft` exactly where the reference runs no valid timestep.
fn check_run(
    what: &str,
    ours: Result<PartialSchedule<'_>, DdimError>,
    raw: &[i64],
    start: usize,
    len: usize,
) {
    let expected = expected_run(raw, start, len);
    match ours {
        Ok(run) => {
            assert_eq!(run.timesteps, expected.as_slice(), "{what}");
            assert_eq!(run.start, start, "{what}: start");
            assert_eq!(run.first(), expected[0], "{what}: first");
        }
        Err(DdimError::NoStepsLeft { .. }) => {
            assert!(
                expected.is_empty(),
                "{what}: refused, but the reference runs {expected:?}"
            )
        }
        Err(e) => panic!("{what}: {e}"),
    }
}

#[test]
fn img2img_strength_keeps_the_timesteps_of_the_pipelines_get_timesteps() {
    let f = fixture();
    let raw = schedules(&f);
    let strengths = f["strengths"].as_array().expect("strengths");
    let mut checked = 0;
    for group in f["img2img"].as_array().expect("img2img") {
        let spacing = group["spacing"].as_str().expect("spacing");
        let n = usize_of(&group["num_inference_steps"]);
        let s = scheduler(&f, spacing, n);
        let raw = &raw[group["schedule"].as_str().expect("schedule")];
        for row in group["results"].as_array().expect("results") {
            let row: Vec<i64> = row
                .as_array()
                .expect("row")
                .iter()
                .map(|v| v.as_i64().expect("int"))
                .collect();
            let strength = exact(&strengths[row[0] as usize]);
            let what = format!("{spacing} n {n} strength {strength:e}");
            let ours = s.img2img_timesteps(strength);
            if !(0.0..=1.0).contains(&strength) {
                assert!(
                    matches!(
                        ours,
                        Err(DdimError::InvalidArgument {
                            name: "strength",
                            ..
                        })
                    ),
                    "{what}: {ours:?}"
                );
                continue;
            }
            check_run(&what, ours, raw, row[2] as usize, row[4] as usize);
            checked += 1;
        }
        // What the reference cannot compute (NaN, infinities) is an error here too.
        for error in group["errors"].as_array().expect("errors") {
            let strength = exact(&strengths[usize_of(&error[0])]);
            assert!(
                s.img2img_timesteps(strength).is_err(),
                "{spacing} n {n} strength {strength}"
            );
        }
    }
    assert!(checked > 1000, "{checked} cases");
}

#[test]
fn sdxl_base_and_refiner_cut_the_schedule_where_the_pipelines_do() {
    let f = fixture();
    let raw = schedules(&f);
    let fractions = f["fractions"].as_array().expect("fractions");
    for (key, base) in [
        ("sdxl_denoising_end", true),
        ("sdxl_denoising_start", false),
    ] {
        for group in f[key].as_array().expect(key) {
            let spacing = group["spacing"].as_str().expect("spacing");
            let n = usize_of(&group["num_inference_steps"]);
            let s = scheduler(&f, spacing, n);
            let raw = &raw[group["schedule"].as_str().expect("schedule")];
            for row in group["results"].as_array().expect("results") {
                let row: Vec<usize> = row.as_array().expect("row").iter().map(usize_of).collect();
                let fraction = exact(&fractions[row[0]]);
                let what = format!("{key} {spacing} n {n} fraction {fraction:e}");
                if base {
                    check_run(&what, s.base_timesteps(fraction), raw, 0, row[3]);
                } else {
                    check_run(&what, s.refiner_timesteps(fraction), raw, row[2], row[4]);
                }
            }
        }
    }
}

#[test]
fn fractions_outside_the_open_unit_interval_are_errors_naming_them() {
    let f = fixture();
    let values = f["outside_values"].as_array().expect("outside_values");
    let s = scheduler(&f, "leading", 10);
    for entry in f["sdxl_outside"].as_array().expect("sdxl_outside") {
        let value = exact(&values[usize_of(&entry["value"])]);
        // The pipelines ignore these values (the base model then runs the whole schedule);
        // the crate refuses them.
        assert_eq!(entry["valid"], false, "{value}");
        for (name, result) in [
            ("denoising_end", s.base_timesteps(value)),
            ("denoising_start", s.refiner_timesteps(value)),
        ] {
            match result {
                Err(DdimError::InvalidArgument { name: n, .. }) => assert_eq!(n, name),
                other => panic!("{name} {value}: {other:?}"),
            }
        }
    }
}

/// The stand-in network of the fixture: `f32(latents * f32(0.6 + 0.3 t / T)) - f32(0.05) * base`.
fn stand_in(latents: &ArrayD<f32>, t: usize, base: &ArrayD<f32>) -> ArrayD<f32> {
    let factor = (0.6 + 0.3 * t as f64 / 1000.0) as f32;
    let mut out = latents * factor;
    out.zip_mut_with(base, |o, &b| *o -= 0.05f32 * b);
    out
}

#[test]
fn inpainting_runs_follow_the_pipeline_step_by_step() {
    let f = fixture();
    let inputs: HashMap<String, ArrayD<f32>> = f["inpaint_inputs"]
        .as_object()
        .expect("inputs")
        .iter()
        .map(|(k, v)| match tensor(v) {
            Tensor::F32(a) => (k.clone(), a),
            Tensor::F64(_) => panic!("float32 inputs"),
        })
        .collect();
    for run in f["inpaint"].as_array().expect("inpaint") {
        let name = run["name"].as_str().expect("name");
        let n = usize_of(&run["num_inference_steps"]);
        let mut s = DdimScheduler::new(config(run)).expect("valid config");
        s.set_timesteps(n).expect("valid step count");
        let strength = exact(&serde_json::json!({ "bits": run["strength_bits"] }));
        let window = s.img2img_timesteps(strength).expect("steps to run");
        let timesteps: Vec<usize> = window.timesteps.to_vec();
        let expected: Vec<usize> = run["timesteps"]
            .as_array()
            .expect("timesteps")
            .iter()
            .map(usize_of)
            .collect();
        assert_eq!(timesteps, expected, "{name}: timesteps");
        let image = &inputs[run["image_latents"].as_str().expect("image")];
        let noise = &inputs[run["noise"].as_str().expect("noise")];
        let mask = &inputs[run["mask"].as_str().expect("mask")];
        let base = &inputs[run["base"].as_str().expect("base")];

        let initial = if run["is_strength_max"].as_bool().expect("flag") {
            noise * s.init_noise_sigma()
        } else {
            let batch = vec![window.first(); image.shape()[0]];
            s.add_noise(image, noise, &batch).expect("add_noise")
        };
        let reference = |v: &Value| tensor(v).values();
        let values = |a: &ArrayD<f32>| a.iter().map(|&v| f64::from(v)).collect::<Vec<_>>();
        assert_close(
            &format!("{name}: initial"),
            &values(&initial),
            &reference(&run["initial"]),
            1e-6,
            1e-5,
        );

        let mut latents = initial;
        let blended = run["blended"].as_array().expect("blended");
        assert_eq!(blended.len(), timesteps.len());
        for (i, &t) in timesteps.iter().enumerate() {
            let eps = stand_in(&latents, t, base);
            latents = s.step(&eps, t, &latents).expect("step").prev_sample;
            let next = timesteps.get(i + 1).copied();
            s.blend_inpainting(&mut latents, image, noise, mask, next)
                .expect("blend");
            let what = format!("{name}: after step {i} (t = {t})");
            assert_close(
                &what,
                &values(&latents),
                &reference(&blended[i]),
                1e-4,
                1e-4,
            );
        }
        assert_close(
            &format!("{name}: final"),
            &values(&latents),
            &reference(&run["final"]),
            1e-4,
            1e-4,
        );
        // After the last step the known region is the image itself, exactly.
        for ((&x, &m), &img) in latents
            .iter()
            .zip(mask.broadcast(latents.raw_dim()).expect("broadcast").iter())
            .zip(image.iter())
        {
            if m == 0.0 {
                assert_eq!(x, img, "{name}: known region");
            }
        }
    }
}

#[test]
fn partial_schedules_and_the_blend_refuse_bad_arguments_before_touching_anything() {
    let f = fixture();
    let mut s = DdimScheduler::new(parse(&f["configs"]["leading"])).expect("valid config");
    assert!(matches!(
        s.img2img_timesteps(0.5),
        Err(DdimError::TimestepsNotSet)
    ));
    assert!(matches!(
        s.base_timesteps(0.5),
        Err(DdimError::TimestepsNotSet)
    ));
    s.set_timesteps(10).expect("valid");
    for strength in [-0.1, 1.01, f64::NAN, f64::INFINITY] {
        let err = s.img2img_timesteps(strength).expect_err("out of range");
        assert!(err.to_string().contains("strength"), "{err}");
    }
    let err = s.img2img_timesteps(0.05).expect_err("no step left");
    assert!(
        matches!(
            err,
            DdimError::NoStepsLeft {
                name: "strength",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("0.05"), "{err}");

    let shape = [2usize, 4, 8, 8];
    let latents0 = ArrayD::<f32>::from_elem(shape.as_slice(), 0.5);
    let image = ArrayD::<f32>::ones(shape.as_slice());
    let mask = ArrayD::<f32>::zeros(vec![2, 1, 8, 8]);
    let mut latents = latents0.clone();
    let bad_mask = ArrayD::<f32>::zeros(vec![2, 3, 8, 8]);
    let small = ArrayD::<f32>::zeros(vec![1, 4, 8, 8]);
    let cases: Vec<(&str, Result<(), DdimError>)> = vec![
        (
            "mask",
            s.blend_inpainting(&mut latents, &image, &image, &bad_mask, Some(1)),
        ),
        (
            "image",
            s.blend_inpainting(&mut latents, &small, &image, &mask, Some(1)),
        ),
        (
            "noise",
            s.blend_inpainting(&mut latents, &image, &small, &mask, Some(1)),
        ),
        (
            "timestep",
            s.blend_inpainting(&mut latents, &image, &image, &mask, Some(1000)),
        ),
    ];
    for (what, result) in cases {
        assert!(result.is_err(), "{what}");
    }
    assert_eq!(latents, latents0, "untouched on error");
}
