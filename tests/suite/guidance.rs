//! Classifier-free guidance and guidance rescale: golden parity with diffusers' pipeline formula
//! and `rescale_noise_cfg` (fixture written by `scripts/golden_guidance.py`), every error,
//! empty arrays, undefined standard deviations, layouts, and the `_into` form.

use crate::common::{assert_close, cases, golden, inputs, name, tensor, Tensor};
use ddim::ndarray::{
    arr0, array, s, Array, Array1, Array2, Array3, Array4, ArrayD, ArrayView, Axis, Dimension,
    IxDyn, ShapeBuilder,
};
use ddim::{classifier_free_guidance, classifier_free_guidance_into, DdimError, DdimFloat};
use serde_json::Value;

/// Per-element tolerance against the reference for float32 (`abs + rel * |reference|`).
const F32: (f64, f64) = (1e-5, 1e-5);
/// For float64.
const F64: (f64, f64) = (1e-12, 1e-12);

fn scalar(case: &Value, key: &str) -> f64 {
    case[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{}: {key}", name(case)))
}

/// The same array in column-major memory order (a different layout, the same logical values).
fn fortran<T: DdimFloat>(a: &ArrayD<T>) -> ArrayD<T> {
    let mut f = ArrayD::from_elem(IxDyn(a.shape()).f(), T::ZERO);
    f.assign(a);
    f
}

/// The values widened to f64 (exactly, so equal f64 bit patterns mean equal element bits).
fn bits<T: DdimFloat>(a: &ArrayD<T>) -> Vec<f64> {
    a.iter().map(|&v| v.to_f64()).collect()
}

fn same_bits(what: &str, a: &[f64], b: &[f64]) {
    assert_eq!(a.len(), b.len(), "{what}: length");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            x.to_bits() == y.to_bits(),
            "{what}: element {i}: {x} vs {y}"
        );
    }
}

/// Runs one golden case in element type `T` through both forms and several layouts; returns
/// the allocating form's result.
fn run_case<T: DdimFloat>(case: &Value, uncond: &ArrayD<T>, text: &ArrayD<T>) -> Vec<f64> {
    let label = name(case);
    let scale = scalar(case, "guidance_scale");
    let rescale = scalar(case, "guidance_rescale");
    let ours = classifier_free_guidance(uncond, text, scale, rescale)
        .unwrap_or_else(|e| panic!("{label}: {e}"));
    let ours_bits = bits(&ours);

    // `_into`, into a standard and a column-major buffer, from standard and column-major inputs.
    let (fu, ft) = (fortran(uncond), fortran(text));
    for (layout, u, t) in [("standard", uncond, text), ("fortran", &fu, &ft)] {
        for out_f in [false, true] {
            let shape = IxDyn(uncond.shape());
            let mut out = if out_f {
                ArrayD::from_elem(shape.f(), T::from_f64(-9.0))
            } else {
                ArrayD::from_elem(shape, T::from_f64(-9.0))
            };
            classifier_free_guidance_into(u, t, scale, rescale, &mut out)
                .unwrap_or_else(|e| panic!("{label}: {e}"));
            same_bits(
                &format!("{label}: _into, {layout} inputs, fortran out {out_f}"),
                &bits(&out),
                &ours_bits,
            );
        }
    }
    ours_bits
}

/// Worst error against the reference, in units of the tolerance, and how many elements are
/// identical to the bit.
#[derive(Default)]
struct Tally {
    worst: f64,
    worst_abs: f64,
    worst_rel: f64,
    worst_case: String,
    identical: usize,
    total: usize,
}

