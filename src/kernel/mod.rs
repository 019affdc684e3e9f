//! The one kernel: applies the DDIM update ([`update`]) to whole arrays in a single pass that
//! reads each input once and writes each output once.
//!
//! Every flavour of step (three prediction types, clipping or thresholding, re-derived noise,
//! eta with or without noise, forward or inverse) is the same per-element update with other
//! scalars; the scheduler computes the scalars, this module applies them. The pass works on
//! dynamic-dimension views (plain slices when the arrays are contiguous), so it is compiled once
//! per element type, not once per dimensionality or noise source.
//!
//! - [`update`]: the formulas of one element, named after the paper's symbols.
//! - `pass`: the loop over the elements (slices in blocks, or `Zip` for other layouts).
//! - `parallel` (feature `parallel`): large contiguous passes split across rayon's thread pool.
//!
//! On x86-64 the pass is also compiled for AVX2 and chosen at run time: the same operations in
//! the same order (Rust never fuses or reorders floating-point operations), so the same results
//! to the bit.
//!
//! The arrays hold the element type `T`; the scalars and the arithmetic are in its compute type
//! `T::Compute` (the element type itself for `f32` and `f64`, `f32` for the 16-bit types). The
//! pass widens each value it reads and narrows each value it writes, once; for `f32` and `f64`
//! both are the identity, so their code is what it would be without them.

use ndarray::{ArrayViewD, ArrayViewMutD, Axis, Slice, Zip};

use crate::DdimFloat;

mod pass;
pub(crate) mod update;

#[cfg(feature = "parallel")]
mod parallel;

pub(crate) use update::{Update, X0Bounds};

/// Where the noise of a pass comes from.
pub(crate) enum Noise<'a, T: DdimFloat> {
    /// No noise (deterministic steps).
    Zero,
    /// A caller-provided array of the sample's shape (widened as it is read).
    Given(ArrayViewD<'a, T>),
    /// Drawn in the compute type by a generator that fills a block of values at a time, in the
    /// order the pass visits the elements.
    Drawn(&'a mut dyn FnMut(&mut [T::Compute])),
}

/// The sample, and where the results of a pass go.
pub(crate) enum Target<'a, T> {
    /// Read `sample`; write `prev_sample` and `pred_original_sample` to their own buffers.
    Separate {
        sample: ArrayViewD<'a, T>,
        prev_sample: ArrayViewMutD<'a, T>,
        pred_original_sample: ArrayViewMutD<'a, T>,
    },
    /// Overwrite the sample with `prev_sample`; `pred_original_sample` is not kept.
    InPlace(ArrayViewMutD<'a, T>),
    /// Read `sample`; append `prev_sample` and `pred_original_sample`, in row-major order, to
    /// vectors that become new arrays (nothing is written twice: the allocating calls do not
    /// zero their outputs first).
    Fresh {
        sample: ArrayViewD<'a, T>,
        prev_sample: &'a mut Vec<T>,
        pred_original_sample: &'a mut Vec<T>,
    },
}

impl<T: DdimFloat> Noise<'_, T> {
    /// The same noise restricted to `range` along axis 0 (drawn noise keeps its generator).
    pub(crate) fn item(&mut self, range: Slice) -> Noise<'_, T> {
        match self {
            Noise::Given(view) => Noise::Given(view.slice_axis(Axis(0), range)),
            Noise::Drawn(draw) => Noise::Drawn(&mut **draw),
            Noise::Zero => Noise::Zero,
        }
    }
}

impl<T> Target<'_, T> {
    /// The sample the step reads.
    pub(crate) fn sample(&self) -> ArrayViewD<'_, T> {
        match self {
            Target::Separate { sample, .. } => sample.view(),
            Target::InPlace(sample) => sample.view(),
            Target::Fresh { sample, .. } => sample.view(),
        }
    }

    /// The same target restricted to `range` along axis 0 (one batch item, say).
    ///
    /// A [`Target::Fresh`] appends: its items must be stepped in order, each once, as the
    /// per-item loops do.
    pub(crate) fn item(&mut self, range: Slice) -> Target<'_, T> {
        match self {
            Target::Separate {
                sample,
                prev_sample,
                pred_original_sample,
            } => Target::Separate {
                sample: sample.slice_axis(Axis(0), range),
                prev_sample: prev_sample.slice_axis_mut(Axis(0), range),
                pred_original_sample: pred_original_sample.slice_axis_mut(Axis(0), range),
            },
            Target::InPlace(sample) => Target::InPlace(sample.slice_axis_mut(Axis(0), range)),
            Target::Fresh {
                sample,
                prev_sample,
                pred_original_sample,
            } => Target::Fresh {
                sample: sample.slice_axis(Axis(0), range),
                prev_sample: &mut **prev_sample,
                pred_original_sample: &mut **pred_original_sample,
            },
        }
    }
}

