//! Grids of digits written as greyscale PNG files (the `png` crate).
//!
//! A [`Sheet`] is a list of rows; a row is a list of tiles, each an 8x8 image in `[0, 1]` (1 is
//! ink) or a blank; an empty row is a horizontal gap between blocks. Tiles are enlarged by an
//! integer factor without smoothing and drawn as dark ink on white, separated by thin grey
//! lines.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use ndarray::{Array2, ArrayView2};

use crate::DigitsError;

/// Grey of the lines between tiles and of blank tiles.
const GRID_GREY: u8 = 190;
/// Background of gaps between blocks.
const GAP_WHITE: u8 = 255;

/// A grid of digits to be saved as one PNG picture.
///
/// ```
/// use ddim::ndarray::Array2;
/// use ddim_digits::Sheet;
///
/// let mut sheet = Sheet::new(4);
/// sheet.push_row([Some(Array2::zeros((8, 8))), None, Some(Array2::ones((8, 8)))]);
/// sheet.push_gap();
/// sheet.push_row([Some(Array2::from_elem((8, 8), 0.5))]);
/// let (width, height, pixels) = sheet.render();
/// assert_eq!(pixels.len(), width * height);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Sheet {
    scale: usize,
    rows: Vec<Vec<Option<Array2<f32>>>>,
}

impl Sheet {
    /// An empty sheet whose image pixels become `scale` x `scale` blocks (at least 1).
    pub fn new(scale: usize) -> Self {
        Sheet {
            scale: scale.max(1),
            rows: Vec::new(),
        }
    }

    /// Appends a row of tiles (`None` leaves a blank tile). Values are clamped to `[0, 1]`.
    pub fn push_row(&mut self, tiles: impl IntoIterator<Item = Option<Array2<f32>>>) {
        self.rows.push(tiles.into_iter().collect());
    }

    /// Appends a row of tiles from views.
    pub fn push_views<'a>(&mut self, tiles: impl IntoIterator<Item = ArrayView2<'a, f32>>) {
        self.push_row(tiles.into_iter().map(|t| Some(t.to_owned())));
    }

    /// Appends a horizontal gap, half a tile high, between blocks of rows.
    pub fn push_gap(&mut self) {
        self.rows.push(Vec::new());
    }

    /// The picture: `(width, height, grey levels row-major)`, 0 black, 255 white.
    pub fn render(&self) -> (usize, usize, Vec<u8>) {
        let line = 1;
        let tile = |t: &Option<Array2<f32>>| t.as_ref().map_or((8, 8), |a| a.dim());
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let tile_h = self
            .rows
            .iter()
            .flatten()
            .map(|t| tile(t).0)
            .max()
            .unwrap_or(8);
        let tile_w = self
            .rows
            .iter()
            .flatten()
            .map(|t| tile(t).1)
            .max()
            .unwrap_or(8);
        let (cell_w, cell_h) = (tile_w * self.scale + line, tile_h * self.scale + line);
        let gap_h = cell_h / 2;
        let width = columns * cell_w + line;
        let height = self
            .rows
            .iter()
            .map(|r| if r.is_empty() { gap_h } else { cell_h })
            .sum::<usize>()
            + line;
        let mut pixels = vec![GAP_WHITE; width * height];
        let mut top = 0;
        for row in &self.rows {
            if row.is_empty() {
                top += gap_h;
                continue;
            }
            // The grid lines around this row's tiles.
            let row_w = row.len() * cell_w + line;
            for y in top..top + cell_h + line {
                for x in 0..row_w {
                    pixels[y * width + x] = GRID_GREY;
                }
            }
            for (c, t) in row.iter().enumerate() {
                let Some(image) = t else { continue };
                let (x0, y0) = (c * cell_w + line, top + line);
                for ((i, j), &v) in image.indexed_iter() {
                    let grey = ((1.0 - v.clamp(0.0, 1.0)) * 255.0).round() as u8;
                    for dy in 0..self.scale {
                        let y = y0 + i * self.scale + dy;
                        let start = y * width + x0 + j * self.scale;
                        pixels[start..start + self.scale].fill(grey);
                    }
                }
            }
            top += cell_h;
        }
        (width, height, pixels)
    }

    /// Renders the sheet and writes it as an 8-bit greyscale PNG file (creating the folder).
    ///
    /// # Errors
    ///
    /// [`DigitsError::Io`] when the file cannot be created, [`DigitsError::Figure`] when the
    /// encoder fails.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), DigitsError> {
        let path = path.as_ref();
        let io = |source| DigitsError::Io {
            path: path.to_path_buf(),
            source,
        };
        let figure = |e: png::EncodingError| DigitsError::Figure {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let (width, height, pixels) = self.render();
        let size = |v: usize| {
            u32::try_from(v).map_err(|_| DigitsError::Figure {
                path: path.to_path_buf(),
                message: format!("{v} pixels is too large for PNG"),
            })
        };
        let file = File::create(path).map_err(io)?;
        let mut encoder = png::Encoder::new(BufWriter::new(file), size(width)?, size(height)?);
        encoder.set_color(png::ColorType::Grayscale);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(figure)?;
        writer.write_image_data(&pixels).map_err(figure)?;
        writer.finish().map_err(figure)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ink_is_dark_and_blank_tiles_are_grey() {
        let mut sheet = Sheet::new(2);
        sheet.push_row([Some(Array2::ones((8, 8))), None]);
        let (width, height, pixels) = sheet.render();
        assert_eq!((width, height), (2 * 17 + 1, 17 + 1));
        assert_eq!(pixels[width + 1], 0); // inside the first tile
        assert_eq!(pixels[width + 17 + 1], GRID_GREY); // inside the blank one
    }
}
