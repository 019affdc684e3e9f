//! Arrays of every kind the API promises to take: f32 and f64, any dimensionality, owned arrays
//! and views in any memory layout; plus the scheduler's thread-safety and RNG contracts.

use ddim::ndarray::{Array, Array1, Array2, Array4, ArrayD, Axis, IxDyn, ShapeBuilder};
use ddim::{
    DdimConfig, DdimScheduler, DdimSchedulerOutput, NoiseSource, PredictionType, StepOptions,
    TimestepSpacing,
};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

use crate::common::{bits, scheduler, TestFloat};

/// Deterministic, irregular values in roughly [-2, 2].
fn values(shape: (usize, usize, usize, usize), seed: f32) -> Array4<f32> {
    let mut i = 0.0f32;
    Array4::from_shape_simple_fn(shape, || {
        i += 1.0;
        2.0 * (i * 0.7548 + seed).sin() * (i * 0.1234).cos()
    })
}

fn thresholding() -> DdimConfig {
    DdimConfig {
        thresholding: true,
        dynamic_thresholding_ratio: 0.8,
        sample_max_value: 1.5,
        ..DdimConfig::default()
    }
}

#[test]
fn scheduler_is_send_sync_clone() {
    fn assert_traits<T: Send + Sync + Clone + 'static>() {}
    assert_traits::<DdimScheduler>();
    assert_traits::<DdimConfig>();
    let s = scheduler(DdimConfig::default(), 10);
    let copy = s.clone();
    assert_eq!(copy, s);
}

/// A transposed (column-major) view and a strided slice go through the general path and must
/// give exactly what their contiguous copies give, with and without thresholding and noise.
#[test]
fn non_contiguous_views_give_the_same_result_as_contiguous_copies() {
    for config in [DdimConfig::default(), thresholding()] {
        let s = scheduler(config, 20);
        let t = s.timesteps()[3];
        let m = values((2, 3, 5, 7), 0.3);
        let x = values((2, 3, 5, 7), 1.1);
        let z = values((2, 3, 5, 7), 2.9);
        fn options(z: &Array4<f32>) -> StepOptions<'_, f32> {
            StepOptions {
                eta: 0.7,
                noise: NoiseSource::given(z),
                use_clipped_model_output: true,
            }
        }
        let contiguous = s.step_with(&m, t, &x, options(&z)).expect("step");

        // Column-major copies hold the same logical values in another memory order.
        let fortran = |a: &Array4<f32>| {
            let mut f = Array4::zeros(a.raw_dim().f());
            f.assign(a);
            f
        };
        let (mf, xf, zf) = (fortran(&m), fortran(&x), fortran(&z));
        assert!(!mf.is_standard_layout());
        let from_fortran = s.step_with(&mf, t, &xf, options(&zf)).expect("step");
        assert_eq!(from_fortran, contiguous);

        // Mixed layouts: contiguous inputs, column-major noise.
        let mixed = s.step_with(&m, t, &x, options(&zf)).expect("step");
        assert_eq!(mixed, contiguous);

        // Every other element of a larger array along the last axis.
        let wide = |a: &Array4<f32>| {
            let mut w = Array4::zeros((2, 3, 5, 14));
            w.slice_mut(ddim::ndarray::s![.., .., .., ..;2]).assign(a);
            w
        };
        let (mw, xw) = (wide(&m), wide(&x));
        let strided = ddim::ndarray::s![.., .., .., ..;2];
        let (mv, xv) = (mw.slice(strided), xw.slice(strided));
        assert!(mv.as_slice().is_none());
        let from_views = s.step(&mv, t, &xv).expect("step");
        assert_eq!(from_views, s.step(&m, t, &x).expect("step"));
    }
}