/// A step over whole batch items: called with a part of the batch (the model output, the
/// target and the noise of the same items), it steps each item of the part in order.
pub(crate) type PerItems<'f, T> =
    dyn Fn(ArrayViewD<'_, T>, Target<'_, T>, Noise<'_, T>) + Sync + 'f;

/// Runs `per_items` over the whole batch. With the `parallel` feature, a large batch whose
/// outputs exist already and whose noise is not drawn from a generator is first halved along
/// axis 0 on the current rayon pool, down to single items (see `parallel::try_split_items`);
/// each item still runs whole on one thread, so the results are the same.
pub(crate) fn over_items<T: DdimFloat>(
    model_output: ArrayViewD<'_, T>,
    target: Target<'_, T>,
    noise: Noise<'_, T>,
    per_items: &PerItems<'_, T>,
) {
    #[cfg(feature = "parallel")]
    let Some((model_output, target, noise)) =
        parallel::try_split_items(model_output, target, noise, per_items)
    else {
        return;
    };
    per_items(model_output, target, noise);
}

/// Applies the update to every element: one read of each input, one write of each output.
///
/// The caller guarantees that all arrays have the same shape.
pub(crate) fn fused_step<T: DdimFloat>(
    u: &Update<T::Compute>,
    bounds: &X0Bounds<T::Compute>,
    model_output: ArrayViewD<'_, T>,
    target: Target<'_, T>,
    noise: Noise<'_, T>,
) {
    #[cfg(feature = "parallel")]
    let (target, noise) = match parallel::try_split(u, bounds, &model_output, target, noise) {
        Some(unsplit) => unsplit,
        None => return,
    };
    on_this_thread(u, bounds, model_output, target, noise);
}

/// The pass on the calling thread, for the best instruction set the CPU has.
fn on_this_thread<T: DdimFloat>(
    u: &Update<T::Compute>,
    bounds: &X0Bounds<T::Compute>,
    model_output: ArrayViewD<'_, T>,
    target: Target<'_, T>,
    noise: Noise<'_, T>,
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: `avx2` only requires the CPU to support AVX2, which was checked at run time
        // just above.
        #[allow(unsafe_code)]
        unsafe {
            avx2(u, bounds, model_output, target, noise)
        };
        return;
    }
    pass::portable(u, bounds, model_output, target, noise);
}

/// [`pass::portable`] compiled for AVX2: twice as many lanes per instruction as the x86-64
/// baseline (SSE2), and the same results to the bit.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn avx2<T: DdimFloat>(
    u: &Update<T::Compute>,
    bounds: &X0Bounds<T::Compute>,
    model_output: ArrayViewD<'_, T>,
    target: Target<'_, T>,
    noise: Noise<'_, T>,
) {
    pass::portable(u, bounds, model_output, target, noise);
}

/// Writes `weight_a * a + weight_b * b` into `out`, element by element, in the compute type
/// with one rounding of each result: the shape of `add_noise`
/// (`sqrt(alpha_bar) * x0 + sqrt(1 - alpha_bar) * eps`) and `get_velocity`.
pub(crate) fn weighted_sum<T: DdimFloat>(
    weight_a: T::Compute,
    a: ArrayViewD<'_, T>,
    weight_b: T::Compute,
    b: ArrayViewD<'_, T>,
    out: ArrayViewMutD<'_, T>,
) {
    Zip::from(out).and(&a).and(&b).for_each(|o, &a, &b| {
        *o = T::narrow(weight_a * a.widen() + weight_b * b.widen());
    });
}

#[cfg(test)]
mod tests {
    use super::update::{NoiseLevel, PrevWeights};
    use super::*;
    use crate::config::PredictionType;
    use ndarray::Array2;

