//! The optional multi-threaded pass (cargo feature `parallel`): a large contiguous step split
//! into parts that run on rayon's thread pool, each part the single-threaded pass over its own
//! slices.
//!
//! The parts run in the pool the caller is in: rayon's global pool (sized by
//! `RAYON_NUM_THREADS`, else one thread per core), or the caller's own pool when the step runs
//! inside `pool.install(..)`. A pool of one thread does not split.
//!
//! Splitting never changes a result: every element's update reads only that element's inputs,
//! and the pass computes an element the same way wherever the part it falls in starts (the
//! blocks of the contiguous path gather noise and widen values element by element). Noise drawn
//! from a generator is the one exception in principle, since its values must follow the
//! row-major order of the elements; a step with drawn noise therefore stays on the calling
//! thread, in order. So do the allocating calls, which fill their new arrays as they go.
//!
//! A step that goes item by item (dynamic thresholding: each item's threshold, then its pass)
//! is split by whole items instead ([`try_split_items`]); an item's threshold and pass run on
//! one thread, with that thread's scratch buffer, as they would on the calling thread.

use ndarray::{ArrayView1, ArrayViewD, ArrayViewMut1, ArrayViewMutD, Axis};

use super::{on_this_thread, Noise, PerItems, Target, Update, X0Bounds};
use crate::DdimFloat;

/// The target and noise of a pass that stays on the calling thread.
type Unsplit<'t, 'n, T> = (Target<'t, T>, Noise<'n, T>);

/// Arrays smaller than this stay on the calling thread.
///
/// Measured on 2 cores (`bench/benches/step.rs`, `parallel` group, a one-thread pool against a
/// two-thread one, machine shared with other work): splitting a 16x3x256x256 step (three
/// million elements, memory-bound) made it 1.4-2.3 times faster; an 8x4x128x128 one (half a
/// million, cache-resident) gained nothing (0.9-1.17x), a 1x4x128x128 one between 0.98x and
/// 2x. The threshold sits between the memory-bound and the cache-resident shapes.
const MIN_ELEMENTS: usize = 1 << 20;

/// Batches smaller than this step their items on the calling thread (per-item steps:
/// thresholding; see [`try_split_items`]).
///
/// Measured on 2 cores with the pool's threads awake (a loop of steps): handing items to a
/// second thread gained 1.4-1.9x from two 4,096-element items up, 1.7x at 8x4x128x128 and
/// 1.8x at 16x3x256x256. In a sampling loop the network runs between steps and the pool's
/// threads may be asleep, and waking one costs tens of microseconds; from 2^17 elements
/// (2x4x128x128: 80 µs of thresholding on one thread) the split pays for that.
const MIN_BATCH_ELEMENTS: usize = 1 << 17;

/// The smallest part worth handing to another thread.
const MIN_PART: usize = 1 << 15;

/// Parts per pool thread, so that a thread that is busy elsewhere delays only a small part.
const PARTS_PER_THREAD: usize = 4;

/// The inputs of one part: the model output, and the given noise if there is any.
#[derive(Clone, Copy)]
struct Inputs<'a, T> {
    model_output: &'a [T],
    noise: Option<&'a [T]>,
}

impl<'a, T: DdimFloat> Inputs<'a, T> {
    /// The first `mid` elements and the rest.
    fn split_at(self, mid: usize) -> (Self, Self) {
        let (m0, m1) = self.model_output.split_at(mid);
        let (z0, z1) = match self.noise {
            Some(z) => {
                let (z0, z1) = z.split_at(mid);
                (Some(z0), Some(z1))
            }
            None => (None, None),
        };
        (
            Inputs {
                model_output: m0,
                noise: z0,
            },
            Inputs {
                model_output: m1,
                noise: z1,
            },
        )
    }

    /// The pass's view of the model output, and the noise of this part.
    fn views(self) -> (ArrayViewD<'a, T>, Noise<'a, T>) {
        let noise = match self.noise {
            Some(z) => Noise::Given(ArrayView1::from(z).into_dyn()),
            None => Noise::Zero,
        };
        (ArrayView1::from(self.model_output).into_dyn(), noise)
    }
}

