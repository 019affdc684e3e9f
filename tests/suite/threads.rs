//! One `DdimScheduler` shared by reference across threads: stepping takes `&self`, and the only
//! mutable state, the dynamic-thresholding scratch buffer, is thread-local. Every thread's
//! results must equal, bit for bit, the same work done sequentially on one thread.

use std::sync::Barrier;

use ddim::ndarray::{concatenate, ArrayD, Axis, IxDyn, Slice};
use ddim::{
    classifier_free_guidance_into, DdimConfig, DdimFloat, DdimScheduler, DdimSchedulerOutput,
    NoiseSource, PredictionType, StepOptions, TimestepSpacing, TorchGenerator,
};
use rand::rngs::{SmallRng, StdRng};
use rand::SeedableRng;

use crate::common::{bits, random_array, scheduler};

const THREADS: usize = 6;

/// The range of the random latents and noise.
const RANGE: f64 = 2.5;

/// Thresholding on, with a ratio and bound that make the threshold vary between items and steps.
fn thresholding_config() -> DdimConfig {
    DdimConfig {
        thresholding: true,
        dynamic_thresholding_ratio: 0.8,
        sample_max_value: 1.8,
        ..DdimConfig::default()
    }
}

/// A deterministic stand-in for the network.
fn model<T: DdimFloat>(x: &ArrayD<T>, t: usize) -> ArrayD<T> {
    let phase = t as f64 * 0.013;
    let mut i = 0.0f64;
    x.mapv(|v| {
        i += 1.0;
        T::from_f64(0.6 * v.to_f64() + 0.3 * (i * 0.37 + phase).sin())
    })
}

/// The options of the workload's stochastic steps.
fn stochastic<T>(noise: NoiseSource<'_, T>, clipped: bool) -> StepOptions<'_, T> {
    StepOptions {
        eta: 0.8,
        noise,
        use_clipped_model_output: clipped,
    }
}

/// Appends the bit patterns of `a` to the transcript.
fn record<T: DdimFloat>(transcript: &mut Vec<u64>, a: &ArrayD<T>) {
    transcript.push(a.len() as u64);
    transcript.extend(a.iter().map(|v| v.to_f64().to_bits()));
}

/// A full sampling loop, exercising every step call and noise source on the same latents, plus
/// an inversion, a per-item batch step and guidance. Latents of several sizes (the thread-local
/// scratch grows and is reused with stale contents). Returns the bits of every result, in order.
fn workload<T: DdimFloat>(s: &DdimScheduler, seed: u64) -> Vec<u64> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut noise_rng = SmallRng::seed_from_u64(seed ^ 0xabcdef);
    let mut generator = TorchGenerator::manual_seed(seed);
    let mut transcript = Vec::new();
    let batch = 1 + (seed as usize % 3);
    // Big, then small, then medium: the scratch keeps the big capacity and old contents.
    let shapes = [
        vec![batch, 4, 32, 32],
        vec![batch + 1, 3, 5],
        vec![batch, 2, 9, 7],
    ];
    let clipped = seed.is_multiple_of(2);
    for shape in shapes {
        let mut x: ArrayD<T> = random_array(&shape, &mut rng, RANGE);
        let mut buffers = DdimSchedulerOutput::<T, IxDyn>::zeros(IxDyn(&shape));
        let mut guided = ArrayD::<T>::from_elem(IxDyn(&shape), T::ZERO);
        for &t in s.timesteps() {
            let eps = model(&x, t);
            let out = s.step(&eps, t, &x).expect("step");
            let (prev, x0) = (&mut buffers.prev_sample, &mut buffers.pred_original_sample);
            s.step_into(&eps, t, &x, StepOptions::default(), prev, x0)
                .expect("step_into");
            assert_eq!(out, buffers, "step_into differs from step on one thread");
            let mut in_place = x.clone();
            s.step_in_place(&eps, t, &mut in_place, StepOptions::default())
                .expect("step_in_place");
            let noise: ArrayD<T> = random_array(&shape, &mut rng, RANGE);
            let noisy = s
                .step_with(&eps, t, &x, stochastic(NoiseSource::given(&noise), clipped))
                .expect("step_with given noise");
            let drawn = s
                .step_with(
                    &eps,
                    t,
                    &x,
                    stochastic(NoiseSource::Rng(&mut noise_rng), clipped),
                )
                .expect("step_with a rand generator");
            let torch = s
                .step_with(
                    &eps,
                    t,
                    &x,
                    stochastic(NoiseSource::Torch(&mut generator), clipped),
                )
                .expect("step_with the torch generator");
            let uncond = model(&eps, t + 1);
            classifier_free_guidance_into(&uncond, &eps, 5.0, 0.7, &mut guided).expect("cfg");
            for a in [
                &out.prev_sample,
                &out.pred_original_sample,
                &in_place,
                &noisy.prev_sample,
                &noisy.pred_original_sample,
                &drawn.prev_sample,
                &torch.prev_sample,
                &guided,
            ] {
                record(&mut transcript, a);
            }
            // Alternate between the deterministic and the stochastic result to move on.
            x = if t % 2 == 0 {
                out.prev_sample
            } else {
                drawn.prev_sample
            };
        }
        // Per-item timesteps: every item at a different point of the schedule.
        let ts = s.timesteps();
        let items: Vec<usize> = (0..shape[0]).map(|i| ts[(i * 7) % ts.len()]).collect();
        let eps = model(&x, items[0]);
        let batch_out = s
            .step_batch(&eps, &items, &x, StepOptions::default())
            .expect("step_batch");
        record(&mut transcript, &batch_out.prev_sample);
        record(&mut transcript, &batch_out.pred_original_sample);
        // And back up the schedule.
        let mut inverted = x.clone();
        for &t in ts.iter().rev() {
            let eps = model(&inverted, t);
            inverted = s
                .inverse_step(&eps, t, &inverted)
                .expect("inverse")
                .prev_sample;
        }
        record(&mut transcript, &inverted);
    }
    transcript
}

