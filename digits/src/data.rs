//! The 8x8 handwritten digits and the train / held-out split the model was trained with.
//!
//! `data/digits.json` (written by `scripts/train_digits.py`) holds the 1797 images of
//! scikit-learn's copy of the UCI "Optical Recognition of Handwritten Digits" data (CC BY 4.0):
//! 64 integers `0..=16` per image, row-major 8x8, a label `0..=9`, and the indices of the 1500
//! training and 297 held-out images.
//!
//! Two scalings are used in this package:
//!
//! | scaling | formula | used for |
//! |---|---|---|
//! | model space, `[-1, 1]` | `pixel / 8 - 1` | what the network was trained on (`train_digits.py` does exactly this), DDIM encoding, reconstruction errors |
//! | image space, `[0, 1]` | `pixel / 16` | comparing with `DDIMPipeline`'s output images (`clamp(x / 2 + 0.5, 0, 1)`), the metrics and the figures |
//!
//! The two are the same map: `image = model / 2 + 0.5`.

use std::path::{Path, PathBuf};

use ndarray::{Array2, Array4, ArrayView1, Axis};
use serde::Deserialize;

use crate::DigitsError;

/// Pixels per side of a digit.
pub const SIDE: usize = 8;
/// Pixels per digit.
pub const PIXELS: usize = SIDE * SIDE;
/// The largest pixel value of the data (ink); 0 is background.
pub const MAX_VALUE: u8 = 16;
/// Number of classes (the digits 0 to 9).
pub const CLASSES: usize = 10;

/// The digits data set with its split.
///
/// ```no_run
/// use ddim_digits::Digits;
///
/// let digits = Digits::load(Digits::default_path())?;
/// assert_eq!(digits.len(), 1797);
/// let x = digits.model_space(&digits.held_out()[..4]); // (4, 1, 8, 8) in [-1, 1]
/// assert_eq!(x.shape(), &[4, 1, 8, 8]);
/// # Ok::<(), ddim_digits::DigitsError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Digits {
    /// `(count, 64)` pixel values `0..=16`, stored as `f32`.
    pixels: Array2<f32>,
    labels: Vec<u8>,
    train: Vec<usize>,
    held_out: Vec<usize>,
}

#[derive(Deserialize)]
struct File {
    count: usize,
    height: usize,
    width: usize,
    max_value: u8,
    train: Vec<usize>,
    held_out: Vec<usize>,
    images: Vec<Image>,
}

#[derive(Deserialize)]
struct Image {
    label: u8,
    pixels: Vec<u8>,
}

impl Digits {
    /// `data/digits.json` of this package, as compiled in.
    pub fn default_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("data")
            .join("digits.json")
    }

    /// Reads and checks `digits.json`.
    ///
    /// # Errors
    ///
    /// [`DigitsError::Io`] when the file cannot be read, [`DigitsError::Data`] when it is not
    /// JSON of the expected form: 8x8 images of 64 values `0..=16`, labels `0..=9`, and a split
    /// whose indices are in range and cover every image exactly once.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, DigitsError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| DigitsError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let bad = |message: String| DigitsError::Data {
            path: path.to_path_buf(),
            message,
        };
        let file: File = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if (file.height, file.width, file.max_value) != (SIDE, SIDE, MAX_VALUE) {
            return Err(bad(format!(
                "images are {}x{} with values up to {}, expected 8x8 up to 16",
                file.height, file.width, file.max_value
            )));
        }
        if file.images.len() != file.count {
            return Err(bad(format!(
                "{} images listed, count says {}",
                file.images.len(),
                file.count
            )));
        }
        let mut pixels = Array2::zeros((file.count, PIXELS));
        let mut labels = Vec::with_capacity(file.count);
        for (i, (image, mut row)) in file.images.iter().zip(pixels.rows_mut()).enumerate() {
            if image.pixels.len() != PIXELS || image.pixels.iter().any(|&p| p > MAX_VALUE) {
                return Err(bad(format!("image {i} is not 64 values in 0..=16")));
            }
            if usize::from(image.label) >= CLASSES {
                return Err(bad(format!("image {i} has label {}", image.label)));
            }
            for (slot, &p) in row.iter_mut().zip(&image.pixels) {
                *slot = f32::from(p);
            }
            labels.push(image.label);
        }
        let mut seen = vec![false; file.count];
        for &i in file.train.iter().chain(&file.held_out) {
            match seen.get_mut(i) {
                Some(slot) if !*slot => *slot = true,
                _ => return Err(bad(format!("split index {i} out of range or repeated"))),
            }
        }
        if seen.iter().any(|s| !s) {
            return Err(bad("the split leaves images out".to_string()));
        }
        Ok(Digits {
            pixels,
            labels,
            train: file.train,
            held_out: file.held_out,
        })
    }

    /// Number of images (1797).
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The label (`0..=9`) of every image.
    pub fn labels(&self) -> &[u8] {
        &self.labels
    }

    /// Indices of the images the model was trained on.
    pub fn train(&self) -> &[usize] {
        &self.train
    }

    /// Indices of the images the model never saw.
    pub fn held_out(&self) -> &[usize] {
        &self.held_out
    }

    /// The labels of the images at `indices`.
    ///
    /// # Panics
    ///
    /// If an index is out of range (indices come from [`train`](Self::train) and
    /// [`held_out`](Self::held_out)).
    pub fn labels_of(&self, indices: &[usize]) -> Vec<u8> {
        indices.iter().map(|&i| self.labels[i]).collect()
    }

    /// The images at `indices` as the network saw them in training: `(n, 1, 8, 8)`, each pixel
    /// `value / 8 - 1` in `[-1, 1]`.
    ///
    /// # Panics
    ///
    /// If an index is out of range.
    pub fn model_space(&self, indices: &[usize]) -> Array4<f32> {
        let flat = self.pixels.select(Axis(0), indices).mapv(|p| p / 8.0 - 1.0);
        flat.into_shape_with_order((indices.len(), 1, SIDE, SIDE))
            .expect("64 pixels make one 8x8 channel")
    }

    /// The images at `indices` as flat vectors in `[0, 1]` (`value / 16`), shape `(n, 64)`: the
    /// scale of `DDIMPipeline`'s output images.
    ///
    /// # Panics
    ///
    /// If an index is out of range.
    pub fn image_space(&self, indices: &[usize]) -> Array2<f32> {
        self.pixels
            .select(Axis(0), indices)
            .mapv(|p| p / f32::from(MAX_VALUE))
    }

    /// One image's pixel values `0..=16`, row-major.
    ///
    /// # Panics
    ///
    /// If `index` is out of range.
    pub fn pixels(&self, index: usize) -> ArrayView1<'_, f32> {
        self.pixels.row(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_data_loads_with_its_split() {
        let digits = Digits::load(Digits::default_path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(digits.len(), 1797);
        assert_eq!((digits.train().len(), digits.held_out().len()), (1500, 297));
        let x = digits.model_space(&[0]);
        let y = digits.image_space(&[0]);
        for (m, i) in x.iter().zip(y.iter()) {
            assert!((-1.0..=1.0).contains(m));
            assert_eq!(m / 2.0 + 0.5, *i);
        }
    }

    #[test]
    fn a_missing_file_is_an_io_error() {
        let err = Digits::load("no/such/digits.json").unwrap_err();
        assert!(matches!(err, DigitsError::Io { .. }), "{err}");
    }
}