/// Runs the pass on the current rayon pool when the arrays are large, contiguous and row-major,
/// the outputs exist already (not new arrays being filled) and the noise is not drawn from a
/// generator (whose draws must stay in order); then returns `None`. Otherwise hands `target` and `noise` back untouched.
pub(super) fn try_split<'t, 'n, T: DdimFloat>(
    u: &Update<T::Compute>,
    bounds: &X0Bounds<T::Compute>,
    model_output: &ArrayViewD<'_, T>,
    mut target: Target<'t, T>,
    noise: Noise<'n, T>,
) -> Option<Unsplit<'t, 'n, T>> {
    let len = model_output.len();
    if len < MIN_ELEMENTS {
        return Some((target, noise));
    }
    let threads = rayon::current_num_threads();
    if threads < 2 {
        return Some((target, noise));
    }
    let z = match &noise {
        Noise::Given(z) => match z.as_slice() {
            Some(z) => Some(z),
            None => return Some((target, noise)),
        },
        Noise::Zero => None,
        Noise::Drawn(_) => return Some((target, noise)),
    };
    let Some(m) = model_output.as_slice() else {
        return Some((target, noise));
    };
    let inputs = Inputs {
        model_output: m,
        noise: z,
    };
    let part = len.div_ceil(threads * PARTS_PER_THREAD).max(MIN_PART);
    match &mut target {
        Target::Separate {
            sample,
            prev_sample,
            pred_original_sample,
        } => {
            let (Some(s), Some(p), Some(x)) = (
                sample.as_slice(),
                prev_sample.as_slice_mut(),
                pred_original_sample.as_slice_mut(),
            ) else {
                return Some((target, noise));
            };
            separate(u, bounds, part, inputs, s, p, x);
        }
        Target::InPlace(sample) => {
            let Some(s) = sample.as_slice_mut() else {
                return Some((target, noise));
            };
            in_place(u, bounds, part, inputs, s);
        }
        // New arrays are filled on the calling thread: the parts would need their outputs
        // zero-filled first, and at 16x3x256x256 that cost more (2.35 ms) than splitting saved
        // (1.93 ms on one thread).
        Target::Fresh { .. } => return Some((target, noise)),
    }
    None
}

/// Halves the arrays until a half holds at most `part` elements, running the halves with
/// `rayon::join`; each part is the single-threaded pass.
fn separate<T: DdimFloat>(
    u: &Update<T::Compute>,
    bounds: &X0Bounds<T::Compute>,
    part: usize,
    inputs: Inputs<'_, T>,
    sample: &[T],
    prev_sample: &mut [T],
    pred_original_sample: &mut [T],
) {
    let len = sample.len();
    if len <= part {
        let (m, noise) = inputs.views();
        let target = Target::Separate {
            sample: ArrayView1::from(sample).into_dyn(),
            prev_sample: ArrayViewMut1::from(prev_sample).into_dyn(),
            pred_original_sample: ArrayViewMut1::from(pred_original_sample).into_dyn(),
        };
        on_this_thread(u, bounds, m, target, noise);
        return;
    }
    let mid = len / 2;
    let (i0, i1) = inputs.split_at(mid);
    let (s0, s1) = sample.split_at(mid);
    let (p0, p1) = prev_sample.split_at_mut(mid);
    let (x0, x1) = pred_original_sample.split_at_mut(mid);
    rayon::join(
        || separate(u, bounds, part, i0, s0, p0, x0),
        || separate(u, bounds, part, i1, s1, p1, x1),
    );
}

/// [`separate`] for a step that overwrites the sample.
fn in_place<T: DdimFloat>(
    u: &Update<T::Compute>,
    bounds: &X0Bounds<T::Compute>,
    part: usize,
    inputs: Inputs<'_, T>,
    sample: &mut [T],
) {
    let len = sample.len();
    if len <= part {
        let (m, noise) = inputs.views();
        let target = Target::InPlace(ArrayViewMut1::from(sample).into_dyn());
        on_this_thread(u, bounds, m, target, noise);
        return;
    }
    let mid = len / 2;
    let (i0, i1) = inputs.split_at(mid);
    let (s0, s1) = sample.split_at_mut(mid);
    rayon::join(
        || in_place(u, bounds, part, i0, s0),
        || in_place(u, bounds, part, i1, s1),
    );
}

