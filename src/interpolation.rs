//! Spherical interpolation of initial noises (DDIM paper section 5.3): decoding points on the
//! great circle between two Gaussian noises with deterministic DDIM gives images that morph
//! from one sample to the other.
//!
//! Per batch item, with `θ = acos(⟨a, b⟩ / (‖a‖ ‖b‖))` over all the item's elements,
//!
//! ```text
//! slerp(a, b, α) = sin((1 − α) θ) / sin θ · a + sin(α θ) / sin θ · b
//! ```
//!
//! as the DDIM authors' code computes it. Unlike linear interpolation it keeps the norm of
//! high-dimensional Gaussian noise (two independent draws are nearly orthogonal, so their
//! average has about `1/√2` of their norm, which a diffusion model decodes as a washed-out
//! image).

use ndarray::{Array, ArrayRef, Axis, Dimension, Slice, Zip};

use crate::checks::same_shape;
use crate::{DdimError, DdimFloat};

/// Below this `sin θ` the two items are taken as parallel and interpolated linearly.
const PARALLEL: f64 = 1e-6;

/// Spherical linear interpolation between two arrays of initial noise, per batch item (axis 0):
/// `sin((1 − α) θ) / sin θ · a + sin(α θ) / sin θ · b`, where `θ` is the angle between the item
/// of `a` and the item of `b` as vectors of all their elements (DDIM paper section 5.3, as the
/// authors' code computes it).
///
/// The angle and the two weights are computed in double from the element values; each output
/// element is `w_a * a + w_b * b` with the weights rounded to the element type (for 16-bit
/// elements: to `f32`, the sum computed in `f32` and rounded once). `alpha = 0`
/// returns `a` and `alpha = 1` returns `b` exactly. Where the items are parallel or one of them
/// is zero (`sin θ < 1e-6`, so the formula would divide by zero), the item is interpolated
/// linearly, `(1 − α) a + α b`.
///
/// # Errors
///
/// [`DdimError::InvalidArgument`] for an `alpha` outside `[0, 1]` or NaN;
/// [`DdimError::ShapeMismatch`] when the shapes differ; [`DdimError::TooFewAxes`] for
/// 0-dimensional arrays (axis 0 is the batch).
///
/// # Example
///
/// ```
/// use ddim::ndarray::Array2;
/// use ddim::{slerp, TorchGenerator};
///
/// let mut generator = TorchGenerator::manual_seed(0);
/// let a: Array2<f32> = generator.randn((1, 64));
/// let b: Array2<f32> = generator.randn((1, 64));
/// let row: Vec<Array2<f32>> = (0..=8)
///     .map(|i| slerp(&a, &b, i as f64 / 8.0))
///     .collect::<Result<_, _>>()?;
/// assert_eq!(row[0], a);
/// assert_eq!(row[8], b);
/// // The midpoint keeps about the norm of the endpoints; the linear midpoint does not.
/// let norm = |x: &Array2<f32>| x.mapv(|v| v * v).sum().sqrt();
/// let linear = (&a + &b) * 0.5;
/// assert!(norm(&row[4]) > 1.2 * norm(&linear));
/// # Ok::<(), ddim::DdimError>(())
/// ```
pub fn slerp<T: DdimFloat, D: Dimension>(
    a: &ArrayRef<T, D>,
    b: &ArrayRef<T, D>,
    alpha: f64,
) -> Result<Array<T, D>, DdimError> {
    if !(0.0..=1.0).contains(&alpha) {
        return Err(DdimError::InvalidArgument {
            name: "alpha",
            value: alpha,
            allowed: "a number between 0 (the first array) and 1 (the second)",
        });
    }
    same_shape("b", b.shape(), "a", a.shape())?;
    if a.ndim() == 0 {
        return Err(DdimError::TooFewAxes {
            operation: "slerp (axis 0 is the batch)",
            found: 0,
            required: 1,
        });
    }
    if alpha == 0.0 {
        return Ok(a.to_owned());
    }
    if alpha == 1.0 {
        return Ok(b.to_owned());
    }
    let mut out = Array::from_elem(a.raw_dim(), T::ZERO);
    let (a, b) = (a.view().into_dyn(), b.view().into_dyn());
    let mut out_items = out.view_mut().into_dyn();
    for i in 0..a.len_of(Axis(0)) {
        let item = Slice::from(i..=i);
        let (a, b) = (a.slice_axis(Axis(0), item), b.slice_axis(Axis(0), item));
        let (wa, wb) = weights(&a, &b, alpha);
        let (wa, wb) = (T::Compute::from_f64(wa), T::Compute::from_f64(wb));
        Zip::from(out_items.slice_axis_mut(Axis(0), item))
            .and(&a)
            .and(&b)
            .for_each(|o, &a, &b| *o = T::narrow(wa * a.widen() + wb * b.widen()));
    }
    Ok(out)
}

/// The weights of one item's interpolation, in double.
fn weights<T: DdimFloat>(
    a: &ndarray::ArrayViewD<'_, T>,
    b: &ndarray::ArrayViewD<'_, T>,
    alpha: f64,
) -> (f64, f64) {
    let (mut dot, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    Zip::from(a).and(b).for_each(|&a, &b| {
        let (a, b) = (a.to_f64(), b.to_f64());
        dot += a * b;
        aa += a * a;
        bb += b * b;
    });
    // Rounding can push the cosine a hair outside [-1, 1].
    let cos = (dot / (aa.sqrt() * bb.sqrt())).clamp(-1.0, 1.0);
    let theta = cos.acos();
    let sin = theta.sin();
    if sin.is_nan() || sin < PARALLEL {
        return (1.0 - alpha, alpha);
    }
    (
        ((1.0 - alpha) * theta).sin() / sin,
        (alpha * theta).sin() / sin,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn orthogonal_unit_vectors_move_along_the_circle() {
        let a = array![[1.0f64, 0.0]];
        let b = array![[0.0f64, 1.0]];
        let mid = slerp(&a, &b, 0.5).unwrap_or_else(|e| panic!("{e}"));
        let h = std::f64::consts::FRAC_1_SQRT_2;
        assert!((mid[[0, 0]] - h).abs() < 1e-15 && (mid[[0, 1]] - h).abs() < 1e-15);
    }

    #[test]
    fn parallel_and_zero_items_fall_back_to_linear_interpolation() {
        let a = array![[1.0f32, 2.0], [0.0, 0.0]];
        let b = array![[2.0f32, 4.0], [3.0, 1.0]];
        let out = slerp(&a, &b, 0.25).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out, array![[1.25f32, 2.5], [0.75, 0.25]]);
    }
}
