//! Classifier-free guidance (Ho and Salimans 2022, "Classifier-Free Diffusion Guidance") and
//! guidance rescale (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are
//! Flawed", section 3.4), as diffusers' pipelines apply them between the network and the
//! scheduler step.
//!
//! Per element, with `u` the unconditional and `c` the conditional ("text") prediction, and per
//! batch item (axis 0) the unbiased standard deviations `s_text` of `c` and `s_guided` of `g`
//! over all the item's elements:
//!
//! ```text
//! g   = u + scale * (c - u)
//! out = rescale * (g * (s_text / s_guided)) + (1 - rescale) * g      (rescale > 0)
//! out = g                                                            (rescale = 0)
//! ```
//!
//! This is the reference's order of operations (`noise_pred_uncond + guidance_scale *
//! (noise_pred_text - noise_pred_uncond)`, then `rescale_noise_cfg`), evaluated in the element
//! type's compute type (the type itself for `f32` and `f64`, `f32` for 16-bit elements, whose
//! results are rounded once) with the scalars rounded to it as torch rounds them. `g` is never
//! stored: a read-only pass over each batch item computes both standard deviations (in double,
//! from the compute-type values of `c` and `g`), and a second pass writes `out`.

use ndarray::{Array, ArrayRef, ArrayView, ArrayViewMut, Axis, Dimension, Slice, Zip};

use crate::checks::same_shape;
use crate::float::Arithmetic;
use crate::{DdimError, DdimFloat};

/// Classifier-free guidance, `uncond + guidance_scale * (text - uncond)`, followed (when
/// `guidance_rescale > 0`) by guidance rescale: per batch item (axis 0), the guided prediction
/// is scaled by `std(text) / std(guided)` and mixed with the unscaled one,
/// `guidance_rescale * rescaled + (1 - guidance_rescale) * guided`.
///
/// This is what diffusers' pipelines do between the network and `scheduler.step`
/// (`noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)`, then
/// `rescale_noise_cfg(noise_pred, noise_pred_text, guidance_rescale)` if `guidance_rescale >
/// 0`), with the same element-type operations in the same order; `std` is the unbiased standard
/// deviation over all axes but the batch axis, as `torch.std(dim=[1, ..])`. The recipe of Lin et
/// al. 2023 for zero-terminal-SNR models (`v_prediction`, `rescale_betas_zero_snr`, `trailing`
/// spacing) uses `guidance_rescale = 0.7`.
///
/// `uncond` and `text` may have any dimensionality (at least one axis; at least two when
/// `guidance_rescale > 0`), be owned arrays or views of any layout, and of any [`DdimFloat`]
/// type (16-bit elements are computed in `f32` and each result rounded once); the result is a
/// new array of their shape. [`classifier_free_guidance_into`] writes into a buffer
/// instead.
///
/// Any finite `guidance_scale` is evaluated by the formula (1 gives `text` up to rounding, 0
/// gives `uncond`, negative values push away from `text`). The pipelines skip guidance
/// altogether for `guidance_scale <= 1` and then use the conditional prediction alone, without
/// rescale; call this only when you guide.
///
/// As in the reference, where a standard deviation is undefined or zero the result is not
/// finite: a batch item of one element has no unbiased standard deviation (torch returns NaN), so
/// with `guidance_rescale > 0` its result is NaN; an item whose guided prediction is constant
/// (zero standard deviation) gives infinities, or NaN where the guided value is 0. With
/// `guidance_rescale = 0` no standard deviation is computed. Arrays with no elements give an
/// empty result.
///
/// # Errors
///
/// [`DdimError::InvalidGuidance`] for a non-finite `guidance_scale` or a `guidance_rescale`
/// outside `[0, 1]`; [`DdimError::TooFewAxes`] for a 0-dimensional array, or a 1-dimensional one
/// with `guidance_rescale > 0` (whose items would be single elements; the reference's `std` with
/// an empty `dim` list would then mix the batch); [`DdimError::ShapeMismatch`] when `text` and
/// `uncond` differ in shape.
///
/// # Example
///
/// ```
/// use ddim::classifier_free_guidance;
/// use ddim::ndarray::{array, Array4, Axis};
///
/// // The network's output for the doubled batch [unconditional; conditional], as in diffusers.
/// let noise_pred = Array4::<f32>::from_shape_fn((2, 4, 8, 8), |(b, c, h, w)| {
///     ((b * 7 + c * 5 + h * 3 + w) as f32 * 0.37).sin() * (1.0 + b as f32)
/// });
/// let (uncond, text) = noise_pred.view().split_at(Axis(0), 1);
///
/// let guided = classifier_free_guidance(&uncond, &text, 7.5, 0.0)?;
/// assert_eq!(guided.shape(), &[1, 4, 8, 8]);
///
/// // With full rescale the result has the standard deviation of `text`.
/// let rescaled = classifier_free_guidance(&uncond, &text, 7.5, 1.0)?;
/// let std = |x: &Array4<f32>| x.std(1.0);
/// assert!((std(&rescaled) - std(&text.to_owned())).abs() < 1e-5);
///
/// // Any dimensionality with the batch on axis 0; a scale of 0 gives `uncond`.
/// let u = array![[1.0f64, 2.0], [3.0, 4.0]];
/// let c = array![[2.0f64, 0.0], [3.0, 5.0]];
/// assert_eq!(classifier_free_guidance(&u, &c, 0.0, 0.0)?, u);
/// # Ok::<(), ddim::DdimError>(())
/// ```
pub fn classifier_free_guidance<T: DdimFloat, D: Dimension>(
    uncond: &ArrayRef<T, D>,
    text: &ArrayRef<T, D>,
    guidance_scale: f64,
    guidance_rescale: f64,
) -> Result<Array<T, D>, DdimError> {
    let guidance = Guidance::new::<T, D>(uncond, text, guidance_scale, guidance_rescale)?;
    let mut out = Array::from_elem(uncond.raw_dim(), T::ZERO);
    guidance.apply(uncond.view(), text.view(), out.view_mut());
    Ok(out)
}

