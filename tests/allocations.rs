//! After its first call on a thread, `step_into` and `step_in_place` make no heap allocation,
//! whatever the noise source (a [`NoiseSource::Torch`] step at `eta > 0` draws its noise block by
//! block inside the pass, without a temporary array): counted by a global allocator that tallies
//! the allocations of each thread. The same allocator tallies the bytes each thread holds, to show that
//! thresholding's scratch space is given back after a large step.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use ddim::ndarray::Array4;
use ddim::rand::rngs::StdRng;
use ddim::rand::SeedableRng;
use ddim::{
    DdimConfig, DdimSchedulerOutput, NoiseSource, PredictionType, StepOptions, TorchGenerator,
};

#[allow(dead_code)]
#[path = "suite/common.rs"]
mod common;

use common::scheduler;

/// The system allocator, counting allocations (and reallocations) per thread, and the bytes
/// allocated minus the bytes freed on each thread.
struct Counting;

thread_local! {
    // `const` initialisation: no lazy setup, so using these inside the allocator cannot recurse.
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
    static HELD_BYTES: Cell<isize> = const { Cell::new(0) };
}

/// Adds `delta` to this thread's held bytes (sizes of live allocations fit in `isize`).
fn hold(delta: isize) {
    HELD_BYTES.with(|n| n.set(n.get() + delta));
}

// SAFETY: every method forwards to `System` unchanged; the only additions are thread-local
// counter updates, which neither allocate nor touch the memory being managed.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        hold(layout.size() as isize);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        hold(-(layout.size() as isize));
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        hold(new_size as isize - layout.size() as isize);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// The bytes this thread has allocated and not yet freed.
fn held_bytes() -> isize {
    HELD_BYTES.with(Cell::get)
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

/// Where a step's noise comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Source {
    None,
    Given,
    Rng,
    Torch,
}

const SOURCES: [Source; 4] = [Source::None, Source::Given, Source::Rng, Source::Torch];

/// The noise sources of the steps of one test, and the other options.
struct Noises {
    given: Array4<f32>,
    rng: StdRng,
    torch: TorchGenerator,
    use_clipped_model_output: bool,
}

impl Noises {
    fn new(given: Array4<f32>, seed: u64, use_clipped_model_output: bool) -> Self {
        Noises {
            given,
            rng: StdRng::seed_from_u64(seed),
            torch: TorchGenerator::manual_seed(seed),
            use_clipped_model_output,
        }
    }

    /// The options of one step with `eta` and noise from `source` (`Source::None` only at
    /// `eta = 0`).
    fn options(&mut self, source: Source, eta: f64) -> StepOptions<'_, f32> {
        let noise = match source {
            Source::None => NoiseSource::None,
            Source::Given => NoiseSource::given(&self.given),
            Source::Rng => NoiseSource::Rng(&mut self.rng),
            Source::Torch => NoiseSource::Torch(&mut self.torch),
        };
        StepOptions {
            eta,
            noise,
            use_clipped_model_output: self.use_clipped_model_output,
        }
    }
}

/// The allocations a step makes after the first: none, whatever the source and eta (a
/// four-axis shape needs no index allocation).
const EXPECTED_ALLOCATIONS: usize = 0;

