//! The ONNX network, run by tract, against the torch UNet it was exported from.
//!
//! The reference numbers in `tests/fixtures/unet.json` are `pipe.unet(sample, timestep).sample`
//! computed by torch on the committed model (`scripts/golden_digits.py`, diffusers 0.42.1,
//! torch 2.15.0 on the CPU; the file records its versions). Regenerate them from the repository
//! root with `python scripts/golden_digits.py` after retraining.
//!
//! Run with `cargo test -p ddim-digits --release`: in a debug build the network is slow.

mod common;

use common::{fixture, max_abs_diff, package_dir, tensor4};
use ddim_digits::{OnnxUnet, UnetError};
use ndarray::{s, Array4, Axis};

fn load_unet() -> OnnxUnet {
    let path = package_dir().join("model").join("unet.onnx");
    OnnxUnet::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn onnx_noise_prediction_matches_torch() {
    let unet = load_unet();
    assert_eq!(unet.sample_shape(), [1, 8, 8]);
    let golden = fixture("unet.json");
    let cases = golden["cases"].as_array().expect("cases");
    assert!(!cases.is_empty());
    let mut worst = 0.0f32;
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let sample = tensor4(&golden["inputs"][case["sample"].as_str().expect("sample")]);
        let timestep = case["timestep"].as_i64().expect("timestep");
        let want = tensor4(&case["noise_pred"]);
        let got = unet.noise_pred(sample.view(), timestep).expect(name);
        let diff = max_abs_diff(got.view(), want.view());
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        println!(
            "{name}: batch {}, max |onnx - torch| = {diff:.3e} (max |torch| = {scale:.3})",
            sample.len_of(Axis(0))
        );
        worst = worst.max(diff);
    }
    println!(
        "worst max |onnx - torch| over {} cases: {worst:.3e}",
        cases.len()
    );
    assert!(worst < 1e-4, "ONNX and torch differ by {worst}");
}

#[test]
fn batch_items_are_predicted_independently() {
    // GroupNorm normalises each item on its own: a batch of three gives the three single-item
    // predictions (up to the different summation order tract may pick per batch size).
    let unet = load_unet();
    let golden = fixture("unet.json");
    let sample = tensor4(&golden["inputs"]["x3"]);
    let together = unet.noise_pred(sample.view(), 421).expect("batch of 3");
    for item in 0..3 {
        let one = sample.slice(s![item..item + 1, .., .., ..]);
        let alone = unet.noise_pred(one, 421).expect("batch of 1");
        let diff = max_abs_diff(alone.view(), together.slice(s![item..item + 1, .., .., ..]));
        assert!(diff < 1e-5, "item {item}: {diff}");
    }
}

#[test]
fn strided_views_give_the_same_prediction_as_contiguous_arrays() {
    let unet = load_unet();
    let golden = fixture("unet.json");
    let sample = tensor4(&golden["inputs"]["x2"]);
    let contiguous = unet.noise_pred(sample.view(), 500).expect("contiguous");
    // The same values in a transposed layout (height and width axes swapped in memory).
    let mut transposed = sample.clone();
    transposed.swap_axes(2, 3);
    let mut relaid = transposed.as_standard_layout().into_owned();
    relaid.swap_axes(2, 3);
    assert!(relaid.as_slice().is_none());
    assert_eq!(relaid, sample);
    let strided = unet.noise_pred(relaid.view(), 500).expect("strided");
    assert_eq!(strided, contiguous);
}

#[test]
fn wrong_sample_shape_is_an_error_and_empty_batch_is_empty() {
    let unet = load_unet();
    let err = unet
        .noise_pred(Array4::zeros((2, 3, 8, 8)).view(), 10)
        .unwrap_err();
    assert_eq!(
        err,
        UnetError::Shape {
            expected: [1, 8, 8],
            found: [2, 3, 8, 8]
        }
    );
    assert!(err.to_string().contains("[2, 3, 8, 8]"), "{err}");
    let empty = unet
        .noise_pred(Array4::zeros((0, 1, 8, 8)).view(), 10)
        .expect("empty batch");
    assert_eq!(empty.shape(), &[0, 1, 8, 8]);
}
