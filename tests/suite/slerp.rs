//! `slerp` against the DDIM authors' spherical interpolation evaluated by torch
//! (`tests/fixtures/golden/slerp.json`, written by `scripts/golden_slerp.py`).

use crate::common::{assert_close, cases, golden, inputs, name, tensor, Tensor};
use ddim::ndarray::{Array2, ArrayD, IxDyn};
use ddim::{slerp, DdimError};

#[test]
fn slerp_matches_the_ddim_authors_formula_in_torch() {
    let fixture = golden("slerp");
    let inputs = inputs(&fixture);
    for case in cases(&fixture) {
        let alpha = case["alpha"].as_f64().expect("alpha");
        let (a, b) = (
            &inputs[case["a"].as_str().expect("a")],
            &inputs[case["b"].as_str().expect("b")],
        );
        let expected = tensor(&case["expected"]);
        let ours: Vec<f64> = match (a, b) {
            (Tensor::F32(a), Tensor::F32(b)) => slerp(a, b, alpha)
                .expect("valid slerp")
                .iter()
                .map(|&v| f64::from(v))
                .collect(),
            (Tensor::F64(a), Tensor::F64(b)) => slerp(a, b, alpha)
                .expect("valid slerp")
                .iter()
                .copied()
                .collect(),
            _ => panic!("{}: mixed element types", name(case)),
        };
        // torch evaluates the angle and the weights in float32 with its own reductions; the
        // crate in double, rounding the weights once.
        let (abs, rel) = match a {
            Tensor::F32(_) => (2e-6, 2e-6),
            Tensor::F64(_) => (1e-12, 1e-12),
        };
        assert_close(name(case), &ours, &expected.values(), abs, rel);
        if alpha == 0.0 || alpha == 1.0 {
            let endpoint = if alpha == 0.0 { a } else { b };
            assert_eq!(
                ours,
                endpoint.values(),
                "{}: endpoints are exact",
                name(case)
            );
        }
    }
}

#[test]
fn slerp_keeps_the_norm_of_gaussian_noise_where_linear_interpolation_loses_it() {
    let mut generator = ddim::TorchGenerator::manual_seed(5);
    let a: Array2<f64> = generator.randn((1, 4096));
    let b: Array2<f64> = generator.randn((1, 4096));
    let norm = |x: &Array2<f64>| x.mapv(|v| v * v).sum().sqrt();
    for i in 1..10 {
        let alpha = f64::from(i) / 10.0;
        let s = slerp(&a, &b, alpha).expect("valid slerp");
        let ratio = norm(&s) / norm(&a);
        assert!(
            (ratio - 1.0).abs() < 0.03,
            "alpha {alpha}: norm ratio {ratio}"
        );
    }
    let linear = (&a + &b) * 0.5;
    assert!(norm(&linear) / norm(&a) < 0.75);
}

#[test]
fn slerp_refuses_alpha_outside_the_unit_interval_and_mismatched_shapes() {
    let a = ArrayD::<f32>::zeros(IxDyn(&[2, 3]));
    for alpha in [-0.1, 1.5, f64::NAN, f64::INFINITY] {
        match slerp(&a, &a, alpha) {
            Err(DdimError::InvalidArgument { name, .. }) => assert_eq!(name, "alpha"),
            other => panic!("alpha {alpha}: {other:?}"),
        }
    }
    let b = ArrayD::<f32>::zeros(IxDyn(&[2, 4]));
    assert!(matches!(
        slerp(&a, &b, 0.5),
        Err(DdimError::ShapeMismatch { .. })
    ));
    let scalar = ArrayD::<f32>::zeros(IxDyn(&[]));
    assert!(matches!(
        slerp(&scalar, &scalar, 0.5),
        Err(DdimError::TooFewAxes { .. })
    ));
    let message = slerp(&a, &a, 2.0).expect_err("alpha 2").to_string();
    assert!(message.contains("alpha is 2"), "{message}");
}
