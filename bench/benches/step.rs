//! Speed of one DDIM step, with two baselines measured in the same run:
//!
//! - `op_by_op`: the same arithmetic one whole-array operation at a time, each producing a new
//!   array, the way a tensor library evaluates the reference's Python (a sort-based quantile for
//!   thresholding, a separately drawn noise array for eta > 0);
//! - `copy_floor`: copying the same bytes (two arrays read, two written) with no arithmetic, the
//!   fastest any step could possibly be.
//!
//! Run with `cargo bench --bench step`; `python3 scripts/bench_table.py` then prints the README's
//! table from criterion's results.
//!
//! With `--features parallel` (the crate's `parallel` feature) the `parallel` group also runs:
//! the epsilon step and the thresholding step inside a rayon pool of one thread (which never
//! splits: the baseline) and inside a pool of every core, at each shape.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ddim::ndarray::{Array4, Axis};
use ddim::{
    BetaSchedule, DdimConfig, DdimScheduler, DdimSchedulerOutput, NoiseSource, PredictionType,
    StepOptions, StepScalars, TorchGenerator,
};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

type Shape = (usize, usize, usize, usize);

/// A Stable Diffusion 1.5 latent, an SDXL latent, a batch of eight SDXL latents, and sixteen
/// 256 x 256 RGB images (a pixel-space model).
const SHAPES: [Shape; 4] = [
    (1, 4, 64, 64),
    (1, 4, 128, 128),
    (8, 4, 128, 128),
    (16, 3, 256, 256),
];

/// One benchmarked configuration.
struct Case {
    name: &'static str,
    config: DdimConfig,
    eta: f64,
}

fn cases() -> Vec<Case> {
    let sd = DdimConfig {
        beta_schedule: BetaSchedule::ScaledLinear,
        beta_start: 0.00085,
        beta_end: 0.012,
        clip_sample: false,
        set_alpha_to_one: false,
        steps_offset: 1,
        ..DdimConfig::default()
    };
    vec![
        Case {
            name: "epsilon",
            config: sd.clone(),
            eta: 0.0,
        },
        Case {
            name: "v_prediction_clip",
            config: DdimConfig {
                prediction_type: PredictionType::VPrediction,
                clip_sample: true,
                ..sd.clone()
            },
            eta: 0.0,
        },
        Case {
            name: "thresholding",
            config: DdimConfig {
                beta_schedule: BetaSchedule::SquaredcosCapV2,
                thresholding: true,
                dynamic_thresholding_ratio: 0.95,
                sample_max_value: 1.5,
                ..DdimConfig::default()
            },
            eta: 0.0,
        },
        Case {
            name: "eta1_rng",
            config: sd,
            eta: 1.0,
        },
    ]
}

fn normal(shape: Shape, rng: &mut SmallRng) -> Array4<f32> {
    Array4::from_shape_simple_fn(shape, || StandardNormal.sample(rng))
}

/// The reference's step, one whole-array operation (and one new array) at a time.
fn op_by_op(
    config: &DdimConfig,
    k: &StepScalars,
    model_output: &Array4<f32>,
    sample: &Array4<f32>,
    rng: &mut SmallRng,
) -> (Array4<f32>, Array4<f32>) {
    let (sa, sb) = (k.sqrt_alpha_bar, k.sqrt_one_minus_alpha_bar);
    let (mut x0, eps) = match config.prediction_type {
        PredictionType::VPrediction => (
            &(sample * sa) - &(model_output * sb),
            &(model_output * sa) + &(sample * sb),
        ),
        _ => ((sample - &(model_output * sb)) / sa, model_output.clone()),
    };
    if config.thresholding {
        for mut item in x0.axis_iter_mut(Axis(0)) {
            let mut sorted: Vec<f32> = item.iter().map(|v| v.abs()).collect();
            sorted.sort_by(f32::total_cmp);
            let rank = config.dynamic_thresholding_ratio * (sorted.len() - 1) as f64;
            let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
            let w = (rank - lo as f64) as f32;
            let q = sorted[lo] + w * (sorted[hi] - sorted[lo]);
            let s = q.max(1.0).min(config.sample_max_value as f32);
            let clamped = item.mapv(|v| v.clamp(-s, s));
            item.assign(&(clamped / s));
        }
    } else if config.clip_sample {
        let r = config.clip_sample_range as f32;
        x0 = x0.mapv(|v| v.clamp(-r, r));
    }
    let direction = &eps * k.direction;
    let mut prev = &(&x0 * k.sqrt_alpha_bar_prev) + &direction;
    if k.sigma > 0.0 {
        let noise = normal(sample.dim(), rng);
        prev = &prev + &(&noise * k.sigma);
    }
    (prev, x0)
}

