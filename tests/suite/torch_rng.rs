//! `TorchGenerator` against PyTorch's CPU generator and diffusers (fixture written by
//! `scripts/golden_torch_rng.py`): `torch.randn` for several seeds, sizes and both float types
//! under both of torch's float32 kernels, consecutive calls on one generator, and full `eta > 0`
//! DDIM loops driven by a seeded generator, plus the generator's behaviour around steps.
//!
//! Tolerances: every draw bit for bit (with the fixture's kernel for float32 draws of 16 or more
//! elements; the results that go through the C library's `log`, `log1p`, `sin` and `cos` are
//! compared bit for bit where that library is glibc, as torch's Linux build uses it, and within
//! 4 units in the last place elsewhere); the other kernel within the bound measured in
//! `other_kernel_is_within_the_stated_bound`; loop trajectories within `1e-4 + 1e-4 * |reference|`.

use crate::common::{
    assert_close, case_scheduler, cases, golden, inputs, loop_scheduler, name, tensor, CaseOptions,
    Tensor,
};
use ddim::ndarray::{concatenate, Array, ArrayD, Axis, IxDyn, ShapeBuilder};
use ddim::{
    DdimError, DdimFloat, DdimScheduler, DdimSchedulerOutput, NoiseSource, StepOptions,
    TorchCpuKernel, TorchGenerator,
};
use serde_json::Value;

/// Loop trajectories against the reference: `abs + rel * |reference|` per element.
const LOOP: (f64, f64) = (1e-4, 1e-4);

/// The bound within which one float32 kernel's draws agree with torch's draws under the other
/// kernel, in absolute value (the kernels round `theta` differently, by up to one unit in the
/// last place of a number near 2 pi, which the radius, at most 5.8, scales). Measured: 2.5e-6
/// over 10 million draws, 1.8e-6 on the fixture (`other_kernel_is_within_the_stated_bound`).
const OTHER_KERNEL: f64 = 3e-6;

fn kernel(name: &str) -> TorchCpuKernel {
    match name {
        "avx2" => TorchCpuKernel::Avx2,
        "scalar" => TorchCpuKernel::Scalar,
        other => panic!("unknown kernel {other}"),
    }
}

fn seed(value: &Value) -> u64 {
    value.as_u64().expect("seed")
}

fn shape(value: &Value) -> Vec<usize> {
    serde_json::from_value(value.clone()).expect("shape")
}

fn generator(seed: u64, kernel: TorchCpuKernel) -> TorchGenerator {
    TorchGenerator::manual_seed(seed).with_kernel(kernel)
}

/// `torch.randn(shape, generator=g, dtype=dtype)`, as a fixture tensor.
fn randn(g: &mut TorchGenerator, shape: &[usize], dtype: &str) -> Tensor {
    match dtype {
        "f32" => Tensor::F32(g.randn(IxDyn(shape))),
        "f64" => Tensor::F64(g.randn(IxDyn(shape))),
        other => panic!("unknown dtype {other}"),
    }
}

/// Whether the C library is glibc, the one torch's Linux build calls.
const GLIBC: bool = cfg!(all(target_os = "linux", target_env = "gnu"));

/// The distance in float32 (or float64) units in the last place.
fn ulps(a: &Tensor, i: usize, b: f64) -> u64 {
    let ordered32 = |x: f32| {
        let bits = x.to_bits() as i64;
        if bits < 0 {
            i64::from(i32::MIN) - bits
        } else {
            bits
        }
    };
    let ordered64 = |x: f64| {
        let bits = x.to_bits() as i64;
        if bits < 0 {
            i64::MIN.wrapping_sub(bits)
        } else {
            bits
        }
    };
    match a {
        Tensor::F32(x) => {
            ordered32(x.as_slice().expect("standard")[i]).abs_diff(ordered32(b as f32))
        }
        Tensor::F64(x) => ordered64(x.as_slice().expect("standard")[i]).abs_diff(ordered64(b)),
    }
}