/// Outputs that a batch can be split into, item by item.
enum Outputs<'t, T> {
    /// As [`Target::Separate`].
    Separate {
        sample: ArrayViewD<'t, T>,
        prev_sample: ArrayViewMutD<'t, T>,
        pred_original_sample: ArrayViewMutD<'t, T>,
    },
    /// As [`Target::InPlace`].
    InPlace(ArrayViewMutD<'t, T>),
}

impl<'t, T> Outputs<'t, T> {
    /// The first `mid` items and the rest.
    fn split_at(self, mid: usize) -> (Self, Self) {
        match self {
            Outputs::Separate {
                sample,
                prev_sample,
                pred_original_sample,
            } => {
                let (s0, s1) = sample.split_at(Axis(0), mid);
                let (p0, p1) = prev_sample.split_at(Axis(0), mid);
                let (x0, x1) = pred_original_sample.split_at(Axis(0), mid);
                let part = |sample, prev_sample, pred_original_sample| Outputs::Separate {
                    sample,
                    prev_sample,
                    pred_original_sample,
                };
                (part(s0, p0, x0), part(s1, p1, x1))
            }
            Outputs::InPlace(sample) => {
                let (s0, s1) = sample.split_at(Axis(0), mid);
                (Outputs::InPlace(s0), Outputs::InPlace(s1))
            }
        }
    }

    /// The target of a pass over these outputs.
    fn target(self) -> Target<'t, T> {
        match self {
            Outputs::Separate {
                sample,
                prev_sample,
                pred_original_sample,
            } => Target::Separate {
                sample,
                prev_sample,
                pred_original_sample,
            },
            Outputs::InPlace(sample) => Target::InPlace(sample),
        }
    }
}

/// Runs `per_items` over halves of the batch on the current rayon pool, down to single items,
/// when the batch has two items or more and [`MIN_BATCH_ELEMENTS`] elements or more, the pool
/// more than one thread, the outputs exist already and the noise is not drawn from a generator;
/// then returns `None`. Otherwise hands the arrays back untouched, for the calling thread.
pub(super) fn try_split_items<'m, 't, 'n, T: DdimFloat>(
    model_output: ArrayViewD<'m, T>,
    target: Target<'t, T>,
    noise: Noise<'n, T>,
    per_items: &PerItems<'_, T>,
) -> Option<(ArrayViewD<'m, T>, Target<'t, T>, Noise<'n, T>)> {
    let worth = model_output.len_of(Axis(0)) >= 2
        && model_output.len() >= MIN_BATCH_ELEMENTS
        && rayon::current_num_threads() >= 2
        && !matches!(noise, Noise::Drawn(_));
    if !worth {
        return Some((model_output, target, noise));
    }
    let noise = match noise {
        Noise::Given(z) => Some(z),
        _ => None,
    };
    let outputs = match target {
        Target::Separate {
            sample,
            prev_sample,
            pred_original_sample,
        } => Outputs::Separate {
            sample,
            prev_sample,
            pred_original_sample,
        },
        Target::InPlace(sample) => Outputs::InPlace(sample),
        // New arrays are filled in order, on the calling thread.
        fresh @ Target::Fresh { .. } => {
            return Some((model_output, fresh, noise.map_or(Noise::Zero, Noise::Given)))
        }
    };
    split_items(model_output, outputs, noise, per_items);
    None
}

/// Halves the batch along axis 0 until a part holds one item, running the halves with
/// `rayon::join`; `noise` is the given noise, if any.
fn split_items<T: DdimFloat>(
    model_output: ArrayViewD<'_, T>,
    outputs: Outputs<'_, T>,
    noise: Option<ArrayViewD<'_, T>>,
    per_items: &PerItems<'_, T>,
) {
    let count = model_output.len_of(Axis(0));
    if count < 2 {
        let noise = noise.map_or(Noise::Zero, Noise::Given);
        per_items(model_output, outputs.target(), noise);
        return;
    }
    let mid = count / 2;
    let (m0, m1) = model_output.split_at(Axis(0), mid);
    let (o0, o1) = outputs.split_at(mid);
    let (z0, z1) = match noise {
        Some(z) => {
            let (z0, z1) = z.split_at(Axis(0), mid);
            (Some(z0), Some(z1))
        }
        None => (None, None),
    };
    rayon::join(
        || split_items(m0, o0, z0, per_items),
        || split_items(m1, o1, z1, per_items),
    );
}
