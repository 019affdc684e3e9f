//! Dynamic thresholding (Saharia et al. 2022, "Photorealistic Text-to-Image Diffusion Models
//! with Deep Language Understanding", section 2.3): the per-batch-item threshold `s`.

use crate::float::Arithmetic;

/// The threshold `s` of one batch item: the `ratio` quantile of `|x0|` over the item's elements,
/// clamped to `[1, max_value]` (to `max_value` when `max_value < 1`, as `torch.clamp` does).
///
/// `T` is the compute type (`f32` for 16-bit elements, whose `|x0|` is taken in `f32`).
/// `abs_x0` holds the bit patterns of `|x0|` (see [`Arithmetic::to_bits`]; for non-negative
/// values their integer order is the numeric order) and is reordered in place. The quantile
/// interpolates linearly between the two nearest order statistics as `torch.quantile` does:
/// rank `r = ratio * (len - 1)` in double with `ratio` rounded to `T`, `lo = floor(r)`,
/// `hi = ceil(r)`, the weight `r - lo` rounded to `T`, and `torch.lerp`'s two-sided formula
/// with a fused multiply-add. The order statistics are found by
/// selection, in linear time. NaN anywhere gives NaN. An empty slice gives 1.
pub(crate) fn dynamic_threshold<T: Arithmetic>(
    abs_x0: &mut [T::Bits],
    ratio: f64,
    max_value: T,
) -> T {
    let q = match quantile::<T>(abs_x0, ratio) {
        Some(q) => q,
        None => return clamp_threshold(T::ONE, max_value),
    };
    if q.is_nan() {
        return q;
    }
    clamp_threshold(q, max_value)
}

/// `min(max(s, 1), max_value)`.
fn clamp_threshold<T: Arithmetic>(s: T, max_value: T) -> T {
    let s = if s < T::ONE { T::ONE } else { s };
    if s > max_value {
        max_value
    } else {
        s
    }
}

/// The linearly interpolated `ratio` quantile of the non-negative values whose bit patterns
/// are `values` (reordered in place); `None` when empty.
fn quantile<T: Arithmetic>(values: &mut [T::Bits], ratio: f64) -> Option<T> {
    let last = values.len().checked_sub(1)?;
    // Every NaN pattern of a non-negative sign lies above infinity's.
    let infinity = T::to_bits(T::ONE / T::ZERO);
    if values.iter().any(|&v| v > infinity) {
        return Some(T::from_f64(f64::NAN));
    }
    // The ratio is rounded to the element type first (torch makes it a tensor of the input's
    // dtype); the rank is then exact enough in double.
    let rank = T::from_f64(ratio).to_f64() * last as f64;
    let lo = (rank.floor() as usize).min(last);
    let hi = (rank.ceil() as usize).min(last);
    let weight = T::from_f64(rank - lo as f64);
    let (_, &mut below, upper) = values.select_nth_unstable(lo);
    let above = if hi > lo {
        // The smallest value of the upper partition is the order statistic `lo + 1 == hi`.
        upper.iter().copied().min().unwrap_or(below)
    } else {
        below
    };
    Some(lerp(T::from_bits(below), T::from_bits(above), weight))
}

/// `torch.lerp(start, end, weight)`: `start + w (end - start)` for `|w| < 0.5`, else
/// `end - (end - start)(1 - w)` (so that both endpoints are exact), each with one rounding.
fn lerp<T: Arithmetic>(start: T, end: T, weight: T) -> T {
    let half = T::from_f64(0.5);
    let span = end - start;
    if weight.abs() < half {
        weight.mul_add(span, start)
    } else {
        (weight - T::ONE).mul_add(span, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted_quantile(values: &[f64], ratio: f64) -> f64 {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let rank = ratio * (v.len() - 1) as f64;
        let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
        lerp(v[lo], v[hi], rank - lo as f64)
    }

    #[test]
    fn selection_quantile_matches_sorting() {
        let values: Vec<f64> = (0..101).map(|i| ((i * 37) % 101) as f64 * 0.25).collect();
        for ratio in [0.0, 0.1, 0.5, 0.9, 0.995, 1.0] {
            let mut scratch: Vec<u64> = values.iter().map(|v| v.to_bits()).collect();
            assert_eq!(
                quantile::<f64>(&mut scratch, ratio),
                Some(sorted_quantile(&values, ratio)),
                "ratio {ratio}"
            );
        }
    }

    #[test]
    fn threshold_is_clamped_to_one_and_max_value() {
        let threshold = |values: &[f32], ratio, max: f32| {
            let mut bits: Vec<u32> = values.iter().map(|v| v.to_bits()).collect();
            dynamic_threshold(&mut bits, ratio, max)
        };
        assert_eq!(threshold(&[0.1, 0.2], 1.0, 3.0), 1.0);
        assert_eq!(threshold(&[10.0, 20.0], 1.0, 3.0), 3.0);
        // A max_value below 1 wins, as with torch.clamp(min=1, max=0.5).
        assert_eq!(threshold(&[10.0], 0.5, 0.5), 0.5);
        assert!(threshold(&[1.0, f32::NAN], 0.5, 2.0).is_nan());
        // An infinite order statistic makes the interpolation NaN, in torch.quantile too.
        assert!(threshold(&[1.0, f32::INFINITY], 1.0, 2.0).is_nan());
        assert_eq!(threshold(&[1.0, f32::INFINITY, 2.0], 0.5, 3.0), 2.0);
        assert_eq!(threshold(&[], 0.5, 2.0), 1.0);
    }
}