impl Tally {
    fn add(&mut self, label: &str, ours: &[f64], reference: &[f64], (abs, rel): (f64, f64)) {
        for (&o, &r) in ours.iter().zip(reference) {
            self.total += 1;
            if o.to_bits() == r.to_bits() || (o.is_nan() && r.is_nan()) {
                self.identical += 1;
                continue;
            }
            if !o.is_finite() || !r.is_finite() {
                continue; // assert_close has failed on these already
            }
            let diff = (o - r).abs();
            let units = diff / (abs + rel * r.abs());
            if units > self.worst {
                self.worst = units;
                self.worst_case = label.to_string();
            }
            self.worst_abs = self.worst_abs.max(diff);
            if r != 0.0 {
                self.worst_rel = self.worst_rel.max(diff / r.abs());
            }
        }
    }
}

#[test]
fn guidance_matches_the_reference() {
    let fixture = golden("guidance");
    assert_eq!(fixture["generator"], "scripts/golden_guidance.py");
    let inputs = inputs(&fixture);
    let (mut f32_tally, mut f64_tally) = (Tally::default(), Tally::default());
    let mut non_finite = 0;
    for case in cases(&fixture) {
        let label = name(case);
        let uncond = &inputs[case["uncond"].as_str().expect("uncond")];
        let text = &inputs[case["text"].as_str().expect("text")];
        let reference = tensor(&case["expected"]).values();
        non_finite += reference.iter().filter(|v| !v.is_finite()).count();
        match (uncond, text) {
            (Tensor::F32(u), Tensor::F32(t)) => {
                let ours = run_case(case, u, t);
                assert_close(label, &ours, &reference, F32.0, F32.1);
                f32_tally.add(label, &ours, &reference, F32);
            }
            (Tensor::F64(u), Tensor::F64(t)) => {
                let ours = run_case(case, u, t);
                assert_close(label, &ours, &reference, F64.0, F64.1);
                f64_tally.add(label, &ours, &reference, F64);
            }
            _ => panic!("{label}: mixed element types"),
        }
    }
    for (what, t) in [("f32", &f32_tally), ("f64", &f64_tally)] {
        eprintln!(
            "{what}: {} of {} elements identical to the bit; worst {:.2e} of the tolerance ({}), max abs error {:e}, max rel error {:e}",
            t.identical, t.total, t.worst, t.worst_case, t.worst_abs, t.worst_rel
        );
    }
    // The per-item standard deviations of torch's float32 `std` are the correctly rounded ones
    // for these inputs, and the element arithmetic is the reference's, so float32 results are
    // identical to the bit.
    assert_eq!(f32_tally.identical, f32_tally.total, "f32 bit identity");
    // The fixture does exercise the NaN and infinity cases.
    assert!(non_finite > 0);
}

#[test]
fn golden_fixture_covers_the_issue_grid() {
    let fixture = golden("guidance");
    let inputs = inputs(&fixture);
    for prefix in ["latent", "flat", "single", "flat64"] {
        for s in ["1", "7.5", "0", "-1"] {
            for r in ["0", "0.7", "1"] {
                let case_name = format!("{prefix}_s{s}_r{r}");
                assert!(
                    cases(&fixture).iter().any(|c| name(c) == case_name),
                    "missing {case_name}"
                );
            }
        }
    }
    let shape = |n: &str| inputs[n].values().len();
    assert_eq!(shape("latent_uncond"), 2 * 4 * 8 * 8);
    assert_eq!(shape("single_uncond"), 4 * 16 * 16);
    assert!(matches!(inputs["flat64_uncond"], Tensor::F64(_)));
}

// ---------------------------------------------------------------------------------------------
// errors
// ---------------------------------------------------------------------------------------------

fn pair() -> (Array2<f32>, Array2<f32>) {
    let u = Array2::from_shape_fn((2, 3), |(i, j)| (i * 3 + j) as f32 * 0.1);
    let t = u.mapv(|x| x * 2.0 - 0.3);
    (u, t)
}