#[test]
fn steps_into_buffers_and_in_place_allocate_nothing_after_the_first() {
    let shape = (2, 4, 16, 16);
    let model_output = Array4::from_shape_fn(shape, |(b, c, y, x)| ((b + c + y * x) as f32).sin());
    let noise = Array4::from_shape_fn(shape, |(b, c, y, x)| ((b * c + y + x) as f32).cos());

    for (name, config) in configs() {
        let scheduler = scheduler(config, 20);
        let timesteps = scheduler.timesteps().to_vec();
        for source in SOURCES {
            // At eta = 0 every source is consulted for nothing; at eta > 0 all but `None`.
            let etas: &[f64] = if source == Source::None {
                &[0.0]
            } else {
                &[0.0, 1.0]
            };
            for &eta in etas {
                let label = format!("{name}, {source:?} noise, eta {eta}");
                let mut noises = Noises::new(noise.clone(), 0, true);
                let mut latents = model_output.mapv(|v| v * 0.5 + 0.1);
                let mut out = DdimSchedulerOutput::zeros(latents.raw_dim());

                // Each destination, with the allocations of each call.
                let mut both = |t: usize, latents: &mut Array4<f32>| -> [usize; 2] {
                    let s = &scheduler;
                    let into = allocations_in(|| {
                        let options = noises.options(source, eta);
                        let (prev, x0) = (&mut out.prev_sample, &mut out.pred_original_sample);
                        s.step_into(&model_output, t, &*latents, options, prev, x0)
                            .expect("step_into");
                    });
                    let in_place = allocations_in(|| {
                        let options = noises.options(source, eta);
                        s.step_in_place(&model_output, t, latents, options)
                            .expect("step_in_place");
                    });
                    [into, in_place]
                };
                // Once, so that thread-local scratch space reaches its final size.
                both(timesteps[0], &mut latents);

                let expected = EXPECTED_ALLOCATIONS;
                for &t in &timesteps[1..] {
                    let [into, in_place] = both(t, &mut latents);
                    assert_eq!(into, expected, "{label}: step_into at t = {t}");
                    assert_eq!(in_place, expected, "{label}: step_in_place at t = {t}");
                }
                assert!(latents.iter().all(|v| v.is_finite()), "{label}: finite");
            }
        }
    }

    // The counter does count: the allocating form allocates its two result arrays.
    let scheduler = scheduler(DdimConfig::default(), 20);
    let t = scheduler.timesteps()[0];
    let n = allocations_in(|| {
        let out = scheduler
            .step(&model_output, t, &model_output)
            .expect("step");
        assert_eq!(out.prev_sample.shape(), model_output.shape());
    });
    assert_eq!(n, 2, "step allocates prev_sample and pred_original_sample");
}

/// Thresholding's thread-local scratch space holds one integer per element of a batch item.
/// After a large step it holds the large item's worth; after a small step it gives that back,
/// keeping at most the documented 65,536 elements (256 KiB of `u32`).
#[test]
fn thresholding_scratch_is_given_back_after_a_large_then_a_small_step() {
    // On a thread of its own, so that nothing else this test binary runs shares its scratch.
    std::thread::spawn(|| {
        let config = DdimConfig {
            thresholding: true,
            ..DdimConfig::default()
        };
        let scheduler = scheduler(config, 10);
        let t = scheduler.timesteps()[0];
        // One item: with the `parallel` feature, the items of a large batch run on the pool's
        // threads, each with its own scratch.
        let large = Array4::from_shape_fn((1, 4, 256, 256), |(b, c, y, x)| {
            ((b + c * 7 + y * 13 + x) as f32 * 0.01).sin() * 3.0
        });
        let small = Array4::from_shape_fn((2, 4, 8, 8), |(b, c, y, x)| {
            ((b + c + y + x) as f32 * 0.1).cos() * 3.0
        });
        let mut large_out = DdimSchedulerOutput::zeros(large.raw_dim());
        let mut small_out = DdimSchedulerOutput::zeros(small.raw_dim());
        let item_bytes = (large.len() * size_of::<u32>()) as isize;

        let before = held_bytes();
        let (prev, x0) = (
            &mut large_out.prev_sample,
            &mut large_out.pred_original_sample,
        );
        scheduler
            .step_into(&large, t, &large, StepOptions::default(), prev, x0)
            .expect("large step");
        let after_large = held_bytes() - before;
        assert!(
            after_large >= item_bytes,
            "the large step keeps its scratch for the next step of its size: {after_large} bytes \
             held, one item is {item_bytes}"
        );

        let (prev, x0) = (
            &mut small_out.prev_sample,
            &mut small_out.pred_original_sample,
        );
        scheduler
            .step_into(&small, t, &small, StepOptions::default(), prev, x0)
            .expect("small step");
        let after_small = held_bytes() - before;
        let bound = (65_536 * size_of::<u32>()) as isize;
        assert!(
            after_small <= bound,
            "after the small step the thread holds {after_small} bytes, more than {bound}"
        );
    })
    .join()
    .expect("scratch test thread");
}

/// The buffer and in-place forms give exactly what `step_with` gives, for every noise source
/// (generators seeded alike draw alike).
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
    for (name, config) in configs() {
        let s = scheduler(config, 10);
        let t = s.timesteps()[4];
        for source in SOURCES {
            let eta = if source == Source::None { 0.0 } else { 0.8 };
            let label = format!("{name}, {source:?} noise");
            // Three sets of sources in the same state, one per destination.
            let noises = || Noises::new(z.clone(), 9, false);
            let expected = s
                .step_with(&m, t, &x, noises().options(source, eta))
                .expect("step_with");

            let mut out = DdimSchedulerOutput::zeros(shape);
            let (prev, x0) = (&mut out.prev_sample, &mut out.pred_original_sample);
            s.step_into(&m, t, &x, noises().options(source, eta), prev, x0)
                .expect("into");
            assert_eq!(out, expected, "{label}: step_into");

            let mut latents = x.clone();
            s.step_in_place(&m, t, &mut latents, noises().options(source, eta))
                .expect("in place");
            assert_eq!(latents, expected.prev_sample, "{label}: step_in_place");
        }
    }
}

