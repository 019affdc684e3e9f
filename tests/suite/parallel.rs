//! The `parallel` feature: a step split across a rayon pool must equal, bit for bit, the same
//! step on one thread, whatever pool it runs in, for every destination, noise kind (drawn noise
//! is not split), element type and way of splitting (element ranges, or whole batch items for
//! thresholding). The one-thread pool never splits, so it is the step without the feature; a
//! column-major copy of the inputs never splits either (only contiguous row-major arrays are
//! split), a second baseline through the kernel's other path.

use ddim::ndarray::{Array4, ShapeBuilder};
use ddim::{DdimConfig, DdimFloat, DdimScheduler, DdimSchedulerOutput, NoiseSource, StepOptions};
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::common::scheduler;

/// More elements than the feature's threshold (2^20), in three items of 393,216.
const SHAPE: (usize, usize, usize, usize) = (3, 3, 256, 512);

/// Deterministic, irregular values in roughly [-2, 2].
fn values<T: DdimFloat>(seed: f64) -> Array4<T> {
    let mut i = 0.0f64;
    Array4::from_shape_simple_fn(SHAPE, || {
        i += 1.0;
        T::from_f64(2.0 * (i * 0.7548 + seed).sin() * (i * 0.1234).cos())
    })
}

/// Exact for every element type.
fn bits<T: DdimFloat>(a: &Array4<T>) -> Vec<u64> {
    a.iter().map(|v| v.to_f64().to_bits()).collect()
}

fn options<'a, T: DdimFloat>(
    noise: &str,
    z: &'a Array4<T>,
    rng: &'a mut StdRng,
) -> StepOptions<'a, T> {
    match noise {
        "none" => StepOptions::default(),
        "given" => StepOptions {
            eta: 0.9,
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

/// Every destination's results, as bit patterns: `step_with`, `step_into`, `step_in_place`.
fn all_calls<T: DdimFloat>(
    s: &DdimScheduler,
    noise: &str,
    (m, x, z): (&Array4<T>, &Array4<T>, &Array4<T>),
) -> Vec<Vec<u64>> {
    let t = s.timesteps()[5];
    let mut rng = StdRng::seed_from_u64(11);
    let new = s
        .step_with(m, t, x, options(noise, z, &mut rng))
        .expect("step_with");
    let mut out = DdimSchedulerOutput::<T, _>::zeros(SHAPE);
    let (p, x0) = (&mut out.prev_sample, &mut out.pred_original_sample);
    s.step_into(m, t, x, options(noise, z, &mut rng), p, x0)
        .expect("step_into");
    let mut in_place = x.to_owned();
    s.step_in_place(m, t, &mut in_place, options(noise, z, &mut rng))
        .expect("step_in_place");
    vec![
        bits(&new.prev_sample),
        bits(&new.pred_original_sample),
        bits(&out.prev_sample),
        bits(&out.pred_original_sample),
        bits(&in_place),
    ]
}

fn check<T: DdimFloat>(label: &str, noises: &[&str]) {
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("pool");
    let three = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .expect("pool");
    let (m, x, z) = (values::<T>(0.3), values::<T>(1.7), values::<T>(2.9));
    let fortran = |a: &Array4<T>| {
        let mut f = Array4::from_elem(SHAPE.f(), T::ZERO);
        f.assign(a);
        f
    };
    let (mf, xf, zf) = (fortran(&m), fortran(&x), fortran(&z));
    let unclipped = DdimConfig {
        clip_sample: false,
        ..DdimConfig::default()
    };
    // Thresholding steps item by item, and its items are what a split hands to other threads.
    let thresholding = DdimConfig {
        thresholding: true,
        sample_max_value: 1.5,
        dynamic_thresholding_ratio: 0.95,
        ..DdimConfig::default()
    };
    let configs = [
        ("clip", DdimConfig::default()),
        ("unclipped", unclipped),
        ("thresholding", thresholding),
    ];
    for (name, config) in configs {
        let s = scheduler(config, 20);
        for &noise in noises {
            let case = format!("{label} {name} {noise}");
            let inputs = (&m, &x, &z);
            let sequential = one.install(|| all_calls(&s, noise, inputs));
            let split = three.install(|| all_calls(&s, noise, inputs));
            let global = all_calls(&s, noise, inputs);
            let column_major = three.install(|| all_calls(&s, noise, (&mf, &xf, &zf)));
            assert!(sequential == split, "three threads, {case}");
            assert!(sequential == global, "global pool, {case}");
            assert!(sequential == column_major, "column-major, {case}");
        }
    }
}

#[test]
fn steps_in_a_three_thread_pool_equal_the_one_thread_steps_to_the_bit() {
    check::<f32>("f32", &["none", "given", "rng"]);
    check::<f64>("f64", &["given"]);
    #[cfg(feature = "half")]
    check::<ddim::half::f16>("f16", &["given"]);
}