#[test]
fn non_finite_guidance_scale_is_invalid_guidance() {
    let (u, t) = pair();
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        for rescale in [0.0, 0.7] {
            let err = classifier_free_guidance(&u, &t, bad, rescale).expect_err("bad scale");
            let message = err.to_string();
            match err {
                DdimError::InvalidGuidance {
                    parameter, value, ..
                } => {
                    assert_eq!(parameter, "guidance_scale");
                    assert!(value.to_bits() == bad.to_bits() || (value.is_nan() && bad.is_nan()));
                }
                other => panic!("scale {bad}: expected InvalidGuidance, got {other:?}"),
            }
            assert!(message.contains("guidance_scale"), "{message}");
            assert!(message.contains(&bad.to_string()), "{message}");
            assert!(message.contains("finite"), "{message}");
        }
    }
}

#[test]
fn guidance_rescale_outside_zero_to_one_is_invalid_guidance() {
    let (u, t) = pair();
    for bad in [
        -0.1,
        -f64::MIN_POSITIVE,
        1.0 + f64::EPSILON,
        2.0,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
    ] {
        let err = classifier_free_guidance(&u, &t, 7.5, bad).expect_err("bad rescale");
        let message = err.to_string();
        match err {
            DdimError::InvalidGuidance {
                parameter, value, ..
            } => {
                assert_eq!(parameter, "guidance_rescale");
                assert!(value.to_bits() == bad.to_bits() || (value.is_nan() && bad.is_nan()));
            }
            other => panic!("rescale {bad}: expected InvalidGuidance, got {other:?}"),
        }
        assert!(message.contains("guidance_rescale"), "{message}");
        assert!(message.contains(&format!("{bad:?}")), "{message}");
        assert!(message.contains("between 0 and 1"), "{message}");
    }
    // The ends are allowed, and -0.0 is 0.
    for ok in [0.0, -0.0, 1.0] {
        classifier_free_guidance(&u, &t, 7.5, ok).expect("rescale at the ends");
    }
}

