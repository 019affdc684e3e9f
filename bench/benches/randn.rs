//! Speed of `TorchGenerator::randn_into` (PyTorch's `torch.randn` with a seeded CPU generator)
//! into a reused buffer, for the four benchmark shapes, `f32` and `f64`, following torch's
//! AVX2 float32 kernel (`TorchCpuKernel::Avx2`, what torch runs on x86-64), with a baseline in
//! the same run:
//!
//! - `randn_into`: the code chosen at run time (AVX2 and FMA where the CPU has them);
//! - `portable`: the same draws computed by the code compiled for the target's baseline
//!   instruction set only (`randn_into_portable`, hidden from the docs for this purpose).
//!
//! Run with `cargo bench -p ddim-bench --bench randn`; `python3 scripts/bench_table.py randn`
//! then prints the table, with torch's own times from `bench/reference_timings.jsonl`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ddim::ndarray::Array4;
use ddim::{DdimFloat, TorchCpuKernel, TorchGenerator};

type Shape = (usize, usize, usize, usize);

/// The shapes of the step benchmark.
const SHAPES: [Shape; 4] = [
    (1, 4, 64, 64),
    (1, 4, 128, 128),
    (8, 4, 128, 128),
    (16, 3, 256, 256),
];

fn bench_dtype<T: DdimFloat>(c: &mut Criterion, dtype: &str) {
    let mut group = c.benchmark_group(format!("randn_{dtype}"));
    for shape in SHAPES {
        let label = format!("{}x{}x{}x{}", shape.0, shape.1, shape.2, shape.3);
        let mut out = Array4::<T>::from_elem(shape, T::ZERO);
        group.throughput(Throughput::Elements(out.len() as u64));
        if out.len() > 1 << 20 {
            group.sample_size(20);
        }
        let mut g = TorchGenerator::manual_seed(0).with_kernel(TorchCpuKernel::Avx2);
        group.bench_function(BenchmarkId::new("randn_into", &label), |b| {
            b.iter(|| {
                g.randn_into(&mut out);
                black_box(&out);
            })
        });
        group.bench_function(BenchmarkId::new("portable", &label), |b| {
            b.iter(|| {
                g.randn_into_portable(&mut out);
                black_box(&out);
            })
        });
    }
    group.finish();
}

fn bench_randn(c: &mut Criterion) {
    bench_dtype::<f32>(c, "f32");
    bench_dtype::<f64>(c, "f64");
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(3));
    targets = bench_randn
}
criterion_main!(benches);
