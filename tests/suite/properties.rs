//! Properties of the public API that must hold for every input, not just the golden fixtures:
//! the shape of every schedule, config round trips, determinism, exactness of the update against
//! its own forward process, precision agreement between `f32` and `f64`, and layout independence.
//!
//! Case counts are kept moderate so the whole file runs in a few seconds in the test profile.

use ddim::ndarray::{s, Array1, Array2, ArrayD, Axis, IxDyn, ShapeBuilder};
use ddim::{
    BetaSchedule, DdimConfig, DdimError, DdimFloat, DdimScheduler, DdimSchedulerOutput,
    NoiseSource, PredictionType, StepOptions, TimestepSpacing, TorchGenerator,
};
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::common::{bits, random_array, scheduler, CaseOptions};

/// `cases` cases from a fixed seed (so that CI runs are reproducible; set `PROPTEST_RNG_SEED`
/// to explore other cases), and no regression files written next to the sources.
fn cases(cases: u32) -> ProptestConfig {
    let seed = std::env::var("PROPTEST_RNG_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_201_006);
    ProptestConfig {
        cases,
        failure_persistence: None,
        rng_seed: proptest::test_runner::RngSeed::Fixed(seed),
        ..ProptestConfig::default()
    }
}

const SPACINGS: [TimestepSpacing; 4] = [
    TimestepSpacing::Leading,
    TimestepSpacing::Trailing,
    TimestepSpacing::Linspace,
    TimestepSpacing::Quadratic,
];

const PREDICTIONS: [PredictionType; 3] = [
    PredictionType::Epsilon,
    PredictionType::Sample,
    PredictionType::VPrediction,
];

fn spacing() -> impl Strategy<Value = TimestepSpacing> {
    prop::sample::select(SPACINGS.to_vec())
}

fn prediction() -> impl Strategy<Value = PredictionType> {
    prop::sample::select(PREDICTIONS.to_vec())
}

fn beta_schedule() -> impl Strategy<Value = BetaSchedule> {
    prop::sample::select(vec![
        BetaSchedule::Linear,
        BetaSchedule::ScaledLinear,
        BetaSchedule::SquaredcosCapV2,
    ])
}

/// Any finite `f64`, including zeros, subnormals and the extremes.
fn finite_f64() -> impl Strategy<Value = f64> {
    use prop::num::f64::{NEGATIVE, NORMAL, POSITIVE, SUBNORMAL, ZERO};
    POSITIVE | NEGATIVE | NORMAL | SUBNORMAL | ZERO
}

/// A finite `f64 > 0`, from the smallest subnormal to `f64::MAX`.
fn positive_f64() -> impl Strategy<Value = f64> {
    use prop::num::f64::{NORMAL, POSITIVE, SUBNORMAL};
    prop_oneof![
        Just(5e-324),
        Just(f64::MIN_POSITIVE),
        Just(f64::MAX),
        0.001..1000.0f64,
        POSITIVE | NORMAL | SUBNORMAL,
    ]
}

// ---------------------------------------------------------------------------------------------
// 1. Every schedule, exhaustively
// ---------------------------------------------------------------------------------------------

/// Checks one `set_timesteps(n)` outcome against the documented contract; returns the number of
/// timesteps (or 0 for the documented `ScheduleOutOfRange`).
fn check_schedule(s: &mut DdimScheduler, n: usize) -> usize {
    let config = s.config().clone();
    let (t, spacing, offset) = (
        config.num_train_timesteps,
        config.timestep_spacing,
        config.steps_offset,
    );
    let before = s.timesteps().to_vec();
    let what = format!("{spacing} T={t} n={n} steps_offset={offset}");
    // The documented leading-spacing refusal: the largest timestep (n-1) * (T/n) + offset
    // would reach T.
    let largest_leading = (n - 1)
        .checked_mul(t / n)
        .and_then(|v| v.checked_add(offset))
        .unwrap_or(usize::MAX);
    if spacing == TimestepSpacing::Leading && largest_leading >= t {
        match s.set_timesteps(n) {
            Err(DdimError::ScheduleOutOfRange {
                spacing: ref sp,
                num_inference_steps,
                steps_offset,
                largest_timestep,
                num_train_timesteps,
            }) => {
                assert_eq!(
                    (
                        sp.as_str(),
                        num_inference_steps,
                        steps_offset,
                        largest_timestep,
                        num_train_timesteps
                    ),
                    ("leading", n, offset, largest_leading, t),
                    "{what}"
                );
            }
            other => panic!("{what}: expected ScheduleOutOfRange, got {other:?}"),
        }
        assert_eq!(
            s.timesteps(),
            &before[..],
            "{what}: an error keeps the schedule"
        );
        return 0;
    }
    s.set_timesteps(n)
        .unwrap_or_else(|e| panic!("{what}: unexpected error {e}"));
    let ts = s.timesteps();
    assert!(
        ts.windows(2).all(|w| w[0] > w[1]),
        "{what}: not strictly decreasing: {ts:?}"
    );
    assert!(ts.iter().all(|&x| x < t), "{what}: out of range: {ts:?}");
    assert_eq!(s.num_inference_steps(), Some(n), "{what}");
    match spacing {
        TimestepSpacing::Quadratic => {
            // Repeats of the smallest timesteps are dropped: at most n, always ending at 0.
            assert!(!ts.is_empty() && ts.len() <= n, "{what}: {ts:?}");
            assert_eq!(ts.last(), Some(&0), "{what}: {ts:?}");
            // Quadratic spacing steps along its own schedule.
            for (i, &x) in ts.iter().enumerate() {
                assert_eq!(
                    s.prev_timestep(x).ok(),
                    Some(ts.get(i + 1).copied()),
                    "{what}"
                );
            }
        }
        _ => assert_eq!(ts.len(), n, "{what}: {ts:?}"),
    }
    match spacing {
        // `np.linspace(0, T - 1, 1)` is `[0]`; otherwise both start at the last timestep.
        TimestepSpacing::Trailing | TimestepSpacing::Linspace
            if n > 1 || spacing == TimestepSpacing::Trailing =>
        {
            assert_eq!(ts.first(), Some(&(t - 1)), "{what}: {ts:?}")
        }
        TimestepSpacing::Leading => {
            assert_eq!(ts.last(), Some(&offset), "{what}: {ts:?}");
            assert!(
                ts.windows(2).all(|w| w[0] - w[1] == t / n),
                "{what}: {ts:?}"
            );
        }
        _ => {}
    }
    if spacing == TimestepSpacing::Linspace {
        assert_eq!(ts.last(), Some(&0), "{what}: {ts:?}");
    }
    ts.len()
}

/// Every spacing, every `num_train_timesteps` in 1..=200 and 1000, every valid `n`, with
/// `steps_offset` 0 and 1 (about 170k schedules). Out-of-range step counts are refused.
#[test]
fn every_schedule_is_strictly_decreasing_in_range_and_of_length_n() {
    let mut schedules = 0usize;
    let mut refused = 0usize;
    for t in (1..=200).chain([1000]) {
        for spacing in SPACINGS {
            for offset in [0, 1] {
                let config = DdimConfig {
                    num_train_timesteps: t,
                    beta_schedule: BetaSchedule::SquaredcosCapV2,
                    timestep_spacing: spacing,
                    steps_offset: offset,
                    ..DdimConfig::default()
                };
                let mut s = DdimScheduler::new(config).expect("cosine schedules are valid");
                for n in [0, t + 1, usize::MAX] {
                    assert!(
                        matches!(
                            s.set_timesteps(n),
                            Err(DdimError::InvalidNumInferenceSteps { requested, num_train_timesteps })
                                if requested == n && num_train_timesteps == t
                        ),
                        "{spacing} T={t} n={n}"
                    );
                }
                for n in 1..=t {
                    schedules += 1;
                    if check_schedule(&mut s, n) == 0 {
                        refused += 1;
                    }
                }
            }
        }
    }
    assert!(schedules > 150_000, "{schedules}");
    // (n - 1) * (T / n) + 1 >= T only for n = T (for T / n >= 2 it would need T / n <= 1): with
    // steps_offset = 1, leading spacing refuses exactly one step count per T, all T steps.
    assert_eq!(refused, 201);
}

proptest! {
    #![proptest_config(cases(48))]

    /// The same contract for large, random `num_train_timesteps` (up to `MAX_TRAIN_TIMESTEPS`)
    /// and step counts, with any `steps_offset`.
    #[test]
    fn random_large_schedules_keep_the_contract(
        log_t in 0.0f64..6.0,
        frac in 0.0f64..=1.0,
        spacing in spacing(),
        offset in prop_oneof![Just(0usize), Just(1), 0usize..5000, Just(usize::MAX)],
    ) {
        let t = (10f64.powf(log_t) as usize).clamp(1, ddim::MAX_TRAIN_TIMESTEPS);
        let n = ((frac * t as f64) as usize).clamp(1, t);
        let config = DdimConfig {
            num_train_timesteps: t,
            beta_schedule: BetaSchedule::SquaredcosCapV2,
            timestep_spacing: spacing,
            steps_offset: offset,
            ..DdimConfig::default()
        };
        let mut s = DdimScheduler::new(config).expect("cosine schedules are valid");
        if spacing == TimestepSpacing::Leading {
            // (n - 1) * (T / n) + offset may overflow for a huge offset: refused either way.
            let largest = (n - 1).checked_mul(t / n).and_then(|v| v.checked_add(offset));
            if largest.is_none_or(|l| l >= t) {
                let refused = matches!(
                    s.set_timesteps(n),
                    Err(DdimError::ScheduleOutOfRange { largest_timestep, .. })
                        if largest_timestep == largest.unwrap_or(usize::MAX)
                );
                prop_assert!(refused);
                return Ok(());
            }
        }
        check_schedule(&mut s, n);
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Config JSON round trip
// ---------------------------------------------------------------------------------------------

/// Valid configs over every field. `trained_betas` (values in [0, 0.5)) appear only for up to
/// 120 training timesteps, where `0.5^120` still leaves `alpha_bar > 0` in float32; otherwise the
/// betas stay below 0.05, whose product over 1000 timesteps is about 5e-23. Where the betas are
/// ignored (cosine schedule, trained betas) `beta_start`/`beta_end` are any finite numbers.
fn valid_config() -> impl Strategy<Value = DdimConfig> {
    let t = prop_oneof![1usize..=120, 121usize..=1000, Just(1000usize)];
    t.prop_flat_map(|t| {
        let trained = if t <= 120 {
            prop::option::of(prop::collection::vec(0.0..0.5f64, t)).boxed()
        } else {
            Just(None).boxed()
        };
        (
            Just(t),
            trained,
            beta_schedule(),
            (0.0001..0.05f64, 0.0001..0.05f64),
            (finite_f64(), finite_f64()),
            any::<(bool, bool, bool, bool, bool)>(),
            prop_oneof![Just(0usize), Just(1), any::<usize>()],
            prediction(),
            prop_oneof![Just(0.0), Just(1.0), 0.0..=1.0f64],
            (positive_f64(), positive_f64()),
            spacing(),
        )
    })
    .prop_map(
        |(
            t,
            trained_betas,
            beta_schedule,
            used_betas,
            ignored_betas,
            (clip_sample, set_alpha_to_one, thresholding, rescale, step_along_schedule),
            steps_offset,
            prediction_type,
            dynamic_thresholding_ratio,
            (clip_sample_range, sample_max_value),
            timestep_spacing,
        )| {
            let ignored = trained_betas.is_some() || beta_schedule == BetaSchedule::SquaredcosCapV2;
            let (beta_start, beta_end) = if ignored { ignored_betas } else { used_betas };
            DdimConfig {
                num_train_timesteps: t,
                beta_start,
                beta_end,
                beta_schedule,
                trained_betas,
                clip_sample,
                set_alpha_to_one,
                steps_offset,
                prediction_type,
                thresholding,
                dynamic_thresholding_ratio,
                clip_sample_range,
                sample_max_value,
                timestep_spacing,
                rescale_betas_zero_snr: rescale && t >= 2,
                step_along_schedule,
            }
        },
    )
}

proptest! {
    #![proptest_config(cases(200))]

    #[test]
    fn json_round_trip_gives_an_equal_config(config in valid_config()) {
        if let Err(e) = config.validate() {
            return Err(TestCaseError::fail(format!("generator made an invalid config: {e}")));
        }
        let json = config.to_json_string().expect("a valid config serialises");
        // Every key is written, the crate's own one included, plus diffusers' class name.
        let value: serde_json::Value = serde_json::from_str(&json).expect("JSON");
        let map = value.as_object().expect("an object");
        for key in [
            "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
            "clip_sample", "set_alpha_to_one", "steps_offset", "prediction_type", "thresholding",
            "dynamic_thresholding_ratio", "clip_sample_range", "sample_max_value",
            "timestep_spacing", "rescale_betas_zero_snr", "step_along_schedule",
        ] {
            prop_assert!(map.contains_key(key), "{key} missing from {json}");
        }
        prop_assert_eq!(map["_class_name"].as_str(), Some("DDIMScheduler"));
        let back = DdimConfig::from_json_str(&json).expect("written configs load");
        // `==` on f64 fields treats 0.0 and -0.0 as equal; compare the bits as well.
        prop_assert_eq!(&back, &config);
        prop_assert_eq!(back.beta_start.to_bits(), config.beta_start.to_bits());
        prop_assert_eq!(back.beta_end.to_bits(), config.beta_end.to_bits());
        let betas_bits = |c: &DdimConfig| {
            c.trained_betas.as_ref().map(|b| b.iter().map(|v| v.to_bits()).collect::<Vec<_>>())
        };
        prop_assert_eq!(betas_bits(&back), betas_bits(&config));
        // And the scheduler built from either is the same.
        prop_assert_eq!(DdimScheduler::new(back).ok(), DdimScheduler::new(config).ok());
    }
}

// ---------------------------------------------------------------------------------------------
// Shared generators for the array properties
// ---------------------------------------------------------------------------------------------

/// A small valid sampling config with a random noise schedule and options.
fn step_config() -> impl Strategy<Value = DdimConfig> {
    (
        beta_schedule(),
        prediction(),
        spacing(),
        any::<(bool, bool, bool, bool, bool)>(),
        prop_oneof![Just(0.5), Just(0.995), 0.0..=1.0f64],
        (0.5..3.0f64, 0.5..3.0f64),
        prop_oneof![Just(1000usize), 30usize..1000],
    )
        .prop_map(
            |(
                beta_schedule,
                prediction_type,
                timestep_spacing,
                (clip_sample, set_alpha_to_one, thresholding, rescale, along),
                dynamic_thresholding_ratio,
                (clip_sample_range, sample_max_value),
                t,
            )| DdimConfig {
                num_train_timesteps: t,
                beta_schedule,
                prediction_type,
                timestep_spacing,
                clip_sample,
                set_alpha_to_one,
                thresholding,
                rescale_betas_zero_snr: rescale,
                step_along_schedule: along,
                dynamic_thresholding_ratio,
                clip_sample_range,
                sample_max_value,
                ..DdimConfig::default()
            },
        )
}

/// `(batch, features)` sizes and a seed for the array values.
fn shape_and_seed() -> impl Strategy<Value = (Vec<usize>, u64)> {
    (prop::collection::vec(1usize..5, 2..=4), any::<u64>())
}

// ---------------------------------------------------------------------------------------------
// 3. Determinism at eta = 0, and scale_model_input
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(cases(128))]

    #[test]
    fn eta_zero_steps_are_deterministic_and_scale_model_input_is_the_identity(
        config in step_config(),
        steps in 1usize..60,
        pick in any::<prop::sample::Index>(),
        (shape, seed) in shape_and_seed(),
    ) {
        let s = scheduler(config, steps.min(20));
        let t = *pick.get(s.timesteps());
        let mut rng = StdRng::seed_from_u64(seed);
        let m = random_array::<f32, _>(&shape, &mut rng, 3.0);
        let x = random_array::<f32, _>(&shape, &mut rng, 3.0);
        // eta = 0 never reads the noise, so even NaN noise must change nothing.
        let junk_noise = ArrayD::from_elem(IxDyn(&shape), f32::NAN);
        let eta_zero = CaseOptions { eta: 0.0, use_clipped_model_output: false };

        let a = s.step(&m, t, &x).expect("step");
        let b = s.step(&m, t, &x).expect("step");
        let junk = || eta_zero.with(NoiseSource::given(&junk_noise));
        let c = s.step_with(&m, t, &x, junk()).expect("step");
        let mut rng_a = StdRng::seed_from_u64(seed ^ 1);
        let d = s.step_with(&m, t, &x, eta_zero.with(NoiseSource::Rng(&mut rng_a))).expect("step");
        let mut rng_b = StdRng::seed_from_u64(seed ^ 1);
        // No draw at eta = 0: the generators are untouched.
        prop_assert_eq!(rng_a.random::<u64>(), rng_b.random::<u64>());
        let mut torch = TorchGenerator::manual_seed(seed);
        let torch_options = eta_zero.with(NoiseSource::Torch(&mut torch));
        let e = s.step_with(&m, t, &x, torch_options).expect("step");
        prop_assert!(torch == TorchGenerator::manual_seed(seed));
        let f = s.step_with(&m, t, &x, StepOptions::default()).expect("step");
        let mut into = DdimSchedulerOutput::zeros(x.raw_dim());
        let (prev, x0) = (&mut into.prev_sample, &mut into.pred_original_sample);
        s.step_into(&m, t, &x, junk(), prev, x0).expect("step");
        let mut in_place = x.clone();
        s.step_in_place(&m, t, &mut in_place, StepOptions::default()).expect("step");
        for other in [&b, &c, &d, &e, &f, &into] {
            prop_assert_eq!(bits(&a.prev_sample), bits(&other.prev_sample));
            prop_assert_eq!(bits(&a.pred_original_sample), bits(&other.pred_original_sample));
        }
        prop_assert_eq!(bits(&a.prev_sample), bits(&in_place));
        prop_assert_eq!(a.prev_sample.shape(), &shape[..]);

        for t in [0, t, s.config().num_train_timesteps - 1] {
            let scaled = s.scale_model_input(&x, t);
            prop_assert_eq!(scaled.shape(), x.shape());
            prop_assert_eq!(bits(&scaled), bits(&x));
            let wide = x.mapv(f64::from);
            prop_assert_eq!(bits(&s.scale_model_input(&wide.view(), t)), bits(&wide));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Exactness against the forward process
// ---------------------------------------------------------------------------------------------

const U: f64 = f32::EPSILON as f64 / 2.0; // unit roundoff of float32, 2^-24

/// `add_noise(x0, noise, t)` then a step at `t` fed the true model output recovers `x0` as
/// `pred_original_sample`.
///
/// Tolerance (per element, `a = alpha_bar_t`, `sa = sqrt(a)`, `sb = sqrt(1 - a)`, `u = 2^-24`):
///
/// - `sample`: `x0_hat = model_output = x0` exactly (the update multiplies `sample` by exactly 0
///   and adds the output), so the bits must match.
/// - `epsilon`: `x_t = fl(sa x0 + sb eps)` and `x0_hat = fl(fl(x_t - fl(sb eps)) / sa)`. The
///   product `sb eps` rounds identically in both, so the error is the rounding of the two sums,
///   at most `u (|x_t| + |x_t - sb eps|)`, divided by `sa`, plus `u |x0|` for the division:
///   about `u (3 |x0| + 2 (sb / sa) |eps|)`. The `1 / sqrt(alpha_bar)` factor is the
///   amplification near `t = T - 1` (about 150 at the last timestep of the default schedule);
///   at zero terminal SNR (`sa = 0`) `x0` is not recoverable at all and that timestep is
///   skipped. For `f64` arrays `add_noise` takes its square roots in `f64` while the step uses
///   the float32 scalars, which adds `u (|x0| + (sb / sa) |eps|)` of scalar mismatch: in all,
///   `u (4 |x0| + 3 (sb / sa) |eps|)`.
/// - `v_prediction`: `x0_hat = sa x_t - sb v = (sa^2 + sb^2) x0` with `sa^2 + sb^2 = 1` up to
///   `3u` (the rounded square roots), plus the rounding of four products and three sums of
///   magnitude at most `|x0| + |eps|`: about `10 u (|x0| + |eps|)`. No division, so no
///   amplification, even at zero terminal SNR.
///
/// The asserted bound is twice these (a factor of 2 of slack over the worst cases). It is not
/// vacuous: over 20,000 cases the largest error reached 0.27 of it (epsilon, f32), and
/// `exactness_tolerance_is_tight_enough_to_mean_something` checks that a sweep reaches 0.05.
fn exactness_tolerance(
    prediction: PredictionType,
    alpha_bar: f32,
    x0: f64,
    eps: f64,
) -> Option<f64> {
    let sa = f64::from(alpha_bar.sqrt());
    let sb = f64::from((1.0 - alpha_bar).sqrt());
    match prediction {
        PredictionType::Sample => Some(0.0),
        PredictionType::Epsilon if sa == 0.0 => None,
        PredictionType::Epsilon => Some(2.0 * U * (4.0 * x0.abs() + 3.0 * (sb / sa) * eps.abs())),
        PredictionType::VPrediction => Some(2.0 * 10.0 * U * (x0.abs() + eps.abs())),
        _ => None,
    }
}

fn check_exactness<T: DdimFloat>(
    s: &DdimScheduler,
    t: usize,
    x0: &ArrayD<T>,
    noise: &ArrayD<T>,
) -> Result<f64, TestCaseError> {
    let batch = x0.len_of(Axis(0));
    let ts = vec![t; batch];
    let prediction = s.config().prediction_type;
    let noisy = s.add_noise(x0, noise, &ts).expect("add_noise");
    let model_output = match prediction {
        PredictionType::Epsilon => noise.clone(),
        PredictionType::Sample => x0.clone(),
        _ => s.get_velocity(x0, noise, &ts).expect("get_velocity"),
    };
    let out = s.step(&model_output, t, &noisy).expect("step");
    let alpha_bar = s.alphas_cumprod()[t];
    let mut worst = 0.0f64;
    for ((&got, &want), &eps) in out
        .pred_original_sample
        .iter()
        .zip(x0.iter())
        .zip(noise.iter())
    {
        let (got, want, eps) = (got.to_f64(), want.to_f64(), eps.to_f64());
        let Some(tolerance) = exactness_tolerance(prediction, alpha_bar, want, eps) else {
            continue;
        };
        let error = (got - want).abs();
        prop_assert!(
            error <= tolerance,
            "{prediction} t={t} alpha_bar={alpha_bar}: x0 {want}, recovered {got}, error {error:e} > {tolerance:e}"
        );
        if tolerance > 0.0 {
            worst = worst.max(error / tolerance);
        }
    }
    Ok(worst)
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn a_step_fed_the_true_output_recovers_x0(
        config in step_config(),
        t_frac in prop_oneof![Just(1.0f64), Just(0.0), 0.0..=1.0f64],
        (shape, seed) in shape_and_seed(),
    ) {
        let config = DdimConfig { clip_sample: false, thresholding: false, ..config };
        // Any timestep: steps may start anywhere when they do not follow the schedule.
        let config = DdimConfig {
            step_along_schedule: false,
            timestep_spacing: TimestepSpacing::Leading,
            ..config
        };
        let big_t = config.num_train_timesteps;
        let s = scheduler(config, 10);
        let t = ((t_frac * (big_t - 1) as f64).round() as usize).min(big_t - 1);
        let mut rng = StdRng::seed_from_u64(seed);
        let x0 = random_array::<f32, _>(&shape, &mut rng, 2.0);
        let noise = random_array::<f32, _>(&shape, &mut rng, 4.0);
        let worst32 = check_exactness(&s, t, &x0, &noise)?;
        let worst64 = check_exactness(&s, t, &x0.mapv(f64::from), &noise.mapv(f64::from))?;
        prop_assert!(worst32 <= 1.0 && worst64 <= 1.0);
    }
}

/// The tolerance of the exactness property is not vacuous: over a sweep of timesteps, the
/// largest error reaches a sizeable fraction of it, for both prediction types that round.
#[test]
fn exactness_tolerance_is_tight_enough_to_mean_something() {
    for prediction in [PredictionType::Epsilon, PredictionType::VPrediction] {
        let config = DdimConfig {
            clip_sample: false,
            prediction_type: prediction,
            ..DdimConfig::default()
        };
        let s = scheduler(config, 10);
        let mut rng = StdRng::seed_from_u64(11);
        let x0 = random_array::<f32, _>(&[4, 256], &mut rng, 2.0);
        let noise = random_array::<f32, _>(&[4, 256], &mut rng, 4.0);
        let worst = (0..1000)
            .step_by(7)
            .chain([999])
            .map(|t| check_exactness(&s, t, &x0, &noise).expect("within tolerance"))
            .fold(0.0f64, f64::max);
        assert!(
            worst > 0.05,
            "{prediction}: the largest error is only {worst} of the tolerance"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 5. f32 and f64 runs of one loop agree
// ---------------------------------------------------------------------------------------------

/// The exact posterior-mean denoiser for Gaussian data `x0 ~ N(mu_j, var)` (independent per
/// element), in the parameterisation of the config: a model with which the DDIM loop is stable,
/// so the loop's rounding errors are not amplified by a wrong model.
fn gaussian_model<T: DdimFloat>(
    s: &DdimScheduler,
    x: &ArrayD<T>,
    t: usize,
    mu: &ArrayD<f64>,
    var: f64,
) -> ArrayD<T> {
    let a = f64::from(s.alphas_cumprod()[t]);
    let (sa, sb) = (a.sqrt(), (1.0 - a).sqrt());
    let denominator = a * var + (1.0 - a);
    let mut out = x.clone();
    ddim::ndarray::Zip::from(&mut out)
        .and(x)
        .and(mu)
        .for_each(|o, &x, &mu| {
            let residual = x.to_f64() - sa * mu;
            let eps = sb * residual / denominator;
            let x0 = mu + sa * var * residual / denominator;
            *o = T::from_f64(match s.config().prediction_type {
                PredictionType::Epsilon => eps,
                PredictionType::Sample => x0,
                _ => sa * eps - sb * x0,
            });
        });
    out
}

/// The loop with `options`, its noise given (one array per step).
fn run_loop<T: DdimFloat>(
    s: &DdimScheduler,
    start: &ArrayD<T>,
    noises: &[ArrayD<f32>],
    options: CaseOptions,
    mu: &ArrayD<f64>,
) -> (ArrayD<T>, ArrayD<T>) {
    let mut x = start.clone();
    let mut x0 = start.clone();
    for (&t, noise) in s.timesteps().iter().zip(noises) {
        let m = gaussian_model(s, &x, t, mu, 0.25);
        let noise = noise.mapv(T::from_f32);
        let out = s
            .step_with(&m, t, &x, options.with(NoiseSource::given(&noise)))
            .expect("step");
        x = out.prev_sample;
        x0 = out.pred_original_sample;
    }
    (x, x0)
}

proptest! {
    #![proptest_config(cases(64))]

    /// Tolerance, per element of the final sample and of the last predicted `x0`:
    /// `(2e-5 + 2e-6 kappa) (1 + |x_f64|)`, with `kappa` the largest
    /// `sqrt(alpha_bar_prev) / sqrt(alpha_bar_t)` over the loop's steps for epsilon prediction
    /// (1 otherwise).
    ///
    /// A float32 step rounds each output to a few ulps (`2^-24` relative) of its terms. For
    /// epsilon prediction, `x0 = (x - sqrt(1 - a) eps) / sqrt(a)` carries the rounding of the
    /// numerator, `u (|x| + |eps|)`, divided by `sqrt(a)`, into `prev_sample` multiplied by
    /// `sqrt(alpha_bar_prev)`: an error of `u (|x| + |eps|) kappa` per step. `kappa` is below 2
    /// on the linear schedules but reaches ~1.6e3 on the cosine schedule's first trailing step
    /// (`alpha_bar_999` ~ 1e-9), where a thresholded `x0` near its bound keeps that error (one
    /// such run showed 5.8e-4). Sample and v prediction divide by nothing that is not multiplied
    /// back. The exact Gaussian denoiser then contracts what earlier steps left, and clipping
    /// and thresholding (with `sample_max_value >= 1`) are at most 2-Lipschitz in `x0`.
    /// Observed over 180,000 cases: at most `4e-6` with `kappa = 1` and `1.1e-7 kappa`
    /// otherwise, so the bound has a margin of about 5 on both terms.
    #[test]
    fn f32_and_f64_runs_of_a_20_step_loop_agree(
        config in step_config(),
        eta in prop_oneof![Just(0.0f64), Just(1.0), 0.0..1.5f64],
        clipped in any::<bool>(),
        (shape, seed) in shape_and_seed(),
    ) {
        // Epsilon prediction at zero terminal SNR is 0/0 at the first step (in the reference too):
        // zero-SNR models use v-prediction.
        let rescale = config.rescale_betas_zero_snr && config.prediction_type != PredictionType::Epsilon;
        // A `sample_max_value` below 1 makes thresholding divide x0 by s < 1 at every step, an
        // amplification of 1/s per step by design; keep s >= 1 so that the loop is stable.
        let sample_max_value = config.sample_max_value.max(1.0);
        let config = DdimConfig { rescale_betas_zero_snr: rescale, sample_max_value, ..config };
        let s = scheduler(config, 20);
        let mut rng = StdRng::seed_from_u64(seed);
        let start = random_array::<f32, _>(&shape, &mut rng, 2.5);
        let mu = random_array::<f64, _>(&shape, &mut rng, 1.0);
        let noises: Vec<ArrayD<f32>> = (0..s.timesteps().len())
            .map(|_| random_array::<f32, _>(&shape, &mut rng, 2.0))
            .collect();
        let options = CaseOptions { eta, use_clipped_model_output: clipped };
        let (x32, x0_32) = run_loop(&s, &start, &noises, options, &mu);
        let (x64, x0_64) = run_loop(&s, &start.mapv(f64::from), &noises, options, &mu);
        let mut kappa = 1.0f64;
        if s.config().prediction_type == PredictionType::Epsilon {
            for &t in s.timesteps() {
                let k = s.step_scalars(t, eta).expect("scalars");
                kappa = kappa.max(f64::from(k.sqrt_alpha_bar_prev) / f64::from(k.sqrt_alpha_bar));
            }
        }
        for (name, a, b) in [("prev_sample", &x32, &x64), ("pred_original_sample", &x0_32, &x0_64)] {
            for (&a, &b) in a.iter().zip(b.iter()) {
                let error = (f64::from(a) - b).abs();
                prop_assert!(
                    error <= (2e-5 + 2e-6 * kappa) * (1.0 + b.abs()),
                    "{name}: f32 {a} vs f64 {b} (error {error:e}, kappa {kappa})"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Shape and layout independence
// ---------------------------------------------------------------------------------------------

/// The same logical array in one of several memory layouts: an owned standard array, an owned
/// column-major copy, a transposed view of a reversed-axes array, or a strided slice of a larger
/// one. `f(view)` sees the same values whatever the layout.
fn with_layout<T: DdimFloat, R>(
    a: &ArrayD<T>,
    layout: u8,
    f: impl FnOnce(ddim::ndarray::ArrayViewD<'_, T>) -> R,
) -> R {
    match layout % 4 {
        0 => f(a.view()),
        1 => {
            let mut fortran = ArrayD::from_elem(IxDyn(a.shape()).f(), T::ZERO);
            fortran.assign(a);
            f(fortran.view())
        }
        2 => {
            // Store the reversed-axes array contiguously, then look at it transposed.
            let stored = a.t().as_standard_layout().into_owned();
            f(stored.t())
        }
        _ => {
            // Every other element along axis 0 of an array twice as long.
            let mut shape = a.shape().to_vec();
            shape[0] *= 2;
            let mut big = ArrayD::from_elem(IxDyn(&shape), T::from_f64(f64::NAN));
            big.slice_axis_mut(Axis(0), ddim::ndarray::Slice::new(0, None, 2))
                .assign(a);
            let view = big.slice_axis(Axis(0), ddim::ndarray::Slice::new(0, None, 2));
            f(view)
        }
    }
}

proptest! {
    #![proptest_config(cases(128))]

    /// A transposed view, a column-major copy and a strided slice give exactly the results of the
    /// contiguous array, for step, step_with with given noise (eta > 0, clipped output),
    /// thresholding, step_batch with given noise, inverse_step and add_noise; results have the
    /// input's shape.
    #[test]
    fn results_are_independent_of_memory_layout(
        config in step_config(),
        layouts in any::<[u8; 3]>(),
        (shape, seed) in shape_and_seed(),
        eta in 0.1..1.5f64,
    ) {
        let s = scheduler(config, 25);
        let mut rng = StdRng::seed_from_u64(seed);
        let m = random_array::<f32, _>(&shape, &mut rng, 3.0);
        let x = random_array::<f32, _>(&shape, &mut rng, 3.0);
        let z = random_array::<f32, _>(&shape, &mut rng, 2.0);
        let t = s.timesteps()[rng.random_range(0..s.timesteps().len())];
        let batch = shape[0];
        let ts: Vec<usize> = (0..batch)
            .map(|_| s.timesteps()[rng.random_range(0..s.timesteps().len())])
            .collect();
        let options = CaseOptions { eta, use_clipped_model_output: true };

        let reference = |m: ddim::ndarray::ArrayViewD<'_, f32>,
                         x: ddim::ndarray::ArrayViewD<'_, f32>,
                         z: ddim::ndarray::ArrayViewD<'_, f32>| {
            let plain = s.step(&m, t, &x).expect("step");
            let given = || options.with(NoiseSource::given(&z));
            let noisy = s.step_with(&m, t, &x, given()).expect("step");
            let batch = s.step_batch(&m, &ts, &x, given()).expect("batch");
            let inverse = s.inverse_step(&m, t, &x).expect("inverse");
            let added = s.add_noise(&x, &z, &ts).expect("add_noise");
            let velocity = s.get_velocity(&x, &z, &ts).expect("velocity");
            [
                plain.prev_sample, plain.pred_original_sample,
                noisy.prev_sample, noisy.pred_original_sample,
                batch.prev_sample, batch.pred_original_sample,
                inverse.prev_sample, inverse.pred_original_sample,
                added, velocity,
            ]
        };
        let expected = reference(m.view(), x.view(), z.view());
        let got = with_layout(&m, layouts[0], |m| {
            with_layout(&x, layouts[1], |x| with_layout(&z, layouts[2], |z| reference(m, x, z)))
        });
        for (i, (e, g)) in expected.iter().zip(got.iter()).enumerate() {
            prop_assert_eq!(g.shape(), &shape[..]);
            prop_assert_eq!(bits(e), bits(g), "output {} with layouts {:?}", i, layouts);
        }
    }
}

/// The layout property with thresholding forced on (and a transposed view for every input), so
/// that the per-item quantile is computed over non-contiguous items.
#[test]
fn thresholding_on_a_transposed_view_matches_its_contiguous_copy() {
    let config = DdimConfig {
        thresholding: true,
        dynamic_thresholding_ratio: 0.9,
        sample_max_value: 2.0,
        ..DdimConfig::default()
    };
    let s = scheduler(config, 20);
    let mut rng = StdRng::seed_from_u64(5);
    // Logical shape (5, 3, 4, 6) seen as the transpose of a (6, 4, 3, 5) array.
    let stored_m = random_array::<f32, _>(&[6, 4, 3, 5], &mut rng, 6.0);
    let stored_x = random_array::<f32, _>(&[6, 4, 3, 5], &mut rng, 6.0);
    let stored_z = random_array::<f32, _>(&[6, 4, 3, 5], &mut rng, 1.0);
    let (m, x, z) = (stored_m.t(), stored_x.t(), stored_z.t());
    let standard = |a: ddim::ndarray::ArrayViewD<'_, f32>| a.as_standard_layout().into_owned();
    let (mc, xc, zc) = (standard(m.view()), standard(x.view()), standard(z.view()));
    assert!(!m.is_standard_layout() && mc.is_standard_layout());
    let options = CaseOptions {
        eta: 0.8,
        use_clipped_model_output: false,
    };
    for &t in s.timesteps() {
        let a = s.step(&m, t, &x).expect("step");
        let b = s.step(&mc, t, &xc).expect("step");
        assert_eq!(bits(&a.prev_sample), bits(&b.prev_sample), "t={t}");
        assert_eq!(
            bits(&a.pred_original_sample),
            bits(&b.pred_original_sample),
            "t={t}"
        );
        let a = s
            .step_with(&m, t, &x, options.with(NoiseSource::given(&z)))
            .expect("step");
        let b = s
            .step_with(&mc, t, &xc, options.with(NoiseSource::given(&zc)))
            .expect("step");
        assert_eq!(bits(&a.prev_sample), bits(&b.prev_sample), "t={t}");
        // In place on a transposed mutable view.
        let mut stored = stored_x.clone();
        let mut view = stored.view_mut().reversed_axes();
        s.step_in_place(&m, t, &mut view, options.with(NoiseSource::given(&z)))
            .expect("step");
        assert_eq!(bits(&view.to_owned()), bits(&b.prev_sample), "t={t}");
    }
}

/// One-, two- and five-axis arrays (the last a strided slice) keep their shape through step and
/// step_batch.
#[test]
fn outputs_keep_the_input_shape_for_any_dimensionality() {
    let s = scheduler(DdimConfig::default(), 10);
    let a = Array1::<f32>::from_shape_fn(7, |i| i as f32 * 0.1);
    let out = s.step(&a, 500, &a).expect("step");
    assert_eq!(out.prev_sample.dim(), 7);
    let b = Array2::<f64>::from_shape_fn((3, 2), |(i, j)| (i + j) as f64);
    let out = s
        .step_batch(&b, &[900, 0, 400], &b, StepOptions::default())
        .expect("batch");
    assert_eq!(out.pred_original_sample.dim(), (3, 2));
    let c = ArrayD::<f32>::from_elem(IxDyn(&[2, 1, 3, 1, 2]), 0.5);
    let out = s.step(
        &c.slice(s![.., .., ..;2, .., ..]),
        100,
        &c.slice(s![.., .., ..;2, .., ..]),
    );
    assert_eq!(out.expect("step").prev_sample.shape(), &[2, 1, 2, 1, 2]);
}
