//! The `ddim` crate on a real trained model: a small diffusers `UNet2DModel` trained on the 8x8
//! handwritten digits, run in pure Rust from its ONNX export.
//!
//! This package is a demonstration and is not published. It holds
//!
//! * `model/`: the trained model as a diffusers `DDIMPipeline` folder (`model_index.json`,
//!   `unet/`, `scheduler/`) and its ONNX export `model/unet.onnx`, written by the repository's
//!   `scripts/train_digits.py`;
//! * `data/digits.json`: the 1797 digit images and the train/held-out split used for training
//!   (UCI "Optical Recognition of Handwritten Digits", CC BY 4.0; see `README.md`);
//! * [`OnnxUnet`]: the network's noise prediction, evaluated by tract.
//!
//! Run its tests in release mode (`cargo test -p ddim-digits --release`): the network is slow
//! without optimisations.

#![deny(missing_docs)]

pub mod unet;

pub use unet::{OnnxUnet, UnetError};