#[test]
fn any_dimensionality_works() {
    let s = scheduler(DdimConfig::default(), 10);
    let t = s.timesteps()[2];
    let m4 = values((2, 3, 4, 5), 0.5);
    let x4 = values((2, 3, 4, 5), 1.5);
    let reference = s.step(&m4, t, &x4).expect("4-D");

    // The same numbers as 1-D, 2-D and dynamic-dimensional arrays.
    let flat = |a: &Array4<f32>| a.iter().copied().collect::<Array1<f32>>();
    let out1 = s.step(&flat(&m4), t, &flat(&x4)).expect("1-D");
    assert_eq!(out1.prev_sample, flat(&reference.prev_sample));
    let m2 = flat(&m4).into_shape_with_order((6, 20)).expect("reshape");
    let x2 = flat(&x4).into_shape_with_order((6, 20)).expect("reshape");
    let out2 = s.step(&m2, t, &x2).expect("2-D");
    assert_eq!(
        out2.prev_sample.iter().copied().collect::<Array1<f32>>(),
        flat(&reference.prev_sample)
    );
    let out_dyn = s
        .step(&m4.clone().into_dyn(), t, &x4.clone().into_dyn())
        .expect("dyn");
    assert_eq!(out_dyn.prev_sample, reference.prev_sample.into_dyn());

    // A 0-dimensional array is a single element.
    let m0 = Array::from_elem(IxDyn(&[]), 0.25f32);
    let x0 = Array::from_elem(IxDyn(&[]), -0.5f32);
    let out0 = s.step(&m0, t, &x0).expect("0-D");
    let as1 = s
        .step(
            &Array1::from_elem(1, 0.25f32),
            t,
            &Array1::from_elem(1, -0.5f32),
        )
        .expect("1 element");
    assert_eq!(
        out0.prev_sample.iter().next(),
        as1.prev_sample.iter().next()
    );
}

/// The reference needs at least three axes to threshold; any batch axis plus one feature axis
/// is enough here, and the result is the one of the same data with the features split up.
#[test]
fn thresholding_works_on_two_axes_and_matches_the_four_axis_result() {
    let s = scheduler(thresholding(), 10);
    let t = s.timesteps()[0];
    let m4 = values((3, 2, 4, 4), 0.2) * 3.0;
    let x4 = values((3, 2, 4, 4), 0.9);
    let four = s.step(&m4, t, &x4).expect("4-D");
    let m2 = m4.clone().into_shape_with_order((3, 32)).expect("reshape");
    let x2 = x4.clone().into_shape_with_order((3, 32)).expect("reshape");
    let two = s.step(&m2, t, &x2).expect("2-D");
    assert_eq!(
        two.pred_original_sample.iter().collect::<Vec<_>>(),
        four.pred_original_sample.iter().collect::<Vec<_>>()
    );
    // Thresholding really acted: every x0 lies in [-1, 1] after division by s >= 1.
    assert!(four.pred_original_sample.iter().all(|v| v.abs() <= 1.0));
    // And it acts per batch item: an item scaled up does not change the others.
    let mut louder = m4.clone();
    louder.index_axis_mut(Axis(0), 0).mapv_inplace(|v| v * 10.0);
    let other = s.step(&louder, t, &x4).expect("4-D");
    assert_eq!(
        other.pred_original_sample.index_axis(Axis(0), 1),
        four.pred_original_sample.index_axis(Axis(0), 1)
    );
}

#[test]
fn f32_and_f64_runs_of_one_loop_agree() {
    let config = DdimConfig {
        prediction_type: PredictionType::VPrediction,
        clip_sample: false,
        ..DdimConfig::default()
    };
    let s = scheduler(config, 25);
    let mut x32 = values((1, 2, 6, 6), 0.4);
    let mut x64 = x32.mapv(f64::from);
    for &t in s.timesteps() {
        let m32 = x32.mapv(|v| 0.3 * v + 0.1);
        let m64 = x64.mapv(|v| 0.3 * v + 0.1);
        x32 = s.step(&m32, t, &x32).expect("f32").prev_sample;
        x64 = s.step(&m64, t, &x64).expect("f64").prev_sample;
    }
    for (a, b) in x32.iter().zip(x64.iter()) {
        assert!(
            (f64::from(*a) - b).abs() <= 1e-5 + 1e-5 * b.abs(),
            "{a} vs {b}"
        );
    }
}

