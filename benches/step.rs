//! Speed of one DDIM step against two baselines measured in the same run: the same arithmetic
//! done one whole-array operation at a time (as a tensor library does it), and the floor of
//! copying the same bytes (two arrays read, two written) with no arithmetic at all.
//!
//! Run with `cargo bench --bench step`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ddim::ndarray::{Array4, Zip};
use ddim::{DdimConfig, DdimScheduler};
use std::hint::black_box;

const SHAPES: [(usize, usize, usize, usize); 2] = [(1, 4, 64, 64), (8, 4, 128, 128)];

fn pattern(shape: (usize, usize, usize, usize), phase: f32) -> Array4<f32> {
    let mut i = 0.0f32;
    Array4::from_shape_simple_fn(shape, || {
        i += 1.0;
        (i * 0.618 + phase).sin()
    })
}

/// Epsilon-prediction DDIM step (eta = 0, no clipping), one whole-array operation at a time.
fn op_by_op(
    model_output: &Array4<f32>,
    sample: &Array4<f32>,
    alpha: f32,
    alpha_prev: f32,
) -> (Array4<f32>, Array4<f32>) {
    let (sa, sb) = (alpha.sqrt(), (1.0 - alpha).sqrt());
    let scaled_output = model_output * sb;
    let numerator = sample - &scaled_output;
    let x0 = numerator / sa;
    let direction = model_output * (1.0 - alpha_prev).sqrt();
    let prev = &x0 * alpha_prev.sqrt() + &direction;
    (prev, x0)
}

fn bench_step(c: &mut Criterion) {
    let config = DdimConfig {
        clip_sample: false,
        ..DdimConfig::default()
    };
    let mut scheduler = DdimScheduler::new(config).expect("valid config");
    scheduler.set_timesteps(50).expect("valid step count");
    let t = scheduler.timesteps()[10];
    let alpha = scheduler.alphas_cumprod()[t];
    let alpha_prev = scheduler.alphas_cumprod()[t - 20];

    let mut group = c.benchmark_group("epsilon_step");
    for shape in SHAPES {
        let (model_output, sample) = (pattern(shape, 0.0), pattern(shape, 1.0));
        let label = format!("{}x{}x{}x{}", shape.0, shape.1, shape.2, shape.3);
        // Bytes moved by a step: two arrays read, two written.
        group.throughput(Throughput::Bytes((4 * 4 * sample.len()) as u64));
        group.bench_with_input(BenchmarkId::new("step", &label), &shape, |b, _| {
            b.iter(|| scheduler.step(black_box(&model_output), t, black_box(&sample)))
        });
        group.bench_with_input(BenchmarkId::new("op_by_op", &label), &shape, |b, _| {
            b.iter(|| {
                op_by_op(
                    black_box(&model_output),
                    black_box(&sample),
                    alpha,
                    alpha_prev,
                )
            })
        });
        let (mut out_a, mut out_b) = (sample.clone(), sample.clone());
        group.bench_with_input(BenchmarkId::new("copy_floor", &label), &shape, |b, _| {
            b.iter(|| {
                Zip::from(&mut out_a)
                    .and(&mut out_b)
                    .and(black_box(&model_output))
                    .and(black_box(&sample))
                    .for_each(|a, b, &m, &s| {
                        *a = m;
                        *b = s;
                    });
                black_box((&out_a, &out_b));
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_step);
criterion_main!(benches);
