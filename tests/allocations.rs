//! After its first call on a thread, every `step_into` and `step_in_place` flavour makes no heap
//! allocation: counted by a global allocator that tallies the allocations of each thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use ddim::ndarray::Array4;
use ddim::{DdimConfig, DdimScheduler, DdimSchedulerOutput, PredictionType, StepOptions};
use rand::SeedableRng;

/// The system allocator, counting allocations (and reallocations) per thread.
struct Counting;

thread_local! {
    // `const` initialisation: no lazy setup, so using it inside the allocator cannot recurse.
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every method forwards to `System` unchanged; the only addition is a thread-local
// counter increment, which neither allocates nor touches the memory being managed.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// How many allocations `f` makes on this thread.
fn allocations_in(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

fn configs() -> Vec<(&'static str, DdimConfig)> {
    vec![
        (
            "epsilon",
            DdimConfig {
                clip_sample: false,
                ..DdimConfig::default()
            },
        ),
        (
            "v_prediction with clipping",
            DdimConfig {
                prediction_type: PredictionType::VPrediction,
                ..DdimConfig::default()
            },
        ),
        (
            "thresholding",
            DdimConfig {
                thresholding: true,
                dynamic_thresholding_ratio: 0.95,
                sample_max_value: 1.5,
                ..DdimConfig::default()
            },
        ),
    ]
}

#[test]
fn steps_into_buffers_and_in_place_allocate_nothing_after_the_first() {
    let shape = (2, 4, 16, 16);
    let model_output = Array4::from_shape_fn(shape, |(b, c, y, x)| ((b + c + y * x) as f32).sin());
    let noise = Array4::from_shape_fn(shape, |(b, c, y, x)| ((b * c + y + x) as f32).cos());
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let stochastic = StepOptions {
        eta: 1.0,
        use_clipped_model_output: true,
    };

    for (name, config) in configs() {
        let mut scheduler = DdimScheduler::new(config).expect("valid config");
        scheduler.set_timesteps(20).expect("valid steps");
        let timesteps = scheduler.timesteps().to_vec();
        let mut latents = model_output.mapv(|v| v * 0.5 + 0.1);
        let mut out = DdimSchedulerOutput::zeros(latents.raw_dim());

        // Every flavour, once, so that thread-local scratch space reaches its final size.
        let mut all_flavours = |t: usize, latents: &mut Array4<f32>| {
            let s = &scheduler;
            s.step_into(&model_output, t, latents, &mut out)
                .expect("step_into");
            s.step_into_with_noise(&model_output, t, latents, &stochastic, &noise, &mut out)
                .expect("step_into_with_noise");
            s.step_into_with_rng(&model_output, t, latents, &stochastic, &mut rng, &mut out)
                .expect("step_into_with_rng");
            s.step_in_place(&model_output, t, latents)
                .expect("step_in_place");
            s.step_in_place_with_noise(&model_output, t, latents, &stochastic, &noise)
                .expect("step_in_place_with_noise");
            s.step_in_place_with_rng(&model_output, t, latents, &stochastic, &mut rng)
                .expect("step_in_place_with_rng");
        };
        all_flavours(timesteps[0], &mut latents);

        let counted = allocations_in(|| {
            for &t in &timesteps[1..] {
                all_flavours(t, &mut latents);
            }
        });
        assert_eq!(counted, 0, "{name}: allocations after the first step");
        assert!(latents.iter().all(|v| v.is_finite()), "{name}: finite");
    }

    // The counter does count: the allocating form allocates its two result arrays.
    let mut scheduler = DdimScheduler::new(DdimConfig::default()).expect("valid config");
    scheduler.set_timesteps(20).expect("valid steps");
    let t = scheduler.timesteps()[0];
    let n = allocations_in(|| {
        let out = scheduler
            .step(&model_output, t, &model_output)
            .expect("step");
        assert_eq!(out.prev_sample.shape(), model_output.shape());
    });
    assert_eq!(n, 2, "step allocates prev_sample and pred_original_sample");
}

/// The buffer and in-place forms give exactly what `step` gives.
#[test]
fn buffer_and_in_place_forms_match_step() {
    let shape = (2, 3, 8, 8);
    let m = Array4::from_shape_fn(shape, |(b, c, y, x)| {
        ((b * 7 + c * 3 + y * x) as f32).sin() * 2.0
    });
    let x = Array4::from_shape_fn(shape, |(b, c, y, x)| ((b + c * 5 + y + x * 3) as f32).cos());
    let z = Array4::from_shape_fn(shape, |(b, c, y, x)| {
        ((b + c + y * 2 + x) as f32 * 0.3).sin()
    });
    let options = StepOptions {
        eta: 0.8,
        use_clipped_model_output: false,
    };
    for (name, config) in configs() {
        let mut s = DdimScheduler::new(config).expect("valid config");
        s.set_timesteps(10).expect("valid steps");
        let t = s.timesteps()[4];
        let expected = s.step_with_noise(&m, t, &x, &options, &z).expect("step");

        let mut out = DdimSchedulerOutput::zeros(shape);
        s.step_into_with_noise(&m, t, &x, &options, &z, &mut out)
            .expect("into");
        assert_eq!(out, expected, "{name}: step_into");

        let mut latents = x.clone();
        s.step_in_place_with_noise(&m, t, &mut latents, &options, &z)
            .expect("in place");
        assert_eq!(latents, expected.prev_sample, "{name}: step_in_place");

        // The same with noise from a generator seeded alike.
        let rng = || rand::rngs::StdRng::seed_from_u64(9);
        let drawn = s
            .step_with_rng(&m, t, &x, &options, &mut rng())
            .expect("rng");
        let mut latents = x.clone();
        s.step_in_place_with_rng(&m, t, &mut latents, &options, &mut rng())
            .expect("rng");
        assert_eq!(latents, drawn.prev_sample, "{name}: step_in_place_with_rng");
        s.step_into_with_rng(&m, t, &x, &options, &mut rng(), &mut out)
            .expect("rng");
        assert_eq!(out, drawn, "{name}: step_into_with_rng");
    }
}

#[test]
fn buffers_of_another_shape_are_refused_and_left_untouched() {
    let mut s = DdimScheduler::new(DdimConfig::default()).expect("valid config");
    s.set_timesteps(10).expect("valid steps");
    let x = Array4::<f32>::ones((1, 2, 4, 4));
    let mut out = DdimSchedulerOutput::<f32, _>::zeros((1, 2, 4, 5));
    let err = s
        .step_into(&x, 900, &x, &mut out)
        .expect_err("wrong buffer");
    assert!(err.to_string().contains("prev_sample"), "{err}");
    assert!(out.prev_sample.iter().all(|&v| v == 0.0));
}