/// The options of a benchmarked step: the deterministic configurations draw nothing; `eta1_rng`
/// draws from `rng`.
fn options(eta: f64, rng: &mut SmallRng) -> StepOptions<'_, f32> {
    StepOptions {
        eta,
        noise: NoiseSource::Rng(rng),
        ..StepOptions::default()
    }
}

fn bench_step(c: &mut Criterion) {
    let mut rng = SmallRng::seed_from_u64(0);
    for case in cases() {
        let mut scheduler = DdimScheduler::new(case.config.clone()).expect("valid config");
        scheduler.set_timesteps(50).expect("valid step count");
        let t = scheduler.timesteps()[10];
        let scalars = scheduler.step_scalars(t, case.eta).expect("valid step");
        // The deterministic configurations draw nothing; `eta1_rng` draws from `rng`.
        let eta = case.eta;

        let mut group = c.benchmark_group(case.name);
        for shape in SHAPES {
            let label = format!("{}x{}x{}x{}", shape.0, shape.1, shape.2, shape.3);
            let model_output = normal(shape, &mut rng) * 1.5;
            let sample = normal(shape, &mut rng);
            let len = sample.len();
            // Bytes a step must move at least: two arrays read, two written.
            group.throughput(Throughput::Bytes((4 * 4 * len) as u64));
            if len > 1 << 20 {
                group.sample_size(20);
            }

            group.bench_function(BenchmarkId::new("step", &label), |b| {
                b.iter(|| {
                    scheduler
                        .step_with(&model_output, t, black_box(&sample), options(eta, &mut rng))
                        .expect("step")
                })
            });
            let mut out = DdimSchedulerOutput::zeros(shape);
            group.bench_function(BenchmarkId::new("step_into", &label), |b| {
                b.iter(|| {
                    scheduler
                        .step_into(
                            &model_output,
                            t,
                            black_box(&sample),
                            options(eta, &mut rng),
                            &mut out.prev_sample,
                            &mut out.pred_original_sample,
                        )
                        .expect("step_into")
                })
            });
            group.bench_function(BenchmarkId::new("op_by_op", &label), |b| {
                b.iter(|| {
                    op_by_op(
                        &case.config,
                        &scalars,
                        &model_output,
                        black_box(&sample),
                        &mut rng,
                    )
                })
            });
            let (mut out_a, mut out_b) = (vec![0.0f32; len], vec![0.0f32; len]);
            let (m, s) = (
                model_output.as_slice().expect("standard layout"),
                sample.as_slice().expect("standard layout"),
            );
            group.bench_function(BenchmarkId::new("copy_floor", &label), |b| {
                b.iter(|| {
                    out_a.copy_from_slice(black_box(m));
                    out_b.copy_from_slice(black_box(s));
                    black_box((&out_a, &out_b));
                })
            });
        }
        group.finish();
    }
}

