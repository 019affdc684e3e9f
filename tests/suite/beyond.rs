//! What the crate does beyond the reference: inversion that round-trips, steps that follow the
//! schedule, custom and quadratic schedules.

use crate::paper_experiment::{self, rng, Mixture};
use ddim::ndarray::Array2;
use ddim::{DdimConfig, DdimError, DdimScheduler, NoiseSource, StepOptions, TimestepSpacing};

/// Inverts data to noise with the exact model of the Gaussian-mixture experiment, samples back,
/// and returns the root-mean-square distance to where it started.
fn inversion_round_trip_error(steps: usize) -> f64 {
    let mixture = Mixture::default();
    let mut s = paper_experiment::scheduler().expect("valid config");
    s.set_timesteps(steps).expect("valid steps");
    let data = mixture.sample(500, &mut rng(7));
    let model =
        |x: &Array2<f32>, t: usize| mixture.exact_epsilon(x, f64::from(s.alphas_cumprod()[t]));
    let mut x = data.clone();
    for &t in s.timesteps().iter().rev() {
        x = s
            .inverse_step(&model(&x, t), t, &x)
            .expect("inverse step")
            .prev_sample;
    }
    for &t in s.timesteps() {
        x = s.step(&model(&x, t), t, &x).expect("step").prev_sample;
    }
    let squared: f64 = x
        .iter()
        .zip(&data)
        .map(|(a, b)| f64::from(a - b).powi(2))
        .sum();
    (squared / data.len() as f64).sqrt()
}

/// DDIM inversion with eta = 0 is the reverse of deterministic sampling up to discretisation:
/// inverting a data sample and sampling it back returns it, the closer the more steps. The
/// stated tolerances (root-mean-square over 500 points of 16 coordinates, data of scale 2):
/// 0.05 at 50 steps, 0.01 at 250, 0.003 at 1000, and strictly better with every increase.
#[test]
fn inversion_then_sampling_returns_the_data_closer_with_more_steps() {
    let errors: Vec<(usize, f64)> = [10, 50, 250, 1000]
        .into_iter()
        .map(|steps| (steps, inversion_round_trip_error(steps)))
        .collect();
    eprintln!("round-trip rms error by steps: {errors:?}");
    assert!(errors.windows(2).all(|w| w[1].1 < w[0].1), "{errors:?}");
    for (steps, bound) in [(50, 0.05), (250, 0.01), (1000, 0.003)] {
        let error = errors
            .iter()
            .find(|(s, _)| *s == steps)
            .map_or(f64::NAN, |e| e.1);
        assert!(error < bound, "{steps} steps: {error} (bound {bound})");
    }
}

/// With the reference's rule, a `linspace` loop steps `T / n` back and misses the schedule; with
/// `step_along_schedule` every step lands on the next timestep, and the last on the final alpha.
#[test]
fn step_along_schedule_lands_every_linspace_step_on_the_schedule() {
    let config = DdimConfig {
        timestep_spacing: TimestepSpacing::Linspace,
        ..DdimConfig::default()
    };
    let mut reference_rule = DdimScheduler::new(config.clone()).expect("valid");
    reference_rule.set_timesteps(7).expect("valid");
    let ts = reference_rule.timesteps().to_vec();
    let missed = ts
        .windows(2)
        .filter(|w| reference_rule.prev_timestep(w[0]).ok() != Some(Some(w[1])))
        .count();
    assert!(
        missed > 0,
        "the reference's rule misses the linspace schedule {ts:?}"
    );

    let mut along = DdimScheduler::new(DdimConfig {
        step_along_schedule: true,
        ..config
    })
    .expect("valid");
    along.set_timesteps(7).expect("valid");
    assert_eq!(along.timesteps(), ts.as_slice());
    for w in ts.windows(2) {
        assert_eq!(along.prev_timestep(w[0]).expect("on schedule"), Some(w[1]));
        let k = along.step_scalars(w[0], 0.0).expect("on schedule");
        assert_eq!(k.alpha_bar_prev, along.alphas_cumprod()[w[1]]);
    }
    let last = *ts.last().expect("non-empty");
    assert_eq!(along.prev_timestep(last).expect("on schedule"), None);
    // Off the schedule there is no next timestep to move to.
    let err = along.prev_timestep(ts[0] - 1).expect_err("off schedule");
    assert!(
        matches!(err, DdimError::TimestepNotInSchedule { .. }),
        "{err}"
    );
    // The key is saved and read back with the config.
    let json = along.config().to_json_string().expect("valid");
    assert!(json.contains("\"step_along_schedule\": true"), "{json}");
    assert!(
        DdimConfig::from_json_str(&json)
            .expect("valid")
            .step_along_schedule
    );
}