#[test]
fn buffers_of_another_shape_are_refused_and_left_untouched() {
    let s = scheduler(DdimConfig::default(), 10);
    let x = Array4::<f32>::ones((1, 2, 4, 4));
    let mut out = DdimSchedulerOutput::<f32, _>::zeros((1, 2, 4, 5));
    let (prev, x0) = (&mut out.prev_sample, &mut out.pred_original_sample);
    let err = s
        .step_into(&x, 900, &x, StepOptions::default(), prev, x0)
        .expect_err("wrong buffer");
    assert!(err.to_string().contains("prev_sample"), "{err}");
    assert!(out.prev_sample.iter().all(|&v| v == 0.0));
}

/// 16-bit steps (feature `half`) into buffers and in place allocate nothing after the first call
/// either: the arithmetic runs in `f32` element by element (thresholding's scratch space is the
/// `f32` one, grown on the first call), and a `Torch` source draws inside the pass, as for `f32`.
#[cfg(feature = "half")]
#[test]
fn half_steps_into_buffers_and_in_place_allocate_nothing_after_the_first() {
    use ddim::half::f16;

    /// The options of one step with noise from `source`.
    fn options<'a>(
        source: Source,
        eta: f64,
        given: &'a Array4<f16>,
        rng: &'a mut StdRng,
        torch: &'a mut TorchGenerator,
    ) -> StepOptions<'a, f16> {
        let noise = match source {
            Source::None => NoiseSource::None,
            Source::Given => NoiseSource::given(given),
            Source::Rng => NoiseSource::Rng(rng),
            Source::Torch => NoiseSource::Torch(torch),
        };
        StepOptions {
            eta,
            noise,
            use_clipped_model_output: true,
        }
    }

    let shape = (2, 4, 16, 16);
    let half = |v: f32| f16::from_f32(v);
    let model_output =
        Array4::from_shape_fn(shape, |(b, c, y, x)| half(((b + c + y * x) as f32).sin()));
    let given = Array4::from_shape_fn(shape, |(b, c, y, x)| half(((b * c + y + x) as f32).cos()));

    for (name, config) in configs() {
        let scheduler = scheduler(config, 20);
        let timesteps = scheduler.timesteps().to_vec();
        for source in SOURCES {
            let etas: &[f64] = if source == Source::None {
                &[0.0]
            } else {
                &[0.0, 1.0]
            };
            for &eta in etas {
                let label = format!("f16, {name}, {source:?} noise, eta {eta}");
                let mut rng = StdRng::seed_from_u64(0);
                let mut torch = TorchGenerator::manual_seed(0);
                let mut latents = model_output.mapv(|v| half(f32::from(v) * 0.5 + 0.1));
                let mut out = DdimSchedulerOutput::zeros(latents.raw_dim());

                let mut both = |t: usize, latents: &mut Array4<f16>| -> [usize; 2] {
                    let s = &scheduler;
                    let into = allocations_in(|| {
                        let options = options(source, eta, &given, &mut rng, &mut torch);
                        let (prev, x0) = (&mut out.prev_sample, &mut out.pred_original_sample);
                        s.step_into(&model_output, t, &*latents, options, prev, x0)
                            .expect("step_into");
                    });
                    let in_place = allocations_in(|| {
                        let options = options(source, eta, &given, &mut rng, &mut torch);
                        s.step_in_place(&model_output, t, latents, options)
                            .expect("step_in_place");
                    });
                    [into, in_place]
                };
                both(timesteps[0], &mut latents);

                let expected = EXPECTED_ALLOCATIONS;
                for &t in &timesteps[1..] {
                    let [into, in_place] = both(t, &mut latents);
                    assert_eq!(into, expected, "{label}: step_into at t = {t}");
                    assert_eq!(in_place, expected, "{label}: step_in_place at t = {t}");
                }
                assert!(latents.iter().all(|v| v.is_finite()), "{label}: finite");
            }
        }
    }
}
