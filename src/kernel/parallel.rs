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

use ndarray::{ArrayView1, ArrayViewD, ArrayViewMut1};

use super::{on_this_thread, Noise, Target, Update, X0Bounds};
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
