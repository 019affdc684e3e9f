//! The optional multi-threaded pass (cargo feature `parallel`): a large contiguous step split
//! into one part per core, each part the single-threaded pass over its own slices.

use ndarray::{ArrayView1, ArrayViewD, ArrayViewMut1};

use super::{on_this_thread, Noise, Target, Update, X0Bounds};
use crate::DdimFloat;

/// The target and noise of a pass that stays on the calling thread.
type Unsplit<'t, 'n, T> = (Target<'t, T>, Noise<'n, T>);

/// Given noise of one part, or none.
fn noise_of<T: DdimFloat>(z: Option<&[T]>) -> Noise<'_, T> {
    match z {
        Some(z) => Noise::Given(ArrayView1::from(z).into_dyn()),
        None => Noise::Zero,
    }
}

/// Arrays smaller than this stay on one thread: measured on 2 cores, splitting an
/// 8x4x128x128 step (half a million elements, cache-resident) was slower, a 16x3x256x256
/// one (three million, memory-bound) 1.7 times faster.
const MIN_ELEMENTS: usize = 1 << 21;

/// Runs the pass on all available cores when the arrays are large, contiguous and row-major
/// and the noise is not drawn from a generator (whose draws must stay in order); then returns
/// `None`. Otherwise hands `target` and `noise` back untouched.
pub(super) fn try_split<'t, 'n, T: DdimFloat>(
    u: &Update<T::Compute>,
    bounds: &X0Bounds<T::Compute>,
    model_output: &ArrayViewD<'_, T>,
    mut target: Target<'t, T>,
    noise: Noise<'n, T>,
) -> Option<Unsplit<'t, 'n, T>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let len = model_output.len();
    if threads < 2 || len < MIN_ELEMENTS {
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
    let chunk = len.div_ceil(threads);
    let zs = |i: usize| z.map(|z| z.chunks(chunk).nth(i).unwrap_or(&[]));
    let run = |m: &[T], target: Target<'_, T>, z: Option<&[T]>| {
        on_this_thread(
            u,
            bounds,
            ArrayView1::from(m).into_dyn(),
            target,
            noise_of(z),
        );
    };
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
            std::thread::scope(|scope| {
                let parts = p.chunks_mut(chunk).zip(x.chunks_mut(chunk));
                let inputs = s.chunks(chunk).zip(m.chunks(chunk));
                for (i, ((p, x), (s, m))) in parts.zip(inputs).enumerate() {
                    let part = Target::Separate {
                        sample: ArrayView1::from(s).into_dyn(),
                        prev_sample: ArrayViewMut1::from(p).into_dyn(),
                        pred_original_sample: ArrayViewMut1::from(x).into_dyn(),
                    };
                    scope.spawn(move || run(m, part, zs(i)));
                }
            });
        }
        Target::InPlace(sample) => {
            let Some(s) = sample.as_slice_mut() else {
                return Some((target, noise));
            };
            std::thread::scope(|scope| {
                for (i, (s, m)) in s.chunks_mut(chunk).zip(m.chunks(chunk)).enumerate() {
                    let part = Target::InPlace(ArrayViewMut1::from(s).into_dyn());
                    scope.spawn(move || run(m, part, zs(i)));
                }
            });
        }
    }
    None
}
