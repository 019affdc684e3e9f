//! Helpers shared by the integration tests: the package's files and the fixture encoding.
//!
//! A fixture tensor is `{"dtype": "f32", "shape": [...], "hex": "..."}`, the lowercase hex of
//! the little-endian bytes of the C-ordered float32 data (see the package README).

#![allow(dead_code)] // each test crate uses its own part of this module

use std::path::PathBuf;

use ndarray::{Array4, ArrayView4};
use serde_json::Value;

/// The package's folder.
pub fn package_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fixture of `tests/fixtures/`, parsed.
pub fn fixture(name: &str) -> Value {
    let path = package_dir().join("tests").join("fixtures").join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A 4-dimensional fixture tensor.
pub fn tensor4(value: &Value) -> Array4<f32> {
    assert_eq!(value["dtype"], "f32");
    let shape: Vec<usize> = value["shape"]
        .as_array()
        .expect("shape")
        .iter()
        .map(|d| d.as_u64().expect("dimension") as usize)
        .collect();
    let hex = value["hex"].as_str().expect("hex").as_bytes();
    let data: Vec<f32> = hex
        .chunks(8)
        .map(|word| {
            let mut bytes = [0u8; 4];
            for (byte, pair) in bytes.iter_mut().zip(word.chunks(2)) {
                let text = std::str::from_utf8(pair).expect("ascii");
                *byte = u8::from_str_radix(text, 16).expect("hex digit");
            }
            f32::from_le_bytes(bytes)
        })
        .collect();
    assert_eq!(shape.len(), 4);
    Array4::from_shape_vec((shape[0], shape[1], shape[2], shape[3]), data).expect("shape")
}

/// The largest absolute difference between two arrays of the same shape.
pub fn max_abs_diff(a: ArrayView4<f32>, b: ArrayView4<f32>) -> f32 {
    assert_eq!(a.shape(), b.shape());
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The mean absolute difference between two arrays of the same shape.
pub fn mean_abs_diff(a: ArrayView4<f32>, b: ArrayView4<f32>) -> f64 {
    assert_eq!(a.shape(), b.shape());
    let sum: f64 = a
        .iter()
        .zip(b.iter())
        .map(|(x, y)| f64::from((x - y).abs()))
        .sum();
    sum / a.len().max(1) as f64
}