#[test]
fn rng_noise_is_reproducible_and_drawn_only_when_eta_is_positive() {
    let s = scheduler(DdimConfig::default(), 10);
    let t = s.timesteps()[1];
    let (m, x) = (values((1, 4, 8, 8), 0.1), values((1, 4, 8, 8), 0.6));
    let run = |seed: u64| {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let options = StepOptions {
            eta: 1.0,
            noise: NoiseSource::Rng(&mut rng),
            ..Default::default()
        };
        s.step_with(&m, t, &x, options).expect("step").prev_sample
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
    let deterministic = s.step(&m, t, &x).expect("step").prev_sample;
    assert_ne!(run(1), deterministic);

    // At eta = 0 the generator is left untouched, as in the reference.
    use rand::RngExt;
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let options = StepOptions {
        noise: NoiseSource::Rng(&mut rng),
        ..Default::default()
    };
    let out = s.step_with(&m, t, &x, options).expect("step");
    assert_eq!(out.prev_sample, deterministic);
    let first_draw = rand::rngs::StdRng::seed_from_u64(5).random::<u64>();
    assert_eq!(rng.random::<u64>(), first_draw);
}

/// The configs of the noise-order tests: clipping, thresholding, and neither.
fn noise_order_configs() -> [(&'static str, DdimConfig); 3] {
    [
        ("epsilon with clipping", DdimConfig::default()),
        ("thresholding", thresholding()),
        (
            "v_prediction",
            DdimConfig {
                prediction_type: PredictionType::VPrediction,
                clip_sample: false,
                ..DdimConfig::default()
            },
        ),
    ]
}

/// `(model_output, sample)` of the noise-order tests, in row-major or column-major memory.
fn noise_order_inputs(column_major: bool) -> (ArrayD<f32>, ArrayD<f32>) {
    let layout = |a: Array4<f32>| {
        if !column_major {
            return a.into_dyn();
        }
        let mut f = Array4::zeros(a.raw_dim().f());
        f.assign(&a);
        assert!(!f.is_standard_layout());
        f.into_dyn()
    };
    (
        layout(values((2, 3, 5, 7), 0.3) * 2.0),
        layout(values((2, 3, 5, 7), 1.1)),
    )
}

/// A [`NoiseSource::Rng`] step draws one `rand_distr::StandardNormal` value per element, in the
/// row-major order of the elements (batch item after batch item for `step_batch`), and nothing
/// more: every destination gives, to the bit, the step given the noise drawn beforehand from a
/// generator seeded alike, and leaves the generator where that drawing left it. Both element
/// types, with clipping, thresholding and re-derived noise.
#[test]
fn rng_noise_is_standard_normal_draws_in_row_major_order() {
    for (name, config) in noise_order_configs() {
        let s = scheduler(config, 10);
        let (m, x) = noise_order_inputs(false);
        check_rng_noise(&format!("{name}, f32"), &s, &m, &x);
        let (m, x) = (m.mapv(f64::from), x.mapv(f64::from));
        check_rng_noise(&format!("{name}, f64"), &s, &m, &x);
    }
}

/// The same in column-major memory (sample, model output and result buffers): the draws still
/// follow the row-major order of the elements, as `NoiseSource::Rng` documents, so the result
/// does not depend on the memory layout.
#[test]
fn rng_noise_follows_row_major_order_in_column_major_arrays() {
    for (name, config) in noise_order_configs() {
        let s = scheduler(config, 10);
        let (m, x) = noise_order_inputs(true);
        check_rng_noise(&format!("{name}, f32 column-major"), &s, &m, &x);
        let (m, x) = (m.mapv(f64::from), x.mapv(f64::from));
        assert!(!x.is_standard_layout());
        check_rng_noise(&format!("{name}, f64 column-major"), &s, &m, &x);
    }
}

/// Every step call with [`NoiseSource::Rng`] against the same call with noise drawn
/// beforehand (see `rng_noise_is_standard_normal_draws_in_row_major_order`), with result
/// buffers in the sample's memory layout.
fn check_rng_noise<T>(label: &str, s: &DdimScheduler, m: &ArrayD<T>, x: &ArrayD<T>)
where
    T: TestFloat,
    StandardNormal: Distribution<T>,
{
    use rand::RngExt;
    const SEED: u64 = 11;
    const ETA: f64 = 0.6;
    let mut predraw = StdRng::seed_from_u64(SEED);
    // In row-major order of the logical elements, whatever the layout of `x`.
    let z = ArrayD::from_shape_simple_fn(x.shape(), || StandardNormal.sample(&mut predraw));
    assert!(z.is_standard_layout());
    let next_after_draws = predraw.random::<u64>();
    let (t, batch_timesteps) = (s.timesteps()[2], [s.timesteps()[1], s.timesteps()[6]]);
    assert_eq!(x.shape()[0], batch_timesteps.len());
    for clipped in [false, true] {
        let label = format!("{label}, use_clipped_model_output {clipped}");
        let same_bits = |what: &str, drawn: &ArrayD<T>, given: &ArrayD<T>| {
            assert_eq!(bits(drawn), bits(given), "{label}: {what}");
        };
        let given = || StepOptions {
            eta: ETA,
            noise: NoiseSource::given(&z),
            use_clipped_model_output: clipped,
        };
        // Options drawing from `rng`, reseeded.
        fn drawn<T>(rng: &mut StdRng, clipped: bool) -> StepOptions<'_, T> {
            *rng = StdRng::seed_from_u64(SEED);
            StepOptions {
                eta: ETA,
                noise: NoiseSource::Rng(rng),
                use_clipped_model_output: clipped,
            }
        }
        let mut rng = StdRng::seed_from_u64(SEED);
        let after = |rng: &mut StdRng, call: &str| {
            assert_eq!(
                rng.random::<u64>(),
                next_after_draws,
                "{label}: {call} drew one normal per element"
            );
        };

        let expected = s.step_with(m, t, x, given()).expect("given");
        let out = s.step_with(m, t, x, drawn(&mut rng, clipped)).expect("rng");
        after(&mut rng, "step_with");
        same_bits(
            "step_with prev_sample",
            &out.prev_sample,
            &expected.prev_sample,
        );
        let (ours, theirs) = (&out.pred_original_sample, &expected.pred_original_sample);
        same_bits("step_with pred_original_sample", ours, theirs);

        // Buffers in the sample's memory layout.
        let mut into = DdimSchedulerOutput {
            prev_sample: x.clone(),
            pred_original_sample: x.clone(),
        };
        let (prev, x0) = (&mut into.prev_sample, &mut into.pred_original_sample);
        s.step_into(m, t, x, drawn(&mut rng, clipped), prev, x0)
            .expect("rng");
        after(&mut rng, "step_into");
        same_bits(
            "step_into prev_sample",
            &into.prev_sample,
            &expected.prev_sample,
        );
        let (ours, theirs) = (&into.pred_original_sample, &expected.pred_original_sample);
        same_bits("step_into pred_original_sample", ours, theirs);

        let mut in_place = x.clone();
        s.step_in_place(m, t, &mut in_place, drawn(&mut rng, clipped))
            .expect("rng");
        after(&mut rng, "step_in_place");
        same_bits("step_in_place", &in_place, &expected.prev_sample);

        let expected = s
            .step_batch(m, &batch_timesteps, x, given())
            .expect("given");
        let out = s
            .step_batch(m, &batch_timesteps, x, drawn(&mut rng, clipped))
            .expect("rng");
        after(&mut rng, "step_batch");
        same_bits(
            "step_batch prev_sample",
            &out.prev_sample,
            &expected.prev_sample,
        );
        let (ours, theirs) = (&out.pred_original_sample, &expected.pred_original_sample);
        same_bits("step_batch pred_original_sample", ours, theirs);
    }
}

/// At a zero-terminal-SNR schedule's first step with eta = 1, `1 - alpha_bar_prev - sigma^2`
/// is zero in exact arithmetic and may round below zero; the reference then returns NaN for the
/// whole sample. This crate clamps the term at zero.
#[test]
fn eta_one_at_zero_snr_first_step_stays_finite() {
    let config = DdimConfig {
        beta_schedule: ddim::BetaSchedule::ScaledLinear,
        beta_start: 0.00085,
        beta_end: 0.012,
        rescale_betas_zero_snr: true,
        prediction_type: PredictionType::VPrediction,
        timestep_spacing: TimestepSpacing::Trailing,
        clip_sample: false,
        ..DdimConfig::default()
    };
    let s = scheduler(config, 20);
    let t = s.timesteps()[0];
    assert_eq!(t, 999);
    assert_eq!(s.alphas_cumprod()[t], 0.0);
    let (m, x, z) = (
        values((2, 4, 8, 8), 0.1),
        values((2, 4, 8, 8), 0.6),
        values((2, 4, 8, 8), 3.3),
    );
    let options = StepOptions {
        eta: 1.0,
        noise: NoiseSource::given(&z),
        ..Default::default()
    };
    let out = s.step_with(&m, t, &x, options).expect("step");
    assert!(out.prev_sample.iter().all(|v| v.is_finite()));
    // With the direction term gone, the step is sqrt(alpha_bar_prev) * x0 + sigma * noise.
    let alpha_prev = s.alphas_cumprod()[t - 1000 / 20];
    let sigma = (1.0 - alpha_prev).sqrt();
    for ((&p, &x0), &z) in out
        .prev_sample
        .iter()
        .zip(&out.pred_original_sample)
        .zip(&z)
    {
        let expected = alpha_prev.sqrt() * x0 + sigma * z;
        assert!(
            (p - expected).abs() <= 1e-3 * (1.0 + expected.abs()),
            "{p} vs {expected}"
        );
    }
}

#[test]
fn scale_model_input_is_the_identity_and_init_noise_sigma_is_one() {
    let s = scheduler(DdimConfig::default(), 10);
    let x: ArrayD<f64> = Array2::from_shape_fn((3, 4), |(i, j)| (i * 4 + j) as f64).into_dyn();
    assert_eq!(s.scale_model_input(&x.view(), 500), x);
    assert_eq!(s.init_noise_sigma(), 1.0);
}

#[test]
fn views_owned_arrays_and_shared_arrays_are_all_accepted() {
    let s = scheduler(DdimConfig::default(), 10);
    let t = s.timesteps()[0];
    let (m, x) = (values((1, 2, 3, 3), 0.0), values((1, 2, 3, 3), 1.0));
    let owned = s.step(&m, t, &x).expect("owned");
    assert_eq!(s.step(&m.view(), t, &x.view()).expect("views"), owned);
    assert_eq!(
        s.step(&m.to_shared(), t, &x.to_shared()).expect("shared"),
        owned
    );
    let noisy = s.add_noise(&x.view(), &m.view(), &[t]).expect("views");
    assert_eq!(noisy, s.add_noise(&x, &m, &[t]).expect("owned"));
}

/// The allocating calls append their results to fresh vectors (without zero-filling them
/// first) and must give, bit for bit, what `step_into` writes into buffers: for contiguous and
/// column-major inputs, every noise kind (none, given in either layout, drawn), clipping,
/// thresholding and per-item timesteps, and for a shape whose length is not a multiple of the
/// kernel's block.
#[test]
fn new_arrays_equal_the_buffers_step_into_fills() {
    fn options<'a, T: ddim::DdimFloat>(
        noise: &str,
        z: &'a Array4<T>,
        rng: &'a mut StdRng,
    ) -> StepOptions<'a, T> {
        match noise {
            "none" => StepOptions::default(),
            "given" => StepOptions {
                eta: 0.8,
                noise: NoiseSource::given(z),
                use_clipped_model_output: true,
            },
            _ => StepOptions {
                eta: 1.0,
                noise: NoiseSource::Rng(rng),
                ..StepOptions::default()
            },
        }
    }
    fn check<T: ddim::DdimFloat>(label: &str) {
        // Exact: every element type widens to `f64` without rounding.
        fn bits<T: ddim::DdimFloat, D: ddim::ndarray::Dimension>(a: &Array<T, D>) -> Vec<u64> {
            a.iter().map(|v| v.to_f64().to_bits()).collect()
        }
        let shape = (3, 2, 13, 29); // 2262 elements: eight blocks of 256 and a partial one
        let convert = |a: Array4<f32>| a.mapv(|v| T::from_f64(f64::from(v)));
        let (m, x, z) = (
            convert(values(shape, 0.3)),
            convert(values(shape, 1.7)),
            convert(values(shape, 2.9)),
        );
        let fortran = |a: &Array4<T>| {
            let mut f = Array4::from_elem(shape.f(), T::ZERO);
            f.assign(a);
            f
        };
        let (mf, xf, zf) = (fortran(&m), fortran(&x), fortran(&z));
        let v_clip = DdimConfig {
            prediction_type: PredictionType::VPrediction,
            ..DdimConfig::default()
        };
        let unclipped = DdimConfig {
            clip_sample: false,
            ..DdimConfig::default()
        };
        let configs = [
            ("v_clip", v_clip),
            ("unclipped", unclipped),
            ("thr", thresholding()),
        ];
        let inputs = [
            ("c", &m, &x, &z),
            ("f", &mf, &xf, &zf),
            ("mixed", &m, &x, &zf),
        ];
        for (name, config) in configs {
            let s = scheduler(config, 20);
            let t = s.timesteps()[4];
            for (layout, m, x, z) in inputs {
                for noise in ["none", "given", "rng"] {
                    let case = format!("{label} {name} {layout} {noise}");
                    let mut rng = StdRng::seed_from_u64(5);
                    let new = s
                        .step_with(m, t, x, options(noise, z, &mut rng))
                        .expect("step_with");
                    let mut rng = StdRng::seed_from_u64(5);
                    let mut out = DdimSchedulerOutput::<T, _>::zeros(shape);
                    let (p, x0) = (&mut out.prev_sample, &mut out.pred_original_sample);
                    s.step_into(m, t, x, options(noise, z, &mut rng), p, x0)
                        .expect("step_into");
                    assert_eq!(
                        bits(&new.prev_sample),
                        bits(&out.prev_sample),
                        "prev, {case}"
                    );
                    let x0 = &out.pred_original_sample;
                    assert_eq!(bits(&new.pred_original_sample), bits(x0), "x0, {case}");
                    assert!(new.prev_sample.is_standard_layout(), "{case}");

                    // One timestep per item: the items' results are appended one after the
                    // other, and equal the items stepped alone (drawn noise continuing from
                    // item to item).
                    let ts = [s.timesteps()[2], s.timesteps()[9], s.timesteps()[15]];
                    let mut rng = StdRng::seed_from_u64(5);
                    let batch = s
                        .step_batch(m, &ts, x, options(noise, z, &mut rng))
                        .expect("batch");
                    let mut rng = StdRng::seed_from_u64(5);
                    for (i, &t) in ts.iter().enumerate() {
                        let item = |a: &Array4<T>| a.slice_axis(Axis(0), (i..=i).into()).to_owned();
                        let (mi, xi, zi) = (item(m), item(x), item(z));
                        let alone = s
                            .step_with(&mi, t, &xi, options(noise, &zi, &mut rng))
                            .expect("item");
                        let ours = batch.prev_sample.slice_axis(Axis(0), (i..=i).into());
                        assert_eq!(
                            bits(&ours.to_owned()),
                            bits(&alone.prev_sample),
                            "batch {i}, {case}"
                        );
                        let ours = batch
                            .pred_original_sample
                            .slice_axis(Axis(0), (i..=i).into());
                        let theirs = &alone.pred_original_sample;
                        assert_eq!(bits(&ours.to_owned()), bits(theirs), "batch x0 {i}, {case}");
                    }
                }
            }
        }
    }
    check::<f32>("f32");
    check::<f64>("f64");
    #[cfg(feature = "half")]
    {
        check::<ddim::half::f16>("f16");
        check::<ddim::half::bf16>("bf16");
    }
}