/// Runs `workload(seed)` for `seeds` on `THREADS` threads at once, sharing `s` by reference,
/// several rounds, and compares every transcript with the sequential one.
fn check_concurrent<T: DdimFloat>(s: &DdimScheduler, seeds: &[u64]) {
    let sequential: Vec<Vec<u64>> = seeds.iter().map(|&seed| workload::<T>(s, seed)).collect();
    for round in 0..3 {
        let barrier = Barrier::new(seeds.len());
        let concurrent: Vec<Vec<u64>> = std::thread::scope(|scope| {
            let handles: Vec<_> = seeds
                .iter()
                .map(|&seed| {
                    let barrier = &barrier;
                    scope.spawn(move || {
                        barrier.wait();
                        workload::<T>(s, seed)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("no panic in a worker"))
                .collect()
        });
        for (i, (a, b)) in sequential.iter().zip(&concurrent).enumerate() {
            assert_eq!(
                a.len(),
                b.len(),
                "round {round}, thread {i}: transcript length"
            );
            if let Some(at) = a.iter().zip(b).position(|(x, y)| x != y) {
                panic!(
                    "round {round}, thread {i} (seed {}): word {at} differs: {:#x} vs {:#x}",
                    seeds[i], a[at], b[at]
                );
            }
        }
    }
}

#[test]
fn a_shared_thresholding_scheduler_gives_each_thread_the_sequential_results() {
    let s = scheduler(thresholding_config(), 30);
    let seeds: Vec<u64> = (0..THREADS as u64).collect();
    check_concurrent::<f32>(&s, &seeds);
}

#[test]
fn f32_and_f64_threads_share_one_scheduler() {
    // Two element types use two different thread-local scratch buffers; mixing them on one
    // thread and across threads changes nothing.
    let config = DdimConfig {
        prediction_type: PredictionType::VPrediction,
        rescale_betas_zero_snr: true,
        timestep_spacing: TimestepSpacing::Trailing,
        ..thresholding_config()
    };
    let s = scheduler(config, 9);
    let seeds: Vec<u64> = (100..100 + THREADS as u64).collect();
    let sequential32: Vec<Vec<u64>> = seeds
        .iter()
        .map(|&seed| workload::<f32>(&s, seed))
        .collect();
    let sequential64: Vec<Vec<u64>> = seeds
        .iter()
        .map(|&seed| workload::<f64>(&s, seed))
        .collect();
    let results: Vec<(Vec<u64>, Vec<u64>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = seeds
            .iter()
            .enumerate()
            .map(|(i, &seed)| {
                let s = &s;
                scope.spawn(move || {
                    // Odd threads start with f64, even ones with f32.
                    if i % 2 == 0 {
                        let a = workload::<f32>(s, seed);
                        (a, workload::<f64>(s, seed))
                    } else {
                        let b = workload::<f64>(s, seed);
                        (workload::<f32>(s, seed), b)
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("no panic in a worker"))
            .collect()
    });
    for (i, (a, b)) in results.iter().enumerate() {
        assert!(a == &sequential32[i], "thread {i}: f32 transcript differs");
        assert!(b == &sequential64[i], "thread {i}: f64 transcript differs");
    }
}

/// A batch split into items stepped on different threads (each with its own output buffers and
/// `step_into`) gives exactly the whole-batch step: thresholding is per item, so splitting must
/// not change any threshold.
#[test]
fn a_batch_split_across_threads_equals_the_whole_batch_step() {
    let s = scheduler(thresholding_config(), 20);
    let mut rng = StdRng::seed_from_u64(9);
    let shape = [THREADS * 2, 4, 12, 12];
    let x: ArrayD<f32> = random_array(&shape, &mut rng, RANGE);
    for &t in s.timesteps() {
        let eps = model(&x, t);
        let whole = s.step(&eps, t, &x).expect("step");
        let parts: Vec<DdimSchedulerOutput<f32, IxDyn>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..THREADS)
                .map(|i| {
                    let (s, eps, x) = (&s, &eps, &x);
                    scope.spawn(move || {
                        let range = Slice::from(2 * i..2 * i + 2);
                        let (e, v) = (eps.slice_axis(Axis(0), range), x.slice_axis(Axis(0), range));
                        let mut out = DdimSchedulerOutput::<f32, IxDyn>::zeros(v.raw_dim());
                        let (prev, x0) = (&mut out.prev_sample, &mut out.pred_original_sample);
                        s.step_into(&e, t, &v, StepOptions::default(), prev, x0)
                            .expect("step_into");
                        out
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("no panic in a worker"))
                .collect()
        });
        let prev: Vec<_> = parts.iter().map(|p| p.prev_sample.view()).collect();
        let x0: Vec<_> = parts
            .iter()
            .map(|p| p.pred_original_sample.view())
            .collect();
        let prev = concatenate(Axis(0), &prev).expect("same shapes");
        let x0 = concatenate(Axis(0), &x0).expect("same shapes");
        assert_eq!(bits(&prev), bits(&whole.prev_sample), "t = {t}");
        assert_eq!(bits(&x0), bits(&whole.pred_original_sample), "t = {t}");
    }
}