#[test]
fn custom_timesteps_are_validated_and_stepped_along() {
    let mut s = DdimScheduler::new(DdimConfig::default()).expect("valid");
    s.set_custom_timesteps(&[999, 800, 400, 100, 3])
        .expect("valid");
    assert_eq!(s.timesteps(), &[999, 800, 400, 100, 3]);
    assert_eq!(s.num_inference_steps(), Some(5));
    assert_eq!(s.prev_timestep(400).expect("on schedule"), Some(100));
    assert_eq!(s.prev_timestep(3).expect("on schedule"), None);
    for (bad, needle) in [
        (&[][..], "empty"),
        (&[1000, 5][..], "timesteps[0] is 1000"),
        (&[50, 60][..], "timesteps[1] is 60 after 50"),
        (&[50, 50][..], "strictly decreasing"),
    ] {
        let err = s.set_custom_timesteps(bad).expect_err("invalid");
        assert!(matches!(err, DdimError::InvalidTimesteps { .. }), "{err:?}");
        assert!(err.to_string().contains(needle), "{err}");
    }
    // A failed call keeps the previous schedule.
    assert_eq!(s.timesteps(), &[999, 800, 400, 100, 3]);
    // set_timesteps returns to the config's spacing and rule.
    s.set_timesteps(10).expect("valid");
    assert_eq!(s.prev_timestep(905).expect("T / n rule"), Some(805));
}

#[test]
fn quadratic_spacing_is_dense_at_low_noise_and_stepped_along() {
    let mut s = DdimScheduler::new(DdimConfig {
        timestep_spacing: TimestepSpacing::Quadratic,
        ..DdimConfig::default()
    })
    .expect("valid");
    s.set_timesteps(10).expect("valid");
    let ts = s.timesteps().to_vec();
    assert_eq!(ts.first(), Some(&800));
    assert_eq!(ts.last(), Some(&0));
    // Gaps grow with the timestep: dense where the noise is low.
    let gaps: Vec<usize> = ts.windows(2).map(|w| w[0] - w[1]).collect();
    assert!(gaps.windows(2).all(|g| g[0] > g[1]), "{gaps:?}");
    for w in ts.windows(2) {
        assert_eq!(s.prev_timestep(w[0]).expect("on schedule"), Some(w[1]));
    }
    // Too many steps for distinct quadratic timesteps: repeats are dropped.
    s.set_timesteps(200).expect("valid");
    assert!(s.timesteps().len() < 200);
    assert!(s.timesteps().windows(2).all(|w| w[0] > w[1]));
}

/// `step_batch` with given noise (which the reference lacks) gives every item the step
/// `step_with` gives it alone with its slice of the noise, eta > 0 and
/// use_clipped_model_output included.
#[test]
fn stochastic_batch_steps_equal_item_by_item_steps() {
    use ddim::ndarray::{Array4, ArrayRef, Axis, Dimension, Slice};
    let mut s = DdimScheduler::new(DdimConfig {
        thresholding: true,
        dynamic_thresholding_ratio: 0.9,
        sample_max_value: 2.0,
        ..DdimConfig::default()
    })
    .expect("valid");
    s.set_timesteps(20).expect("valid");
    let shape = (3, 2, 4, 4);
    let m = Array4::from_shape_fn(shape, |(b, c, y, x)| {
        ((b * 31 + c * 7 + y * 4 + x) as f32 * 0.3).sin() * 2.5
    });
    let x = Array4::from_shape_fn(shape, |(b, c, y, x)| {
        ((b * 13 + c * 5 + y + x * 3) as f32 * 0.2).cos()
    });
    let z = Array4::from_shape_fn(shape, |(b, c, y, x)| {
        ((b + c + y * 3 + x * 5) as f32 * 0.17).sin()
    });
    fn options<D: Dimension>(z: &ArrayRef<f32, D>) -> StepOptions<'_, f32> {
        StepOptions {
            eta: 0.7,
            noise: NoiseSource::given(z),
            use_clipped_model_output: true,
        }
    }
    let timesteps = [950, 450, 0];
    let batch = s
        .step_batch(&m, &timesteps, &x, options(&z))
        .expect("batch");
    for (i, &t) in timesteps.iter().enumerate() {
        let item = Slice::from(i..=i);
        let alone = s
            .step_with(
                &m.slice_axis(Axis(0), item),
                t,
                &x.slice_axis(Axis(0), item),
                options(&z.slice_axis(Axis(0), item)),
            )
            .expect("step");
        assert_eq!(
            batch.prev_sample.slice_axis(Axis(0), item),
            alone.prev_sample,
            "item {i}"
        );
        assert_eq!(
            batch.pred_original_sample.slice_axis(Axis(0), item),
            alone.pred_original_sample,
            "item {i}"
        );
    }
    // One timestep per item, all valid, or nothing is computed.
    let err = s
        .step_batch(&m, &[950, 450], &x, StepOptions::default())
        .expect_err("two for three");
    assert!(
        matches!(
            err,
            DdimError::BatchSizeMismatch {
                count: 2,
                batch_size: 3
            }
        ),
        "{err}"
    );
    let err = s
        .step_batch(&m, &[950, 450, 1000], &x, StepOptions::default())
        .expect_err("out of range");
    assert!(
        matches!(err, DdimError::TimestepOutOfRange { timestep: 1000, .. }),
        "{err}"
    );
}