/// [`classifier_free_guidance`], writing into `out` (an array or a mutable view of the inputs'
/// shape) instead of allocating; it makes no heap allocation (arrays of dynamic dimensionality
/// with more than four axes aside, whose index vectors ndarray allocates).
///
/// The result is identical, to the bit, to [`classifier_free_guidance`]'s.
///
/// # Errors
///
/// As [`classifier_free_guidance`], and [`DdimError::ShapeMismatch`] when `out` is not of the
/// inputs' shape. On error `out` is left untouched.
///
/// # Example
///
/// ```
/// use ddim::classifier_free_guidance_into;
/// use ddim::ndarray::Array4;
///
/// let uncond = Array4::from_shape_fn((2, 4, 8, 8), |(b, c, h, w)| (b + c + h * w) as f32 * 0.01);
/// let text = uncond.mapv(|x| (x * 3.1).sin());
/// let mut guided = Array4::<f32>::zeros((2, 4, 8, 8));
/// for _step in 0..3 {
///     classifier_free_guidance_into(&uncond, &text, 5.0, 0.7, &mut guided)?;
/// }
/// assert_eq!(guided, ddim::classifier_free_guidance(&uncond, &text, 5.0, 0.7)?);
/// # Ok::<(), ddim::DdimError>(())
/// ```
pub fn classifier_free_guidance_into<T: DdimFloat, D: Dimension>(
    uncond: &ArrayRef<T, D>,
    text: &ArrayRef<T, D>,
    guidance_scale: f64,
    guidance_rescale: f64,
    out: &mut ArrayRef<T, D>,
) -> Result<(), DdimError> {
    let guidance = Guidance::new::<T, D>(uncond, text, guidance_scale, guidance_rescale)?;
    same_shape("out", out.shape(), "uncond", uncond.shape())?;
    guidance.apply(uncond.view(), text.view(), out.view_mut());
    Ok(())
}

/// The validated scalars of one guidance call, rounded to the compute type `C`.
#[derive(Debug, Clone, Copy)]
struct Guidance<C> {
    /// `guidance_scale`.
    scale: C,
    /// `(guidance_rescale, 1 - guidance_rescale)`, or `None` for no rescale.
    rescale: Option<(C, C)>,
}

impl<C: Arithmetic> Guidance<C> {
    /// Validates the scalars and the inputs' shapes.
    fn new<T: DdimFloat<Compute = C>, D: Dimension>(
        uncond: &ArrayRef<T, D>,
        text: &ArrayRef<T, D>,
        guidance_scale: f64,
        guidance_rescale: f64,
    ) -> Result<Self, DdimError> {
        if !guidance_scale.is_finite() {
            return Err(DdimError::InvalidGuidance {
                parameter: "guidance_scale",
                value: guidance_scale,
                allowed: "a finite number (1 is no guidance, 7.5 is typical)",
            });
        }
        // `contains` is false for NaN.
        if !(0.0..=1.0).contains(&guidance_rescale) {
            return Err(DdimError::InvalidGuidance {
                parameter: "guidance_rescale",
                value: guidance_rescale,
                allowed: "a number between 0 and 1 (0 is no rescale, 0.7 is the recommended value)",
            });
        }
        let rescaling = guidance_rescale > 0.0;
        let (operation, required) = if rescaling {
            ("guidance rescale (a batch axis and at least one more)", 2)
        } else {
            ("classifier-free guidance (a batch axis)", 1)
        };
        if uncond.ndim() < required {
            return Err(DdimError::TooFewAxes {
                operation,
                found: uncond.ndim(),
                required,
            });
        }
        same_shape("text", text.shape(), "uncond", uncond.shape())?;
        Ok(Guidance {
            // torch multiplies a float32 tensor by a Python float rounded to float32, and
            // computes `1 - guidance_rescale` in double before rounding it.
            scale: C::from_f64(guidance_scale),
            rescale: rescaling.then(|| {
                (
                    C::from_f64(guidance_rescale),
                    C::from_f64(1.0 - guidance_rescale),
                )
            }),
        })
    }