/// The `eta1_rng` step with noise from PyTorch's generator (`NoiseSource::Torch`, what
/// diffusers' `step(..., eta=1.0, generator=g)` draws): `step_into`, which draws the noise block
/// by block inside its pass, and as a baseline in the same run the same draws made first into a
/// reused buffer (`randn_into`) and then given to `step_into` (two passes, no allocation).
/// `scripts/time_reference.py` times diffusers' own step on the same inputs.
fn bench_eta1_torch(c: &mut Criterion) {
    let mut rng = SmallRng::seed_from_u64(0);
    let config = cases()
        .into_iter()
        .find(|case| case.name == "eta1_rng")
        .expect("the eta1_rng case")
        .config;
    let mut scheduler = DdimScheduler::new(config).expect("valid config");
    scheduler.set_timesteps(50).expect("valid step count");
    let t = scheduler.timesteps()[10];
    let mut generator = TorchGenerator::manual_seed(0);
    let mut group = c.benchmark_group("eta1_torch");
    for shape in SHAPES {
        let label = format!("{}x{}x{}x{}", shape.0, shape.1, shape.2, shape.3);
        let model_output = normal(shape, &mut rng) * 1.5;
        let sample = normal(shape, &mut rng);
        let len = sample.len();
        group.throughput(Throughput::Bytes((4 * 4 * len) as u64));
        if len > 1 << 20 {
            group.sample_size(20);
        }
        let mut out = DdimSchedulerOutput::zeros(shape);
        group.bench_function(BenchmarkId::new("step_into", &label), |b| {
            b.iter(|| {
                let options = StepOptions {
                    eta: 1.0,
                    noise: NoiseSource::Torch(&mut generator),
                    ..StepOptions::default()
                };
                let (prev, x0) = (&mut out.prev_sample, &mut out.pred_original_sample);
                scheduler
                    .step_into(&model_output, t, black_box(&sample), options, prev, x0)
                    .expect("step_into")
            })
        });
        let mut noise = Array4::<f32>::zeros(shape);
        group.bench_function(BenchmarkId::new("randn_then_step_into", &label), |b| {
            b.iter(|| {
                generator.randn_into(&mut noise);
                let options = StepOptions {
                    eta: 1.0,
                    noise: NoiseSource::given(&noise),
                    ..StepOptions::default()
                };
                let (prev, x0) = (&mut out.prev_sample, &mut out.pred_original_sample);
                scheduler
                    .step_into(&model_output, t, black_box(&sample), options, prev, x0)
                    .expect("step_into")
            })
        });
    }
    group.finish();
}

/// The `parallel` feature: the same step in a one-thread rayon pool (the pass stays on the
/// calling thread) and in a pool of one thread per core (`RAYON_NUM_THREADS` overrides).
#[cfg(feature = "parallel")]
fn bench_parallel(c: &mut Criterion) {
    let mut rng = SmallRng::seed_from_u64(1);
    let case = &cases()[0];
    let mut scheduler = DdimScheduler::new(case.config.clone()).expect("valid config");
    scheduler.set_timesteps(50).expect("valid step count");
    let t = scheduler.timesteps()[10];
    let config = cases()
        .into_iter()
        .find(|case| case.name == "thresholding")
        .expect("the thresholding case")
        .config;
    let mut thresholding = DdimScheduler::new(config).expect("valid config");
    thresholding.set_timesteps(50).expect("valid step count");
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("a pool");
    let all = rayon::ThreadPoolBuilder::new().build().expect("a pool");
    let pools = [("1_thread", &one), ("pool", &all)];
    let mut group = c.benchmark_group("parallel");
    for shape in SHAPES {
        let label = format!("{}x{}x{}x{}", shape.0, shape.1, shape.2, shape.3);
        let model_output = normal(shape, &mut rng) * 1.5;
        let sample = normal(shape, &mut rng);
        group.throughput(Throughput::Bytes((4 * 4 * sample.len()) as u64));
        if sample.len() > 1 << 20 {
            group.sample_size(20);
        }
        let mut out = DdimSchedulerOutput::zeros(shape);
        for (name, pool) in pools {
            // Thresholding steps item by item: a batch may be split into its items.
            for (prefix, scheduler) in [("", &scheduler), ("thresholding_", &thresholding)] {
                let id = BenchmarkId::new(format!("{prefix}step_into_{name}"), &label);
                group.bench_function(id, |b| {
                    pool.install(|| {
                        b.iter(|| {
                            scheduler
                                .step_into(
                                    &model_output,
                                    t,
                                    black_box(&sample),
                                    StepOptions::default(),
                                    &mut out.prev_sample,
                                    &mut out.pred_original_sample,
                                )
                                .expect("step_into")
                        })
                    })
                });
            }
            let id = BenchmarkId::new(format!("step_{name}"), &label);
            group.bench_function(id, |b| {
                pool.install(|| {
                    b.iter(|| {
                        scheduler
                            .step(&model_output, t, black_box(&sample))
                            .expect("step")
                    })
                })
            });
        }
    }
    group.finish();
}

#[cfg(not(feature = "parallel"))]
fn bench_parallel(_: &mut Criterion) {}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(3));
    targets = bench_step, bench_eta1_torch, bench_parallel
}
criterion_main!(benches);