#[test]
fn zero_dimensional_arrays_are_too_few_axes() {
    let (u, t) = (arr0(1.0f32), arr0(2.0f32));
    for rescale in [0.0, 0.7] {
        let err = classifier_free_guidance(&u, &t, 7.5, rescale).expect_err("0-d");
        assert!(
            matches!(
                err,
                DdimError::TooFewAxes {
                    found: 0,
                    required: 1 | 2,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("but it has 0"), "{err}");
    }
}

#[test]
fn rescale_of_one_dimensional_arrays_is_too_few_axes() {
    let u = array![1.0f64, 2.0, 3.0];
    let t = array![2.0f64, 2.5, 2.0];
    let err = classifier_free_guidance(&u, &t, 7.5, 0.7).expect_err("1-d with rescale");
    assert!(
        matches!(
            err,
            DdimError::TooFewAxes {
                found: 1,
                required: 2,
                ..
            }
        ),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("guidance rescale"), "{message}");
    // Plain guidance is element-wise and fine on one axis.
    let guided = classifier_free_guidance(&u, &t, 2.0, 0.0).expect("1-d guidance");
    assert_eq!(guided, array![3.0, 3.0, 1.0]);
}

#[test]
fn shapes_that_differ_are_shape_mismatch() {
    let (u, _) = pair();
    let t = Array2::<f32>::zeros((3, 2));
    for rescale in [0.0, 0.7] {
        let err = classifier_free_guidance(&u, &t, 7.5, rescale).expect_err("text shape");
        match &err {
            DdimError::ShapeMismatch {
                name,
                found,
                reference_name,
                expected,
            } => {
                assert_eq!((*name, *reference_name), ("text", "uncond"));
                assert_eq!(
                    (found.as_slice(), expected.as_slice()),
                    (&[3, 2][..], &[2, 3][..])
                );
            }
            other => panic!("expected ShapeMismatch, got {other:?}"),
        }
        assert!(err.to_string().contains("[3, 2]"), "{err}");
    }
    // Dynamic dimensionality: a different number of axes.
    let ud = ArrayD::<f64>::zeros(IxDyn(&[2, 3]));
    let td = ArrayD::<f64>::zeros(IxDyn(&[2, 3, 1]));
    let err = classifier_free_guidance(&ud, &td, 7.5, 0.7).expect_err("axes");
    assert!(
        matches!(err, DdimError::ShapeMismatch { name: "text", .. }),
        "{err:?}"
    );
}

#[test]
fn an_out_buffer_of_another_shape_is_shape_mismatch_and_untouched() {
    let (u, t) = pair();
    let mut out = Array2::<f32>::from_elem((2, 4), 5.0);
    let err = classifier_free_guidance_into(&u, &t, 7.5, 0.7, &mut out).expect_err("out shape");
    assert!(
        matches!(
            err,
            DdimError::ShapeMismatch {
                name: "out",
                reference_name: "uncond",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(out.iter().all(|&v| v == 5.0));
    // Every other error leaves it untouched too.
    let mut out = Array2::<f32>::from_elem((2, 3), 5.0);
    for (scale, rescale) in [(f64::NAN, 0.0), (7.5, 1.5)] {
        classifier_free_guidance_into(&u, &t, scale, rescale, &mut out).expect_err("bad scalar");
    }
    let wrong = Array2::<f32>::zeros((2, 2));
    classifier_free_guidance_into(&u, &wrong, 7.5, 0.7, &mut out).expect_err("text shape");
    assert!(out.iter().all(|&v| v == 5.0));
}

// ---------------------------------------------------------------------------------------------
// edge cases
// ---------------------------------------------------------------------------------------------

#[test]
fn empty_arrays_give_empty_results() {
    for shape in [&[0usize, 4][..], &[2, 0], &[0], &[0, 3, 0], &[3, 0, 5]] {
        let u = ArrayD::<f32>::zeros(IxDyn(shape));
        let t = ArrayD::<f32>::ones(IxDyn(shape));
        for rescale in [0.0, 0.7, 1.0] {
            if shape.len() < 2 && rescale > 0.0 {
                continue; // too few axes for rescale, tested above
            }
            let out = classifier_free_guidance(&u, &t, 7.5, rescale)
                .unwrap_or_else(|e| panic!("{shape:?}: {e}"));
            assert_eq!(out.shape(), shape);
            let mut into = ArrayD::<f32>::zeros(IxDyn(shape));
            classifier_free_guidance_into(&u, &t, 7.5, rescale, &mut into)
                .unwrap_or_else(|e| panic!("{shape:?}: {e}"));
        }
    }
    let u = Array4::<f64>::zeros((0, 4, 8, 8));
    assert_eq!(
        classifier_free_guidance(&u, &u, 7.5, 0.7)
            .expect("empty")
            .len(),
        0
    );
}

/// torch's unbiased std of one element is NaN, and so is the rescaled result; without rescale
/// nothing is computed from it.
#[test]
fn items_of_one_element_rescale_to_nan_as_in_the_reference() {
    let u = array![[1.0f32], [2.0], [-0.5]];
    let t = array![[1.5f32], [1.0], [0.0]];
    let rescaled = classifier_free_guidance(&u, &t, 7.5, 0.7).expect("one element");
    assert!(rescaled.iter().all(|v| v.is_nan()), "{rescaled}");
    let guided = classifier_free_guidance(&u, &t, 7.5, 0.0).expect("one element");
    assert_eq!(guided, array![[4.75f32], [-5.5], [3.25]]);
    // Also with more axes of length 1.
    let u4 = Array4::<f64>::from_elem((2, 1, 1, 1), 0.25);
    let out = classifier_free_guidance(&u4, &(&u4 * 2.0), 3.0, 1.0).expect("one element");
    assert!(out.iter().all(|v| v.is_nan()));
}

/// A constant guided prediction has standard deviation 0: infinite ratio, so infinities (NaN
/// where the guided value is 0), as `rescale_noise_cfg` gives.
#[test]
fn a_constant_guided_prediction_gives_infinities() {
    let u = array![[0.5f32, 0.5, 0.5], [0.0, 0.0, 0.0]];
    let t = array![[1.0f32, 2.0, 3.0], [1.0, 2.0, 3.0]];
    let out = classifier_free_guidance(&u, &t, 0.0, 0.7).expect("constant");
    assert!(out.row(0).iter().all(|&v| v == f32::INFINITY), "{out}");
    assert!(out.row(1).iter().all(|v| v.is_nan()), "{out}");
}

#[test]
fn special_scales_and_full_rescale_do_what_they_say() {
    let u = Array3::<f64>::from_shape_fn((3, 5, 7), |(b, i, j)| {
        ((b * 35 + i * 7 + j) as f64 * 0.61).sin() + 0.2 * b as f64
    });
    let t = u.mapv(|x| 0.8 * x + (x * 5.0).cos() * 0.3);
    // Scale 0 is uncond, exactly.
    assert_eq!(classifier_free_guidance(&u, &t, 0.0, 0.0).expect("s0"), u);
    // Scale 1 is text up to rounding.
    let one = classifier_free_guidance(&u, &t, 1.0, 0.0).expect("s1");
    assert!(one.iter().zip(&t).all(|(a, b)| (a - b).abs() <= 1e-15));
    // Full rescale gives each item the standard deviation of its text prediction, and keeps the
    // guided prediction's direction.
    let guided = classifier_free_guidance(&u, &t, 7.5, 0.0).expect("guided");
    let full = classifier_free_guidance(&u, &t, 7.5, 1.0).expect("full");
    let half = classifier_free_guidance(&u, &t, 7.5, 0.5).expect("half");
    for b in 0..3 {
        let std = |a: &Array3<f64>| a.index_axis(Axis(0), b).std(1.0);
        assert!((std(&full) - std(&t)).abs() < 1e-12, "item {b}");
        let k = std(&t) / std(&guided);
        for ((&f, &g), &h) in full
            .index_axis(Axis(0), b)
            .iter()
            .zip(guided.index_axis(Axis(0), b))
            .zip(half.index_axis(Axis(0), b))
        {
            assert!((f - g * k).abs() <= 1e-12 * (1.0 + f.abs()));
            assert!((h - 0.5 * (f + g)).abs() <= 1e-12 * (1.0 + h.abs()));
        }
    }
}

/// Standard deviations computed block by block agree with a plain two-pass computation, for item
/// sizes around the block size and with a large mean.
#[test]
fn statistics_agree_with_a_two_pass_computation() {
    for (len, offset) in [
        (2, 0.0),
        (255, 0.0),
        (256, 3.0),
        (257, 0.0),
        (1000, 1e3),
        (4099, -7.0),
    ] {
        let u = Array2::<f64>::from_shape_fn((2, len), |(b, i)| {
            offset + ((b * len + i) as f64 * 0.37).sin()
        });
        let t = u.mapv(|x| x + (x * 13.0).cos() * 0.1);
        let out = classifier_free_guidance(&u, &t, 4.0, 1.0).expect("stats");
        let two_pass_std = |a: ArrayView<'_, f64, _>| {
            let mean = a.sum() / len as f64;
            (a.fold(0.0, |s, &v| s + (v - mean) * (v - mean)) / (len - 1) as f64).sqrt()
        };
        for b in 0..2 {
            let (ub, tb) = (u.row(b), t.row(b));
            let g: Array1<f64> = &ub + &((&tb - &ub) * 4.0);
            let ratio = two_pass_std(tb) / two_pass_std(g.view());
            for (&o, &g) in out.row(b).iter().zip(&g) {
                let expected = g * ratio + 0.0 * g;
                assert!(
                    (o - expected).abs() <= 1e-12 * (1.0 + expected.abs()),
                    "len {len}, item {b}: {o} vs {expected}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// layouts and the `_into` form
// ---------------------------------------------------------------------------------------------

fn check_into_equals_allocating<T: DdimFloat, D: Dimension>(
    u: ArrayView<'_, T, D>,
    t: ArrayView<'_, T, D>,
) {
    for (scale, rescale) in [(7.5, 0.0), (7.5, 0.7), (-1.0, 1.0), (1.3, 0.25)] {
        let new = classifier_free_guidance(&u, &t, scale, rescale).expect("allocating");
        let mut out = Array::from_elem(u.raw_dim(), T::from_f64(3.0));
        classifier_free_guidance_into(&u, &t, scale, rescale, &mut out).expect("into");
        let to_bits = |a: &Array<T, D>| a.iter().map(|v| v.to_f64().to_bits()).collect::<Vec<_>>();
        assert_eq!(
            to_bits(&new),
            to_bits(&out),
            "scale {scale}, rescale {rescale}"
        );
        // Called again on the same buffer: the same result.
        classifier_free_guidance_into(&u, &t, scale, rescale, &mut out).expect("into again");
        assert_eq!(to_bits(&new), to_bits(&out));
    }
}

#[test]
fn into_form_equals_allocating_form() {
    let u4 = Array4::<f32>::from_shape_fn((3, 4, 9, 11), |(b, c, h, w)| {
        ((b * 1000 + c * 100 + h * 10 + w) as f32 * 0.013).sin()
    });
    let t4 = u4.mapv(|x| x * 0.9 + (x * 7.0).cos() * 0.2);
    check_into_equals_allocating(u4.view(), t4.view());
    check_into_equals_allocating(u4.mapv(f64::from).view(), t4.mapv(f64::from).view());
    let ud = u4.clone().into_dyn();
    let td = t4.clone().into_dyn();
    check_into_equals_allocating(ud.view(), td.view());
    // Views: a strided slice, and a batch half of a doubled batch as diffusers chunks it.
    check_into_equals_allocating(
        u4.slice(s![.., 1..3, ..;2, 1..]),
        t4.slice(s![.., 1..3, ..;2, 1..]),
    );
    let (uncond, text) = u4.view().split_at(Axis(0), 1);
    check_into_equals_allocating(uncond, text.slice(s![0..1, .., .., ..]));
}

#[test]
fn results_do_not_depend_on_memory_layout() {
    let u = Array3::<f32>::from_shape_fn((2, 30, 17), |(b, i, j)| {
        ((b * 510 + i * 17 + j) as f32 * 0.029).cos() * 1.7
    });
    let t = u.mapv(|x| x * 1.1 - 0.05);
    for rescale in [0.0, 0.7] {
        let standard = classifier_free_guidance(&u, &t, 6.0, rescale).expect("standard");
        // Column-major copies, and a view whose axes are permuted back.
        let mut uf = Array3::<f32>::zeros((2, 30, 17).f());
        uf.assign(&u);
        let tp = t
            .clone()
            .permuted_axes([2, 0, 1])
            .as_standard_layout()
            .to_owned();
        let tp_view = tp.view().permuted_axes([1, 2, 0]);
        assert_eq!(tp_view, t);
        let other = classifier_free_guidance(&uf, &tp_view, 6.0, rescale).expect("layouts");
        let to_bits = |a: &Array3<f32>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(to_bits(&standard), to_bits(&other), "rescale {rescale}");
        // Into a non-contiguous window of a bigger buffer.
        let mut big = Array3::<f32>::from_elem((2, 60, 17), 9.0);
        let mut window = big.slice_mut(s![.., ..;2, ..]);
        classifier_free_guidance_into(&u, &t, 6.0, rescale, &mut window).expect("window");
        assert_eq!(to_bits(&window.to_owned()), to_bits(&standard));
        assert!(big.slice(s![.., 1..;2, ..]).iter().all(|&v| v == 9.0));
    }
}