/// Asserts equal bits, or (for results that depend on the C library, off glibc) at most 4 ulp.
fn assert_same(what: &str, ours: &Tensor, reference: &Tensor, libm: bool) {
    let (o, r) = (ours.values(), reference.values());
    assert_eq!(o.len(), r.len(), "{what}: length");
    for (i, (&a, &b)) in o.iter().zip(&r).enumerate() {
        if a.to_bits() == b.to_bits() {
            continue;
        }
        assert!(
            libm && !GLIBC && ulps(ours, i, b) <= 4,
            "{what}: element {i} is {a:e}, torch {b:e} (difference {:e})",
            (a - b).abs()
        );
    }
}

/// The little-endian bytes of the values, as the fixture hashes them.
fn le_bytes(t: &Tensor) -> Vec<u8> {
    match t {
        Tensor::F32(a) => a.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Tensor::F64(a) => a.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

fn fnv1a64(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn first_last_16(t: &Tensor) -> (Tensor, Tensor) {
    let v = t.values();
    let pick = |s: &[f64]| match t {
        Tensor::F32(_) => Tensor::F32(
            ArrayD::from_shape_vec(IxDyn(&[16]), s.iter().map(|&x| x as f32).collect())
                .expect("16"),
        ),
        Tensor::F64(_) => {
            Tensor::F64(ArrayD::from_shape_vec(IxDyn(&[16]), s.to_vec()).expect("16"))
        }
    };
    (pick(&v[..16]), pick(&v[v.len() - 16..]))
}

/// Compares our draw with a fixture tensor or digest.
fn check_expected(what: &str, ours: &Tensor, expected: &Value, libm: bool) {
    if expected.get("hex").is_some() {
        assert_same(what, ours, &tensor(expected), libm);
        return;
    }
    assert_eq!(shape(&expected["shape"]), ours_shape(ours), "{what}: shape");
    let (head, tail) = first_last_16(ours);
    assert_same(
        &format!("{what}, first 16"),
        &head,
        &tensor(&expected["head"]),
        libm,
    );
    assert_same(
        &format!("{what}, last 16"),
        &tail,
        &tensor(&expected["tail"]),
        libm,
    );
    if !libm || GLIBC {
        assert_eq!(
            fnv1a64(&le_bytes(ours)),
            expected["fnv1a64"].as_str().expect("hash"),
            "{what}: hash of all elements"
        );
    }
}

fn ours_shape(t: &Tensor) -> Vec<usize> {
    match t {
        Tensor::F32(a) => a.shape().to_vec(),
        Tensor::F64(a) => a.shape().to_vec(),
    }
}

/// Whether a draw goes through the C library's functions rather than pure arithmetic: all but
/// float32 draws of 16 or more elements with the AVX2 kernel.
fn uses_libm(dtype: &str, len: usize, kernel: TorchCpuKernel) -> bool {
    !(dtype == "f32" && len >= 16 && kernel == TorchCpuKernel::Avx2)
}

fn fixture_kernels(fixture: &Value) -> Vec<(String, TorchCpuKernel)> {
    fixture["kernels"]
        .as_array()
        .expect("kernels")
        .iter()
        .map(|k| {
            let k = k.as_str().expect("kernel name");
            (k.to_string(), kernel(k))
        })
        .collect()
}

#[test]
fn randn_matches_torch_for_every_seed_size_and_type() {
    let fixture = golden("torch_rng");
    let kernels = fixture_kernels(&fixture);
    assert!(
        kernels.iter().any(|(k, _)| k == "avx2"),
        "the fixture has AVX2 draws"
    );
    assert!(
        kernels.iter().any(|(k, _)| k == "scalar"),
        "the fixture has DEFAULT draws"
    );
    let mut compared = 0;
    for case in cases(&fixture) {
        let label = name(case);
        let dims = shape(&case["shape"]);
        let len: usize = dims.iter().product();
        let dtype = case["dtype"].as_str().expect("dtype");
        for (kname, k) in &kernels {
            let ours = randn(&mut generator(seed(&case["seed"]), *k), &dims, dtype);
            let expected = match case.get("expected") {
                Some(e) => e,
                None => &case["expected_by_kernel"][kname.as_str()],
            };
            let what = format!("{label} ({kname} kernel)");
            check_expected(&what, &ours, expected, uses_libm(dtype, len, *k));
            compared += 1;
        }
    }
    assert_eq!(compared, 70 * kernels.len());
}

#[test]
fn consecutive_calls_carry_the_state_as_torch_does() {
    let fixture = golden("torch_rng");
    for sequence in fixture["sequences"].as_array().expect("sequences") {
        let label = name(sequence);
        for (kname, k) in fixture_kernels(&fixture) {
            let outputs = sequence["expected_by_kernel"][kname.as_str()]
                .as_array()
                .expect("outputs");
            let mut g = generator(seed(&sequence["seed"]), k);
            for (i, (call, expected)) in sequence["calls"]
                .as_array()
                .expect("calls")
                .iter()
                .zip(outputs)
                .enumerate()
            {
                if let Some(s) = call.get("reseed") {
                    // g.manual_seed(s) on the same generator: a fresh state and no cached normal.
                    g = generator(seed(s), k);
                    continue;
                }
                let dims = shape(&call["shape"]);
                let dtype = call["dtype"].as_str().expect("dtype");
                let ours = randn(&mut g, &dims, dtype);
                let libm = uses_libm(dtype, dims.iter().product(), k);
                assert_same(
                    &format!("{label}, call {i} {dims:?} {dtype} ({kname} kernel)"),
                    &ours,
                    &tensor(expected),
                    libm,
                );
            }
        }
    }
}

/// Worst difference between one kernel's draws and torch's draws under the other kernel.
#[test]
fn other_kernel_is_within_the_stated_bound() {
    let fixture = golden("torch_rng");
    let mut worst = 0.0f64;
    let (mut differing, mut total) = (0usize, 0usize);
    for case in cases(&fixture) {
        let Some(by_kernel) = case.get("expected_by_kernel") else {
            continue;
        };
        for (mine, theirs) in [("avx2", "scalar"), ("scalar", "avx2")] {
            let expected = &by_kernel[theirs];
            if expected.get("hex").is_none() {
                continue;
            }
            let reference = tensor(expected);
            let ours = randn(
                &mut generator(seed(&case["seed"]), kernel(mine)),
                &shape(&case["shape"]),
                "f32",
            );
            for (a, b) in ours.values().iter().zip(reference.values()) {
                total += 1;
                if a.to_bits() != b.to_bits() {
                    differing += 1;
                }
                worst = worst.max((a - b).abs());
            }
        }
    }
    println!("other kernel: {differing} of {total} float32 draws differ, by at most {worst:e}");
    assert!(
        total > 16_384,
        "the comparison covers the full (1, 4, 64, 64) draw"
    );
    assert!(differing > 0, "the two kernels differ somewhere");
    assert!(worst <= OTHER_KERNEL, "{worst:e}");
}

/// The stand-in network of the loop fixtures, `sample * k - c * base` with
/// `k = f32(0.6 + 0.3 t / T)` and `c = f32(0.05)`, in the element type (torch widens the float32
/// scalars for float64 samples).
fn stand_in_model<T: DdimFloat>(
    sample: &ArrayD<T>,
    base: &ArrayD<T>,
    t: usize,
    train: usize,
) -> ArrayD<T> {
    let k = T::from_f32((0.6 + 0.3 * t as f64 / train as f64) as f32);
    let c = T::from_f32(0.05);
    sample.mapv(|v| v * k) - base.mapv(|v| c * v)
}

/// diffusers' `randn_tensor(shape, generator=...)`: one generator for the whole array, or one
/// per batch item drawing an array of shape `(1, ...)` each.
fn randn_tensor<T: DdimFloat>(generators: &mut [TorchGenerator], dims: &[usize]) -> ArrayD<T> {
    match generators {
        [g] => g.randn(IxDyn(dims)),
        many => {
            let mut item = dims.to_vec();
            item[0] = 1;
            let items: Vec<ArrayD<T>> = many.iter_mut().map(|g| g.randn(IxDyn(&item))).collect();
            let views: Vec<_> = items.iter().map(|a| a.view()).collect();
            concatenate(Axis(0), &views).expect("same item shapes")
        }
    }
}

struct LoopResult<T> {
    initial: ArrayD<T>,
    last: DdimSchedulerOutput<T, IxDyn>,
    after: Vec<Tensor>,
}

/// One loop of the fixture, the way a user ports it: latents from the generator(s), then each
/// step with the generator's noise.
fn run_loop<T: DdimFloat>(case: &Value, base: &ArrayD<T>) -> LoopResult<T> {
    let label = name(case);
    let s: DdimScheduler = loop_scheduler(case);
    let k = kernel(case["kernel"].as_str().expect("kernel"));
    let mut generators: Vec<TorchGenerator> = case["seeds"]
        .as_array()
        .expect("seeds")
        .iter()
        .map(|v| generator(seed(v), k))
        .collect();
    let dims = shape(&case["shape"]);
    let options = CaseOptions::of(case);

    let initial: ArrayD<T> = randn_tensor(&mut generators, &dims);
    let mut x = initial.mapv(|v| v * T::from_f32(s.init_noise_sigma()));
    let mut last = None;
    let train = s.config().num_train_timesteps;
    for &t in s.timesteps() {
        let eps = stand_in_model(&s.scale_model_input(&x, t), base, t, train);
        let out = match generators.as_mut_slice() {
            [g] => s.step_with(&eps, t, &x, options.with(NoiseSource::Torch(g))),
            // A list of generators: each item's noise from its own, only when eta > 0.
            many if options.eta > 0.0 => {
                let noise = randn_tensor(many, &dims);
                s.step_with(&eps, t, &x, options.with(NoiseSource::given(&noise)))
            }
            _ => s.step_with(&eps, t, &x, options.with(NoiseSource::None)),
        }
        .unwrap_or_else(|e| panic!("{label}, t = {t}: {e}"));
        x = out.prev_sample.clone();
        last = Some(out);
    }
    let after = generators
        .iter_mut()
        .map(|g| Tensor::F64(g.randn(IxDyn(&[5]))))
        .collect();
    LoopResult {
        initial,
        last: last.expect("at least one step"),
        after,
    }
}

#[test]
fn eta_loops_follow_the_reference_trajectory_from_the_same_seed() {
    let fixture = golden("torch_rng");
    let inputs = inputs(&fixture);
    let mut worst = 0.0f64;
    let mut count = 0;
    for case in fixture["loops"].as_array().expect("loops") {
        let label = name(case);
        let base = &inputs[case["base"].as_str().expect("base")];
        let (initial, prev, x0, after) = match case["dtype"].as_str().expect("dtype") {
            "f32" => {
                let r = run_loop(case, base.f32());
                let w = |a: ArrayD<f32>| Tensor::F32(a);
                (
                    w(r.initial),
                    w(r.last.prev_sample),
                    w(r.last.pred_original_sample),
                    r.after,
                )
            }
            _ => {
                let r = run_loop(case, base.f64());
                let w = |a: ArrayD<f64>| Tensor::F64(a);
                (
                    w(r.initial),
                    w(r.last.prev_sample),
                    w(r.last.pred_original_sample),
                    r.after,
                )
            }
        };
        let dtype = case["dtype"].as_str().expect("dtype");
        let libm = uses_libm(
            dtype,
            initial.values().len(),
            kernel(case["kernel"].as_str().expect("kernel")),
        );
        assert_same(
            &format!("{label}: initial latents"),
            &initial,
            &tensor(&case["initial"]),
            libm,
        );
        for (what, ours, key) in [
            ("final sample", &prev, "final"),
            ("final pred_original_sample", &x0, "pred_original_final"),
        ] {
            let reference = tensor(&case[key]).values();
            assert_close(
                &format!("{label}: {what}"),
                &ours.values(),
                &reference,
                LOOP.0,
                LOOP.1,
            );
            let here = ours
                .values()
                .iter()
                .zip(&reference)
                .fold(0.0f64, |w, (a, b)| w.max((a - b).abs()));
            println!("{label}: {what} within {here:e} of the reference");
            worst = worst.max(here);
        }
        // The generator ends where torch's does: one more draw agrees bit for bit (this fails
        // if a step drew at eta = 0, or drew a different number of numbers).
        let expected_after = case["after"].as_array().expect("after");
        assert_eq!(after.len(), expected_after.len(), "{label}: generators");
        for (ours, expected) in after.iter().zip(expected_after) {
            assert_same(
                &format!("{label}: draw after the loop"),
                ours,
                &tensor(expected),
                true,
            );
        }
        count += 1;
    }
    println!("loops: worst difference of final samples from the reference {worst:e}");
    assert_eq!(count, 9);
}

#[test]
fn documented_recipes_give_the_same_bits_as_a_torch_noise_source() {
    let fixture = golden("torch_rng");
    let case = fixture["loops"]
        .as_array()
        .expect("loops")
        .iter()
        .find(|c| name(c) == "sd_eta0p5_seed42")
        .expect("loop case");
    let mut s = case_scheduler(case);
    s.set_timesteps(20).expect("steps");
    const ETA: f64 = 0.5;
    fn options(noise: NoiseSource<'_, f32>) -> StepOptions<'_, f32> {
        StepOptions {
            eta: ETA,
            noise,
            ..Default::default()
        }
    }
    let base = inputs(&fixture)["base_f32_1x4x8x8"].f32().clone();
    let mut g1 = TorchGenerator::manual_seed(42);
    let mut g2 = g1.clone();
    let mut g3 = g1.clone();
    let mut x1: ArrayD<f32> = g1.randn(IxDyn(&[1, 4, 8, 8]));
    let mut x2 = g2.randn(IxDyn(&[1, 4, 8, 8]));
    let mut x3 = g3.randn(IxDyn(&[1, 4, 8, 8]));
    let mut noise = ArrayD::<f32>::zeros(IxDyn(&[1, 4, 8, 8]));
    let mut out = DdimSchedulerOutput::zeros(IxDyn(&[1, 4, 8, 8]));
    for &t in s.timesteps() {
        let eps = stand_in_model(&x1, &base, t, 1000);
        x1 = s
            .step_with(&eps, t, &x1, options(NoiseSource::Torch(&mut g1)))
            .expect("step")
            .prev_sample;
        // The recipe: draw the noise with randn, give it to the step.
        let eps = stand_in_model(&x2, &base, t, 1000);
        let n: ArrayD<f32> = g2.randn(eps.raw_dim());
        x2 = s
            .step_with(&eps, t, &x2, options(NoiseSource::given(&n)))
            .expect("step")
            .prev_sample;
        // Without allocations: randn_into and step_into with the noise given.
        let eps = stand_in_model(&x3, &base, t, 1000);
        if ETA > 0.0 {
            g3.randn_into(&mut noise);
        }
        let (prev, x0) = (&mut out.prev_sample, &mut out.pred_original_sample);
        s.step_into(&eps, t, &x3, options(NoiseSource::given(&noise)), prev, x0)
            .expect("step");
        std::mem::swap(&mut x3, &mut out.prev_sample);
    }
    assert_eq!(x1, x2);
    assert_eq!(x1, x3);
    assert_eq!(g1, g2);
    assert_eq!(g1, g3);
}

/// A [`NoiseSource::Torch`] step with `eta`.
fn torch_noise(eta: f64, g: &mut TorchGenerator) -> StepOptions<'_, f32> {
    StepOptions {
        eta,
        noise: NoiseSource::Torch(g),
        ..Default::default()
    }
}

#[test]
fn a_torch_noise_source_draws_nothing_at_eta_zero_or_on_error() {
    let mut s = DdimScheduler::new(Default::default()).expect("scheduler");
    let x = ArrayD::<f32>::from_elem(IxDyn(&[1, 4, 8, 8]), 0.5);
    let eps = x.mapv(|v| v * 0.1);
    let fresh = TorchGenerator::manual_seed(1);
    let mut g = fresh.clone();

    // Before set_timesteps.
    let err = s
        .step_with(&eps, 500, &x, torch_noise(1.0, &mut g))
        .unwrap_err();
    assert!(matches!(err, DdimError::TimestepsNotSet), "{err}");
    assert_eq!(g, fresh);
    s.set_timesteps(10).expect("steps");

    // eta = 0 is the deterministic step, and draws nothing, whatever the destination.
    let det = s.step(&eps, 500, &x).expect("step");
    let out = s
        .step_with(&eps, 500, &x, torch_noise(0.0, &mut g))
        .expect("step");
    assert_eq!(out, det);
    assert_eq!(g, fresh);
    let mut into = DdimSchedulerOutput::zeros(x.raw_dim());
    let (prev, x0) = (&mut into.prev_sample, &mut into.pred_original_sample);
    s.step_into(&eps, 500, &x, torch_noise(0.0, &mut g), prev, x0)
        .expect("step_into");
    assert_eq!(into, det);
    assert_eq!(g, fresh);
    let mut in_place = x.clone();
    s.step_in_place(&eps, 500, &mut in_place, torch_noise(0.0, &mut g))
        .expect("step_in_place");
    assert_eq!(in_place, det.prev_sample);
    assert_eq!(g, fresh);
    let batch = s
        .step_batch(&eps, &[500], &x, torch_noise(0.0, &mut g))
        .expect("step_batch");
    assert_eq!(batch, det);
    assert_eq!(g, fresh);

    // Errors leave the generator as it was, whether or not the noise was already drawn.
    for bad in [f64::NAN, -1.0, f64::INFINITY] {
        let err = s
            .step_with(&eps, 500, &x, torch_noise(bad, &mut g))
            .unwrap_err();
        assert!(
            matches!(err, DdimError::InvalidEta { .. }),
            "eta {bad}: {err}"
        );
        assert_eq!(g, fresh);
    }
    let err = s
        .step_with(&eps, 5000, &x, torch_noise(1.0, &mut g))
        .unwrap_err();
    assert!(matches!(err, DdimError::TimestepOutOfRange { .. }), "{err}");
    let wrong = ArrayD::<f32>::zeros(IxDyn(&[1, 4, 8, 9]));
    let err = s
        .step_with(&wrong, 500, &x, torch_noise(1.0, &mut g))
        .unwrap_err();
    assert!(matches!(err, DdimError::ShapeMismatch { .. }), "{err}");
    assert_eq!(g, fresh);
    let mut wrong_buffer = DdimSchedulerOutput::<f32, _>::zeros(IxDyn(&[1, 4, 8, 9]));
    let (prev, x0) = (
        &mut wrong_buffer.prev_sample,
        &mut wrong_buffer.pred_original_sample,
    );
    let err = s
        .step_into(&eps, 500, &x, torch_noise(1.0, &mut g), prev, x0)
        .unwrap_err();
    assert!(matches!(err, DdimError::ShapeMismatch { .. }), "{err}");
    assert_eq!(g, fresh);
    let err = s
        .step_batch(&eps, &[500, 400], &x, torch_noise(1.0, &mut g))
        .unwrap_err();
    assert!(matches!(err, DdimError::BatchSizeMismatch { .. }), "{err}");
    assert_eq!(g, fresh);

    // eta > 0 draws exactly one randn of the sample's shape.
    s.step_with(&eps, 500, &x, torch_noise(1.0, &mut g))
        .expect("step");
    let mut expected = fresh.clone();
    let _: ArrayD<f32> = expected.randn(IxDyn(&[1, 4, 8, 8]));
    assert_eq!(g, expected);
}

#[test]
fn randn_into_fills_any_layout_in_row_major_order() {
    let reference: Array<f64, _> = TorchGenerator::manual_seed(9).randn((3, 4, 5));
    // Column-major memory.
    let mut f = Array::<f64, _>::zeros((3, 4, 5).f());
    TorchGenerator::manual_seed(9).randn_into(&mut f);
    assert_eq!(f, reference);
    // A strided view into a larger array.
    let mut big = Array::<f64, _>::zeros((3, 8, 5));
    let mut view = big.slice_mut(ddim::ndarray::s![.., ..;2, ..]);
    TorchGenerator::manual_seed(9).randn_into(&mut view);
    assert_eq!(view, reference);
    // Shapes of every kind give the same numbers as the flat draw.
    let flat: Array<f64, _> = TorchGenerator::manual_seed(9).randn(60);
    let dynamic: ArrayD<f64> = TorchGenerator::manual_seed(9).randn(&[3usize, 4, 5][..]);
    assert_eq!(flat.as_slice(), reference.as_slice());
    assert_eq!(dynamic.as_slice(), reference.as_slice());
}

#[test]
fn empty_shapes_draw_nothing() {
    let fresh = TorchGenerator::manual_seed(4);
    let mut g = fresh.clone();
    let a: Array<f32, _> = g.randn((2, 0, 3));
    let b: ArrayD<f64> = g.randn(IxDyn(&[0]));
    assert_eq!((a.len(), b.len()), (0, 0));
    assert_eq!(g, fresh);
}

#[test]
fn kernels_differ_only_for_float32_draws_of_16_or_more() {
    for n in [1usize, 7, 15, 16, 17, 100] {
        let run = |k| {
            let mut g = generator(5, k);
            let a: Array<f64, _> = g.randn(n);
            let b: Array<f32, _> = g.randn(n.min(15));
            (a, b, g)
        };
        let (a1, b1, g1) = run(TorchCpuKernel::Avx2);
        let (a2, b2, g2) = run(TorchCpuKernel::Scalar);
        assert_eq!((a1, b1), (a2, b2), "n = {n}");
        // The generators agree on everything but the kernel they follow.
        assert_eq!(g1.with_kernel(TorchCpuKernel::Scalar), g2);
    }
    let avx: Array<f32, _> = generator(5, TorchCpuKernel::Avx2).randn(4096);
    let scalar: Array<f32, _> = generator(5, TorchCpuKernel::Scalar).randn(4096);
    assert_ne!(
        avx, scalar,
        "4096 float32 draws, and not one differs between the kernels?"
    );
}

#[test]
fn seeds_kernels_and_debug() {
    let g = TorchGenerator::manual_seed(u64::MAX);
    assert_eq!(g.initial_seed(), u64::MAX);
    assert_eq!(g.kernel(), TorchCpuKernel::detect());
    #[cfg(target_arch = "x86_64")]
    assert_eq!(
        TorchCpuKernel::detect() == TorchCpuKernel::Avx2,
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    );
    let text = format!("{g:?}");
    assert!(
        text.starts_with("TorchGenerator { seed: 18446744073709551615"),
        "{text}"
    );
    assert!(text.len() < 200, "the state is not printed: {text}");
}

/// A [`NoiseSource::Torch`] step draws its noise inside the pass, block by block, rather than
/// as one `randn` array first: every destination, on contiguous and column-major arrays, with
/// and without per-item thresholding and with one timestep per item, gives the bits of the same
/// step with `randn` of the sample's shape given as its noise, and leaves the generator where
/// that `randn` leaves it. The shapes cover sizes below 16 (torch's scalar path), multiples of
/// 16, sizes with every kind of tail, and sizes of several of the pass's blocks.
fn a_torch_source_streams_what_randn_draws<T: DdimFloat>() {
    fn options<T: DdimFloat>(noise: NoiseSource<'_, T>) -> StepOptions<'_, T> {
        StepOptions {
            eta: 0.8,
            noise,
            ..Default::default()
        }
    }
    let shapes: [&[usize]; 8] = [
        &[3, 5],
        &[1, 17],
        &[1, 4, 8, 8],
        &[2, 3, 5, 7],
        &[2, 600],
        &[4, 3, 37],
        &[2, 1031],
        &[1, 4, 24, 24],
    ];
    let thresholding = ddim::DdimConfig {
        thresholding: true,
        dynamic_thresholding_ratio: 0.9,
        sample_max_value: 1.2,
        ..Default::default()
    };
    for (label, config) in [
        ("clip", ddim::DdimConfig::default()),
        ("threshold", thresholding),
    ] {
        let mut s = DdimScheduler::new(config).expect("scheduler");
        s.set_timesteps(10).expect("steps");
        let t = s.timesteps()[3];
        for (k, &dims) in shapes.iter().enumerate() {
            let value =
                |i: usize, scale: f64| T::from_f64(((i * 7 + k) as f64 * 0.37).sin() * scale);
            let standard = |scale| {
                let len = dims.iter().product();
                ArrayD::from_shape_vec(IxDyn(dims), (0..len).map(|i| value(i, scale)).collect())
                    .expect("shape")
            };
            let (m, x) = (standard(1.5), standard(1.0));
            // The same values in column-major memory: the pass's element-by-element path.
            let column_major = |a: &ArrayD<T>| {
                let mut c = ArrayD::from_elem(IxDyn(dims).f(), T::ZERO);
                c.assign(a);
                c
            };
            let (mf, xf) = (column_major(&m), column_major(&x));
            let what = |how: &str| format!("{label}, {dims:?}, {how}");
            for seed in [0, 5] {
                let fresh = TorchGenerator::manual_seed(seed);
                let mut drawn = fresh.clone();
                let noise: ArrayD<T> = drawn.randn(IxDyn(dims));
                let expected = s
                    .step_with(&m, t, &x, options(NoiseSource::given(&noise)))
                    .expect("step");
                let bits =
                    |a: &ArrayD<T>| a.iter().map(|v| v.to_f64().to_bits()).collect::<Vec<_>>();
                let same = |got: &ArrayD<T>, want: &ArrayD<T>, how: &str| {
                    assert_eq!(bits(got), bits(want), "{}", what(how));
                };

                let mut g = fresh.clone();
                let out = s
                    .step_with(&m, t, &x, options(NoiseSource::Torch(&mut g)))
                    .expect("step");
                same(&out.prev_sample, &expected.prev_sample, "step_with");
                same(
                    &out.pred_original_sample,
                    &expected.pred_original_sample,
                    "x0",
                );
                assert_eq!(g, drawn, "{}", what("generator after step_with"));

                let mut g = fresh.clone();
                let mut into = DdimSchedulerOutput::zeros(IxDyn(dims).f());
                let (prev, x0) = (&mut into.prev_sample, &mut into.pred_original_sample);
                s.step_into(&mf, t, &xf, options(NoiseSource::Torch(&mut g)), prev, x0)
                    .expect("step_into");
                same(
                    &into.prev_sample,
                    &expected.prev_sample,
                    "column-major step_into",
                );
                assert_eq!(g, drawn, "{}", what("generator after step_into"));

                let mut g = fresh.clone();
                let mut latents = x.clone();
                s.step_in_place(&m, t, &mut latents, options(NoiseSource::Torch(&mut g)))
                    .expect("step_in_place");
                same(&latents, &expected.prev_sample, "step_in_place");
                assert_eq!(g, drawn, "{}", what("generator after step_in_place"));

                // One timestep per item: the items take the stream one after another.
                let timesteps: Vec<usize> = (0..dims[0]).map(|i| s.timesteps()[i + 1]).collect();
                let mut g = fresh.clone();
                let batch = s
                    .step_batch(&m, &timesteps, &x, options(NoiseSource::Torch(&mut g)))
                    .expect("step_batch");
                let given = s
                    .step_batch(&m, &timesteps, &x, options(NoiseSource::given(&noise)))
                    .expect("step_batch");
                same(&batch.prev_sample, &given.prev_sample, "step_batch");
                assert_eq!(g, drawn, "{}", what("generator after step_batch"));
            }
        }
    }
}

#[test]
fn a_torch_source_streams_what_randn_draws_f32() {
    a_torch_source_streams_what_randn_draws::<f32>();
}

#[test]
fn a_torch_source_streams_what_randn_draws_f64() {
    a_torch_source_streams_what_randn_draws::<f64>();
}

#[cfg(feature = "half")]
#[test]
fn a_torch_source_streams_what_randn_draws_half() {
    a_torch_source_streams_what_randn_draws::<ddim::half::f16>();
    a_torch_source_streams_what_randn_draws::<ddim::half::bf16>();
}
