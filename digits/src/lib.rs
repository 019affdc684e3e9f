//! The `ddim` crate on a real trained model: a small diffusers `UNet2DModel` trained on the 8x8
//! handwritten digits, run in pure Rust from its ONNX export, sampled, encoded and decoded with
//! [`ddim::DdimScheduler`].
//!
//! This package is a demonstration and is not published. It holds
//!
//! * `model/`: the trained model as a diffusers `DDIMPipeline` folder (`model_index.json`,
//!   `unet/`, `scheduler/`) and its ONNX export `model/unet.onnx`, written by the repository's
//!   `scripts/train_digits.py`;
//! * `data/digits.json`: the 1797 digit images and the train/held-out split used for training
//!   (UCI "Optical Recognition of Handwritten Digits", CC BY 4.0; see `README.md`);
//! * the library below, and the binary `ddim-digits` (`cargo run --release -p ddim-digits`),
//!   which measures the DDIM paper's claims on the model and draws the figures
//!   `docs/digits_*.png`.
//!
//! | module | what |
//! |---|---|
//! | [`unet`] | [`OnnxUnet`]: the network's noise prediction, evaluated by tract |
//! | [`data`] | [`Digits`]: the images, labels and split, in model space `[-1, 1]` or image space `[0, 1]` |
//! | [`sampler`] | [`Sampler`]: `DDIMPipeline`'s loop, DDIM encoding and decoding, timed |
//! | [`metrics`] | Fréchet and kernel distances in pixel space, nearest-neighbour classifier, RMSE |
//! | [`figure`] | [`Sheet`]: grids of digits saved as PNG |
//! | [`demo`] | the demonstration's experiments, tables and figures |
//! | [`table`], [`progress`], [`parallel`] | Markdown tables, the progress line, threads |
//!
//! Run its tests in release mode (`cargo test -p ddim-digits --release`): the network is slow
//! without optimisations.
//!
//! ```no_run
//! use ddim::{DdimScheduler, TorchGenerator};
//! use ddim_digits::{OnnxUnet, Sampler};
//!
//! let unet = OnnxUnet::load("digits/model/unet.onnx")?;
//! let mut scheduler = DdimScheduler::from_pretrained("digits/model")?;
//! scheduler.set_timesteps(50)?;
//! let mut generator = TorchGenerator::manual_seed(42);
//! let out = Sampler::new(&unet).generate(&scheduler, &mut generator, 4, 0.0)?;
//! assert_eq!(out.images.shape(), &[4, 8, 8, 1]); // in [0, 1], as DDIMPipeline returns them
//! # Ok::<(), ddim_digits::DigitsError>(())
//! ```

#![deny(missing_docs)]

pub mod data;
pub mod demo;
mod error;
pub mod figure;
pub mod metrics;
pub mod parallel;
pub mod progress;
pub mod sampler;
pub mod table;
pub mod unet;

pub use data::Digits;
pub use error::DigitsError;
pub use figure::Sheet;
pub use metrics::{
    class_counts, kernel_distance, mean_ink, rmse, total_variation, GaussianFit, NearestNeighbours,
    Neighbour,
};
pub use parallel::map_parallel;
pub use progress::Progress;
pub use sampler::{to_images, Generated, Sampler, Timings};
pub use table::Table;
pub use unet::{OnnxUnet, UnetError};