    /// The guided prediction of one element.
    #[inline(always)]
    fn guided(&self, uncond: C, text: C) -> C {
        uncond + self.scale * (text - uncond)
    }

    /// Writes the result into `out`; the caller has checked the shapes (and, with rescale, that
    /// there are at least two axes).
    fn apply<T: DdimFloat<Compute = C>, D: Dimension>(
        &self,
        uncond: ArrayView<'_, T, D>,
        text: ArrayView<'_, T, D>,
        mut out: ArrayViewMut<'_, T, D>,
    ) {
        let Some((rescale, keep)) = self.rescale else {
            write(uncond, text, out, |u, c| self.guided(u, c));
            return;
        };
        // A 0-dimensional array has no axis 0 to iterate; `new` refuses it, this keeps the
        // pass panic-free regardless.
        if uncond.ndim() == 0 {
            return;
        }
        for b in 0..uncond.len_of(Axis(0)) {
            // One batch item, as an array of the same dimensionality with axis 0 of length 1.
            let item = Slice::from(b..=b);
            let u = uncond.slice_axis(Axis(0), item);
            let c = text.slice_axis(Axis(0), item);
            let (std_text, std_guided) = self.item_std(u.view(), c.view());
            // `noise_pred_text.std(..) / noise_cfg.std(..)`: two element-type values divided.
            let ratio = C::from_f64(std_text) / C::from_f64(std_guided);
            write(u, c, out.slice_axis_mut(Axis(0), item), |u, c| {
                let g = self.guided(u, c);
                rescale * (g * ratio) + keep * g
            });
        }
    }

    /// The unbiased standard deviations of `text` and of the guided prediction over one batch
    /// item, in double from the compute-type values, in one read of the item.
    ///
    /// The elements are taken in row-major order (so the result does not depend on the memory
    /// layout) in blocks of [`BLOCK`]: each block's mean and sum of squared deviations are
    /// computed exactly as the two-pass formula does, and blocks are merged with Chan, Golub and
    /// LeVeque's update, which is as stable as the two-pass formula over the whole item.
    fn item_std<T: DdimFloat<Compute = C>, E: Dimension>(
        &self,
        uncond: ArrayView<'_, T, E>,
        text: ArrayView<'_, T, E>,
    ) -> (f64, f64) {
        let mut text_moments = Moments::EMPTY;
        let mut guided_moments = Moments::EMPTY;
        let mut text_block = [0.0f64; BLOCK];
        let mut guided_block = [0.0f64; BLOCK];
        let mut flush = |len: usize, text_block: &[f64; BLOCK], guided_block: &[f64; BLOCK]| {
            // `len <= BLOCK` always; `get` keeps even a broken invariant panic-free.
            text_moments.merge(Moments::of(text_block.get(..len).unwrap_or_default()));
            guided_moments.merge(Moments::of(guided_block.get(..len).unwrap_or_default()));
        };
        if let (Some(us), Some(cs)) = (uncond.as_slice(), text.as_slice()) {
            for (u, c) in us.chunks(BLOCK).zip(cs.chunks(BLOCK)) {
                let pairs = text_block.iter_mut().zip(guided_block.iter_mut());
                for ((tb, gb), (&u, &c)) in pairs.zip(u.iter().zip(c)) {
                    let (u, c) = (u.widen(), c.widen());
                    *tb = c.to_f64();
                    *gb = self.guided(u, c).to_f64();
                }
                flush(u.len().min(c.len()), &text_block, &guided_block);
            }
        } else {
            let mut len = 0;
            for (&u, &c) in uncond.iter().zip(text.iter()) {
                if let (Some(tb), Some(gb)) = (text_block.get_mut(len), guided_block.get_mut(len)) {
                    let (u, c) = (u.widen(), c.widen());
                    *tb = c.to_f64();
                    *gb = self.guided(u, c).to_f64();
                }
                len += 1;
                if len == BLOCK {
                    flush(len, &text_block, &guided_block);
                    len = 0;
                }
            }
            if len > 0 {
                flush(len, &text_block, &guided_block);
            }
        }
        (text_moments.std(), guided_moments.std())
    }
}