    fn update(prediction: PredictionType, eps_from_clamped_x0: bool) -> Update<f32> {
        Update {
            prediction,
            level: NoiseLevel {
                sqrt_alpha_bar: 0.6,
                sqrt_one_minus_alpha_bar: 0.8,
            },
            eps_from_clamped_x0,
            prev: PrevWeights {
                x0: 0.8,
                eps: 0.55,
                noise: 0.25,
            },
        }
    }

    /// The dispatched pass (AVX2 where the CPU has it) and the portable one agree to the bit,
    /// for every prediction type, every combination of the skippable operations and every
    /// noise kind.
    #[test]
    fn dispatched_and_portable_passes_agree_to_the_bit() {
        let shape = (3, 1000);
        let m = Array2::from_shape_fn(shape, |(i, j)| ((i * 1000 + j) as f32 * 0.37).sin() * 3.0);
        let s = Array2::from_shape_fn(shape, |(i, j)| ((i * 7 + j) as f32 * 0.11).cos());
        let z = Array2::from_shape_fn(shape, |(i, j)| ((i + j * 3) as f32 * 0.05).sin());
        let predictions = [
            PredictionType::Epsilon,
            PredictionType::Sample,
            PredictionType::VPrediction,
        ];
        for prediction in predictions {
            for (eps_from_x0, bounded) in
                [(false, false), (true, false), (false, true), (true, true)]
            {
                let u = update(prediction, eps_from_x0);
                let bounds = if bounded {
                    X0Bounds::symmetric(1.2)
                } else {
                    X0Bounds::unbounded()
                };
                let run = |portable: bool, given: bool| {
                    let (mut p, mut x) = (Array2::zeros(shape), Array2::zeros(shape));
                    let target = Target::Separate {
                        sample: s.view().into_dyn(),
                        prev_sample: p.view_mut().into_dyn(),
                        pred_original_sample: x.view_mut().into_dyn(),
                    };
                    let mut n = 0.0f32;
                    let mut draw = |block: &mut [f32]| {
                        for v in block {
                            n += 0.001;
                            *v = n;
                        }
                    };
                    let noise = if given {
                        Noise::Given(z.view().into_dyn())
                    } else {
                        Noise::Drawn(&mut draw)
                    };
                    let m = m.view().into_dyn();
                    if portable {
                        pass::portable(&u, &bounds, m, target, noise);
                    } else {
                        fused_step(&u, &bounds, m, target, noise);
                    }
                    (p, x)
                };
                for given in [false, true] {
                    let (a, b) = (run(false, given), run(true, given));
                    let bits = |v: &Array2<f32>| v.mapv(f32::to_bits);
                    let case = format!("{prediction:?}, eps from x0 {eps_from_x0}, bounded {bounded}, given {given}");
                    assert_eq!(bits(&a.0), bits(&b.0), "prev, {case}");
                    assert_eq!(bits(&a.1), bits(&b.1), "x0, {case}");
                }
            }
        }
    }

    /// Noise drawn block by block on the contiguous path and element by element on the strided
    /// path gives the same stream and the same results.
    #[test]
    fn drawn_noise_is_consumed_in_row_major_order_on_every_path() {
        let shape = (4, 300);
        let m = Array2::from_shape_fn(shape, |(i, j)| ((i * 300 + j) as f32 * 0.21).sin());
        let s = Array2::from_shape_fn(shape, |(i, j)| ((i * 3 + j) as f32 * 0.17).cos());
        let u = update(PredictionType::Epsilon, false);
        let run = |s: ndarray::ArrayView2<'_, f32>, m: ndarray::ArrayView2<'_, f32>| {
            let mut out = s.to_owned();
            let mut n = 0u32;
            let mut draw = |block: &mut [f32]| {
                for v in block {
                    n += 1;
                    *v = n as f32 * 1e-3;
                }
            };
            fused_step(
                &u,
                &X0Bounds::unbounded(),
                m.into_dyn(),
                Target::InPlace(out.view_mut().into_dyn()),
                Noise::Drawn(&mut draw),
            );
            out
        };
        let contiguous = run(s.view(), m.view());
        let (st, mt) = (s.t().to_owned(), m.t().to_owned());
        let strided = run(st.t(), mt.t());
        assert_eq!(contiguous.mapv(f32::to_bits), strided.mapv(f32::to_bits));
    }
}
