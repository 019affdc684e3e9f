//! Meeting other tensor libraries: the affine form of a step (for tensors on a device) against
//! the step itself, and the slice calls against the array calls.

use crate::common::{random_array, scheduler};
use ddim::ndarray::{ArrayD, IxDyn};
use ddim::{
    DdimConfig, DdimError, DdimScheduler, NoiseSource, PredictionType, StepOptions, TimestepSpacing,
};
use rand::rngs::StdRng;
use rand::SeedableRng;

fn configs() -> Vec<(String, DdimConfig)> {
    let mut out = Vec::new();
    for prediction in [
        PredictionType::Epsilon,
        PredictionType::Sample,
        PredictionType::VPrediction,
    ] {
        for (spacing, zero_snr) in [
            (TimestepSpacing::Leading, false),
            (TimestepSpacing::Trailing, true),
        ] {
            let config = DdimConfig {
                prediction_type: prediction,
                timestep_spacing: spacing,
                rescale_betas_zero_snr: zero_snr,
                clip_sample: false,
                set_alpha_to_one: false,
                ..DdimConfig::default()
            };
            out.push((
                format!("{prediction}, {spacing}, zero SNR {zero_snr}"),
                config,
            ));
        }
    }
    out
}

/// Applied in float32 as a device would (two multiply-adds), the affine form gives the step's
/// results within float32 rounding of its terms, for every prediction type, eta and timestep.
#[test]
fn affine_form_applied_in_f32_matches_the_step() {
    let mut rng = StdRng::seed_from_u64(17);
    let shape = [2usize, 3, 5];
    let mut checked = 0;
    for (name, config) in configs() {
        let s = scheduler(config, 20);
        let x: ArrayD<f32> = random_array(&shape, &mut rng, 1.5);
        let m: ArrayD<f32> = random_array(&shape, &mut rng, 1.5);
        let z: ArrayD<f32> = random_array(&shape, &mut rng, 1.0);
        for &t in s.timesteps() {
            for eta in [0.0, 0.5, 1.0] {
                let a = s.affine_step(t, eta).expect("affine");
                let options = StepOptions {
                    eta,
                    noise: NoiseSource::given(&z),
                    ..Default::default()
                };
                let out = s.step_with(&m, t, &x, options).expect("step");
                let coefficients = [
                    a.prev_from_sample,
                    a.prev_from_model_output,
                    a.prev_from_noise,
                    a.x0_from_sample,
                    a.x0_from_model_output,
                ];
                if coefficients.iter().any(|c| !c.is_finite()) {
                    // Epsilon prediction at a zero-SNR schedule's last timestep divides by
                    // sqrt(alpha_bar) = 0: the step's x0 is not finite either.
                    assert!(
                        out.pred_original_sample.iter().all(|v| !v.is_finite()),
                        "{name}, t {t}"
                    );
                    continue;
                }
                let (ps, pm, pn) = (
                    a.prev_from_sample as f32,
                    a.prev_from_model_output as f32,
                    a.prev_from_noise as f32,
                );
                let (xs, xm) = (a.x0_from_sample as f32, a.x0_from_model_output as f32);
                for i in 0..x.len() {
                    let (xv, mv, zv) = (
                        x.as_slice().expect("std")[i],
                        m.as_slice().expect("std")[i],
                        z.as_slice().expect("std")[i],
                    );
                    let prev = ps * xv + pm * mv + pn * zv;
                    let x0 = xs * xv + xm * mv;
                    // Float32 rounding of the terms, amplified by the division the step makes.
                    let scale = (ps * xv).abs() + (pm * mv).abs() + (pn * zv).abs();
                    let tol =
                        1e-6 + 8.0 * f32::EPSILON * scale.max((xs * xv).abs() + (xm * mv).abs());
                    let got_prev = out.prev_sample.as_slice().expect("std")[i];
                    let got_x0 = out.pred_original_sample.as_slice().expect("std")[i];
                    assert!(
                        prev == got_prev || (prev - got_prev).abs() <= tol,
                        "{name}, t {t}, eta {eta}: prev {prev} vs {got_prev}"
                    );
                    let tol_x0 = 1e-6 + 8.0 * f32::EPSILON * ((xs * xv).abs() + (xm * mv).abs());
                    assert!(
                        x0 == got_x0 || (x0 - got_x0).abs() <= tol_x0,
                        "{name}, t {t}, eta {eta}: x0 {x0} vs {got_x0}"
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 10_000, "{checked}");
}

#[test]
fn affine_form_is_refused_where_x0_is_clamped() {
    for (option, config) in [
        ("clip_sample", DdimConfig::default()),
        (
            "thresholding",
            DdimConfig {
                thresholding: true,
                clip_sample: false,
                ..DdimConfig::default()
            },
        ),
    ] {
        let s = scheduler(config, 10);
        match s.affine_step(900, 0.0) {
            Err(DdimError::NotAffine { option: o }) => assert_eq!(o, option),
            other => panic!("{option}: {other:?}"),
        }
        let message = s.affine_step(900, 0.0).expect_err("not affine").to_string();
        assert!(message.contains(option), "{message}");
    }
    let s = scheduler(
        DdimConfig {
            clip_sample: false,
            ..DdimConfig::default()
        },
        10,
    );
    assert!(matches!(
        s.affine_step(900, -1.0),
        Err(DdimError::InvalidEta { .. })
    ));
    assert!(matches!(
        s.affine_step(1000, 0.0),
        Err(DdimError::TimestepOutOfRange { .. })
    ));
    let unset = DdimScheduler::new(DdimConfig {
        clip_sample: false,
        ..DdimConfig::default()
    })
    .expect("valid");
    assert!(matches!(
        unset.affine_step(900, 0.0),
        Err(DdimError::TimestepsNotSet)
    ));
}

/// The slice calls run the array calls' kernel: identical bits, for every destination.
#[test]
fn slice_calls_equal_the_array_calls_to_the_bit() {
    let mut rng = StdRng::seed_from_u64(3);
    let shape = [2usize, 4, 3, 3];
    for (name, config) in configs() {
        let s = scheduler(config, 10);
        let x: ArrayD<f32> = random_array(&shape, &mut rng, 1.0);
        let m: ArrayD<f32> = random_array(&shape, &mut rng, 1.0);
        let z: ArrayD<f32> = random_array(&shape, &mut rng, 1.0);
        let (xs, ms, zs) = (
            x.as_slice().expect("std"),
            m.as_slice().expect("std"),
            z.as_slice().expect("std"),
        );
        let t = s.timesteps()[2];
        let options = || StepOptions {
            eta: 0.7,
            noise: NoiseSource::given(&z),
            ..Default::default()
        };
        let expected = s.step_with(&m, t, &x, options()).expect("step");

        let (mut prev, mut x0) = (vec![0.0f32; x.len()], vec![0.0f32; x.len()]);
        let noise = NoiseSource::given_slice(zs, &shape).expect("noise slice");
        let slice_options = StepOptions {
            eta: 0.7,
            noise,
            ..Default::default()
        };
        s.step_slices(ms, t, xs, &shape, slice_options, &mut prev, &mut x0)
            .expect("slices");
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&prev),
            bits(expected.prev_sample.as_slice().expect("std")),
            "{name}"
        );
        assert_eq!(
            bits(&x0),
            bits(expected.pred_original_sample.as_slice().expect("std")),
            "{name}"
        );

        let mut in_place = xs.to_vec();
        s.step_slice_in_place(ms, t, &mut in_place, &shape, options())
            .expect("in place");
        assert_eq!(bits(&in_place), bits(&prev), "{name}: in place");

        let timesteps = [t, s.timesteps()[7]];
        let noisy = s.add_noise(&x, &z, &timesteps).expect("add_noise");
        let mut out = vec![0.0f32; x.len()];
        s.add_noise_slices(xs, zs, &timesteps, &shape, &mut out)
            .expect("add_noise slices");
        assert_eq!(
            bits(&out),
            bits(noisy.as_slice().expect("std")),
            "{name}: add_noise"
        );
    }
}

#[test]
fn slices_that_do_not_hold_the_shape_are_errors_and_leave_outputs_untouched() {
    let s = scheduler(DdimConfig::default(), 10);
    let shape = [2usize, 3];
    let (m, x) = (vec![0.1f32; 6], vec![0.5f32; 6]);
    let (mut prev, mut x0) = (vec![7.0f32; 6], vec![7.0f32; 6]);
    let short = vec![0.0f32; 5];
    let mut short_out = vec![7.0f32; 5];
    let cases: Vec<(&str, Result<(), DdimError>)> = vec![
        (
            "model_output",
            s.step_slices(
                &short,
                900,
                &x,
                &shape,
                StepOptions::default(),
                &mut prev,
                &mut x0,
            ),
        ),
        (
            "sample",
            s.step_slices(
                &m,
                900,
                &short,
                &shape,
                StepOptions::default(),
                &mut prev,
                &mut x0,
            ),
        ),
        (
            "prev_sample",
            s.step_slices(
                &m,
                900,
                &x,
                &shape,
                StepOptions::default(),
                &mut short_out,
                &mut x0,
            ),
        ),
        (
            "pred_original_sample",
            s.step_slices(
                &m,
                900,
                &x,
                &shape,
                StepOptions::default(),
                &mut prev,
                &mut short_out,
            ),
        ),
        (
            "model_output",
            s.step_slice_in_place(
                &short,
                900,
                &mut prev.clone(),
                &shape,
                StepOptions::default(),
            ),
        ),
        (
            "out",
            s.add_noise_slices(&m, &x, &[0, 0], &shape, &mut short_out),
        ),
    ];
    for (name, result) in cases {
        match result {
            Err(DdimError::SliceLength {
                name: n,
                len,
                shape: sh,
                expected,
            }) => {
                assert_eq!(
                    (n, len, sh.as_slice(), expected),
                    (name, 5, shape.as_slice(), Some(6))
                );
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    assert!(
        prev.iter().chain(&x0).chain(&short_out).all(|&v| v == 7.0),
        "untouched"
    );
    let err = s
        .step_slices(
            &m,
            900,
            &x,
            &[usize::MAX, 2],
            StepOptions::default(),
            &mut prev,
            &mut x0,
        )
        .expect_err("overflowing shape");
    assert!(err.to_string().contains("more than fit"), "{err}");
    assert!(NoiseSource::<f32>::given_slice(&m, &[4]).is_err());
    let d = ArrayD::<f32>::zeros(IxDyn(&[2, 3]));
    assert!(NoiseSource::given_slice(d.as_slice().expect("std"), &[3, 2]).is_ok());
}