/// Elements per block of the statistics pass: two blocks of doubles stay in L1 cache.
const BLOCK: usize = 256;

/// Count, mean and sum of squared deviations from the mean of a set of values.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Moments {
    count: usize,
    mean: f64,
    m2: f64,
}

impl Moments {
    /// No values.
    const EMPTY: Moments = Moments {
        count: 0,
        mean: 0.0,
        m2: 0.0,
    };

    /// The two-pass moments of a block.
    fn of(values: &[f64]) -> Moments {
        if values.is_empty() {
            return Moments::EMPTY;
        }
        let mean = sum(values, |v| v) / values.len() as f64;
        let m2 = sum(values, |v| (v - mean) * (v - mean));
        Moments {
            count: values.len(),
            mean,
            m2,
        }
    }

    /// Adds the values of `other` (Chan, Golub and LeVeque 1979).
    fn merge(&mut self, other: Moments) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            *self = other;
            return;
        }
        let count = self.count + other.count;
        let (n_a, n_b, n) = (self.count as f64, other.count as f64, count as f64);
        let delta = other.mean - self.mean;
        self.mean += delta * (n_b / n);
        self.m2 += other.m2 + delta * delta * (n_a * n_b / n);
        self.count = count;
    }

    /// The unbiased standard deviation: NaN for fewer than two values, as in torch.
    fn std(&self) -> f64 {
        let dof = self.count.saturating_sub(1) as f64;
        (self.m2 / dof).sqrt()
    }
}

/// The sum of `f(v)` over `values` with eight interleaved accumulators: a fixed order, which
/// the compiler can vectorise without reassociating anything.
#[inline(always)]
fn sum(values: &[f64], f: impl Fn(f64) -> f64) -> f64 {
    let mut lanes = [0.0f64; 8];
    let chunks = values.chunks_exact(8);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += f(v);
        }
    }
    for (lane, &v) in lanes.iter_mut().zip(rest) {
        *lane += f(v);
    }
    let [a, b, c, d, e, g, h, k] = lanes;
    ((a + b) + (c + d)) + ((e + g) + (h + k))
}

/// `out = element(uncond, text)` for every element, in the compute type with one rounding of
/// each result: over plain slices when all three arrays are contiguous and row-major (a loop the
/// compiler vectorises), through `Zip` otherwise.
#[inline(always)]
fn write<T: DdimFloat, E: Dimension>(
    uncond: ArrayView<'_, T, E>,
    text: ArrayView<'_, T, E>,
    mut out: ArrayViewMut<'_, T, E>,
    element: impl Fn(T::Compute, T::Compute) -> T::Compute,
) {
    if let (Some(os), Some(us), Some(cs)) = (out.as_slice_mut(), uncond.as_slice(), text.as_slice())
    {
        for (o, (&u, &c)) in os.iter_mut().zip(us.iter().zip(cs)) {
            *o = T::narrow(element(u.widen(), c.widen()));
        }
        return;
    }
    Zip::from(out)
        .and(&uncond)
        .and(&text)
        .for_each(|o, &u, &c| *o = T::narrow(element(u.widen(), c.widen())));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_pass_std(values: &[f64]) -> f64 {
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        (values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1.0)).sqrt()
    }

    #[test]
    fn blocked_moments_match_two_pass_std() {
        for len in [2, 7, 255, 256, 257, 1000, 4096] {
            let values: Vec<f64> = (0..len)
                .map(|i| 1000.0 + ((i * 37 % 101) as f64 * 0.013).sin())
                .collect();
            let mut merged = Moments::EMPTY;
            for block in values.chunks(BLOCK) {
                merged.merge(Moments::of(block));
            }
            let expected = two_pass_std(&values);
            assert!(
                (merged.std() - expected).abs() <= 1e-12 * expected,
                "len {len}: {} vs {expected}",
                merged.std()
            );
        }
    }

    #[test]
    fn std_of_fewer_than_two_values_is_nan() {
        assert!(Moments::EMPTY.std().is_nan());
        assert!(Moments::of(&[3.0]).std().is_nan());
        assert_eq!(Moments::of(&[1.0, 3.0]).std(), 2.0f64.sqrt());
    }

    #[test]
    fn sum_keeps_a_fixed_order() {
        let values: Vec<f64> = (0..19).map(|i| i as f64 * 0.1).collect();
        let expected: f64 = values.iter().sum();
        assert!((sum(&values, |v| v) - expected).abs() < 1e-12);
        assert_eq!(sum(&[], |v| v), 0.0);
    }
}
