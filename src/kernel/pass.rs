//! The single pass that applies [`element`] to whole arrays: over plain slices, block by
//! block, when every array is contiguous and row-major (loops the compiler vectorises), and
//! through `Zip` over dynamic-dimension views otherwise. Each value read is widened to the
//! compute type and each result narrowed to the element type, once ([`store`]).

use ndarray::Zip;

use super::update::{element, with_prediction, Update, X0Bounds};
use super::{Noise, Target};
use crate::float::{Arithmetic, Precision};
use crate::DdimFloat;

/// The pass for whatever instruction set the caller was compiled for; `#[inline(always)]` so
/// that the AVX2 copy in [`super`] gets its own code.
#[inline(always)]
pub(super) fn portable<T: DdimFloat>(
    u: &Update<T::Compute>,
    bounds: &X0Bounds<T::Compute>,
    model_output: ndarray::ArrayViewD<'_, T>,
    target: Target<'_, T>,
    noise: Noise<'_, T>,
) {
    let bound_x0 = !bounds.is_unbounded();
    // One instance of the loop per combination of the formulas' terms.
    macro_rules! run {
        ($p:ty, $eps_from_x0:literal, $bound:literal) => {
            for_each_element(model_output, target, noise, |s, m, z| {
                element::<T::Compute, $p, $eps_from_x0, $bound>(u, bounds, s, m, z)
            })
        };
    }
    with_prediction!(u.prediction, P => match (u.eps_from_clamped_x0, bound_x0) {
        (false, false) => run!(P, false, false),
        (false, true) => run!(P, false, true),
        (true, false) => run!(P, true, false),
        (true, true) => run!(P, true, true),
    })
}

/// Elements per block of the contiguous path. The noise of a block is gathered into a small
/// buffer first (drawn from the generator, widened from given 16-bit noise, or zeros), so that
/// the arithmetic over every block is one vectorised loop even when the noise comes from a
/// generator one value at a time.
pub(super) const BLOCK: usize = 256;

/// A generator that fills a block of noise at a time.
type Draw<'a, C> = &'a mut dyn FnMut(&mut [C]);

/// The noise of the contiguous path, handed out block by block in the compute type.
struct NoiseBlocks<'a, T: DdimFloat> {
    /// Given noise not yet handed out.
    given: Option<&'a [T]>,
    /// The generator of drawn noise.
    draw: Option<Draw<'a, T::Compute>>,
    /// Drawn or widened noise of the current block, or zeros.
    buffer: [T::Compute; BLOCK],
}

impl<'a, T: DdimFloat> NoiseBlocks<'a, T> {
    /// `None` when given noise is not one contiguous row-major slice.
    fn new(noise: &'a mut Noise<'_, T>) -> Option<Self> {
        let (given, draw) = match noise {
            Noise::Given(z) => (Some(z.as_slice()?), None),
            Noise::Drawn(draw) => (None, Some(&mut **draw as Draw<'a, T::Compute>)),
            Noise::Zero => (None, None),
        };
        Some(NoiseBlocks {
            given,
            draw,
            buffer: [T::Compute::ZERO; BLOCK],
        })
    }

    /// Whether there is no noise at all (deterministic steps).
    fn is_zero(&self) -> bool {
        self.given.is_none() && self.draw.is_none()
    }

    /// The noise of the next `len <= BLOCK` elements.
    #[inline(always)]
    fn next(&mut self, len: usize) -> &[T::Compute] {
        if let Some(given) = &mut self.given {
            let (head, tail) = given.split_at(len.min(given.len()));
            *given = tail;
            // `f32` and `f64` noise is used where it lies; 16-bit noise is widened first.
            if let Some(same) = T::as_compute(head) {
                return same;
            }
            let block = &mut self.buffer[..head.len().min(BLOCK)];
            for (slot, &z) in block.iter_mut().zip(head) {
                *slot = z.widen();
            }
            return block;
        }
        let block = &mut self.buffer[..len.min(BLOCK)];
        if let Some(draw) = &mut self.draw {
            draw(block);
        }
        block
    }
}

/// Runs `element(sample, model_output, noise) -> (prev, x0)` in the compute type over every
/// element and stores the results in `target`.
///
/// The closures below capture nothing but `element` and the noise: a local captured by
/// reference (a `zero` variable, a helper closure around `element`) was enough to stop the
/// contiguous loops from vectorising (a deterministic `f32` step became six times slower).
#[inline(always)]
fn for_each_element<T: DdimFloat>(
    model_output: ndarray::ArrayViewD<'_, T>,
    target: Target<'_, T>,
    mut noise: Noise<'_, T>,
    element: impl Fn(T::Compute, T::Compute, T::Compute) -> (T::Compute, T::Compute),
) {
    let m = &model_output;
    match target {
        Target::Fresh {
            sample,
            prev_sample,
            pred_original_sample,
        } => append_each_element(
            model_output,
            sample,
            prev_sample,
            pred_original_sample,
            noise,
            element,
        ),
        Target::Separate {
            sample: s,
            prev_sample: mut p,
            pred_original_sample: mut x,
        } => {
            if let (Some(ps), Some(xs), Some(ss), Some(ms), Some(mut zs)) = (
                p.as_slice_mut(),
                x.as_slice_mut(),
                s.as_slice(),
                m.as_slice(),
                NoiseBlocks::new(&mut noise),
            ) {
                if matches!(T::PRECISION, Precision::Reduced) {
                    // 16-bit elements: widened and narrowed a block at a time.
                    let (mut bs, mut bm) = ([T::Compute::ZERO; BLOCK], [T::Compute::ZERO; BLOCK]);
                    let (mut bp, mut bx) = ([T::Compute::ZERO; BLOCK], [T::Compute::ZERO; BLOCK]);
                    let blocks = ps.chunks_mut(BLOCK).zip(xs.chunks_mut(BLOCK));
                    for ((p, x), (s, m)) in blocks.zip(ss.chunks(BLOCK).zip(ms.chunks(BLOCK))) {
                        let n = s.len().min(BLOCK);
                        let (bs, bm) = (&mut bs[..n], &mut bm[..n]);
                        let (bp, bx) = (&mut bp[..n], &mut bx[..n]);
                        T::widen_slice(s, bs);
                        T::widen_slice(m, bm);
                        let z = zs.next(n);
                        let outputs = bp.iter_mut().zip(bx.iter_mut());
                        for ((p, x), ((&s, &m), &z)) in outputs.zip(bs.iter().zip(&*bm).zip(z)) {
                            (*p, *x) = element(s, m, z);
                        }
                        T::narrow_slice(bp, p);
                        T::narrow_slice(bx, x);
                    }
                    return;
                }
                if zs.is_zero() {
                    // No noise stream at all: the leanest loop.
                    for ((p, x), (&s, &m)) in ps.iter_mut().zip(xs).zip(ss.iter().zip(ms)) {
                        store(p, x, element(s.widen(), m.widen(), T::Compute::ZERO));
                    }
                    return;
                }
                let blocks = ps.chunks_mut(BLOCK).zip(xs.chunks_mut(BLOCK));
                for ((p, x), (s, m)) in blocks.zip(ss.chunks(BLOCK).zip(ms.chunks(BLOCK))) {
                    let z = zs.next(s.len());
                    for ((p, x), ((&s, &m), &z)) in p.iter_mut().zip(x).zip(s.iter().zip(m).zip(z))
                    {
                        store(p, x, element(s.widen(), m.widen(), z));
                    }
                }
                return;
            }
            let zip = Zip::from(&mut p).and(&mut x).and(&s).and(m);
            match noise {
                Noise::Given(z) => zip.and(&z).for_each(|p, x, &s, &m, &z| {
                    store(p, x, element(s.widen(), m.widen(), z.widen()))
                }),
                // Drawn noise follows the row-major order of the elements whatever the memory
                // layout (`Zip` visits them in memory order), so iterate logically.
                Noise::Drawn(draw) => {
                    let outputs = p.iter_mut().zip(x.iter_mut());
                    for ((p, x), (&s, &m)) in outputs.zip(s.iter().zip(m.iter())) {
                        store(p, x, element(s.widen(), m.widen(), draw_one(draw)));
                    }
                }
                Noise::Zero => zip.for_each(|p, x, &s, &m| {
                    store(p, x, element(s.widen(), m.widen(), T::Compute::ZERO))
                }),
            }
        }
        Target::InPlace(mut s) => {
            if let (Some(ss), Some(ms), Some(mut zs)) =
                (s.as_slice_mut(), m.as_slice(), NoiseBlocks::new(&mut noise))
            {
                if matches!(T::PRECISION, Precision::Reduced) {
                    // 16-bit elements: widened and narrowed a block at a time.
                    let (mut bs, mut bm) = ([T::Compute::ZERO; BLOCK], [T::Compute::ZERO; BLOCK]);
                    let mut bp = [T::Compute::ZERO; BLOCK];
                    for (s, m) in ss.chunks_mut(BLOCK).zip(ms.chunks(BLOCK)) {
                        let n = s.len().min(BLOCK);
                        let (bs, bm, bp) = (&mut bs[..n], &mut bm[..n], &mut bp[..n]);
                        T::widen_slice(s, bs);
                        T::widen_slice(m, bm);
                        let z = zs.next(n);
                        for (p, ((&s, &m), &z)) in bp.iter_mut().zip(bs.iter().zip(&*bm).zip(z)) {
                            *p = element(s, m, z).0;
                        }
                        T::narrow_slice(bp, s);
                    }
                    return;
                }
                if zs.is_zero() {
                    for (s, &m) in ss.iter_mut().zip(ms) {
                        *s = T::narrow(element(s.widen(), m.widen(), T::Compute::ZERO).0);
                    }
                    return;
                }
                for (s, m) in ss.chunks_mut(BLOCK).zip(ms.chunks(BLOCK)) {
                    let z = zs.next(s.len());
                    for ((s, &m), &z) in s.iter_mut().zip(m).zip(z) {
                        *s = T::narrow(element(s.widen(), m.widen(), z).0);
                    }
                }
                return;
            }
            let zip = Zip::from(&mut s).and(m);
            match noise {
                Noise::Given(z) => zip.and(&z).for_each(|s, &m, &z| {
                    *s = T::narrow(element(s.widen(), m.widen(), z.widen()).0)
                }),
                Noise::Drawn(draw) => {
                    for (s, &m) in s.iter_mut().zip(m.iter()) {
                        *s = T::narrow(element(s.widen(), m.widen(), draw_one(draw)).0);
                    }
                }
                Noise::Zero => zip.for_each(|s, &m| {
                    *s = T::narrow(element(s.widen(), m.widen(), T::Compute::ZERO).0)
                }),
            }
        }
    }
}

/// [`for_each_element`] for a [`Target::Fresh`]: the results of each block are computed into
/// small buffers and appended to the output vectors, so that fresh outputs are written once.
/// Other layouts (and given noise that is not contiguous) append element by element in
/// row-major order.
#[inline(always)]
fn append_each_element<T: DdimFloat>(
    model_output: ndarray::ArrayViewD<'_, T>,
    sample: ndarray::ArrayViewD<'_, T>,
    prev: &mut Vec<T>,
    x0: &mut Vec<T>,
    mut noise: Noise<'_, T>,
    element: impl Fn(T::Compute, T::Compute, T::Compute) -> (T::Compute, T::Compute),
) {
    let (m, s) = (&model_output, &sample);
    if let (Some(ss), Some(ms), Some(mut zs)) =
        (s.as_slice(), m.as_slice(), NoiseBlocks::new(&mut noise))
    {
        if matches!(T::PRECISION, Precision::Reduced) {
            // 16-bit elements: widened and narrowed a block at a time, through buffers.
            let (mut bp, mut bx) = ([T::ZERO; BLOCK], [T::ZERO; BLOCK]);
            let (mut ws, mut wm) = ([T::Compute::ZERO; BLOCK], [T::Compute::ZERO; BLOCK]);
            let (mut wp, mut wx) = ([T::Compute::ZERO; BLOCK], [T::Compute::ZERO; BLOCK]);
            for (s, m) in ss.chunks(BLOCK).zip(ms.chunks(BLOCK)) {
                let n = s.len().min(BLOCK);
                let (ws, wm) = (&mut ws[..n], &mut wm[..n]);
                let (wp, wx) = (&mut wp[..n], &mut wx[..n]);
                T::widen_slice(s, ws);
                T::widen_slice(m, wm);
                let z = zs.next(n);
                let outputs = wp.iter_mut().zip(wx.iter_mut());
                for ((p, x), ((&s, &m), &z)) in outputs.zip(ws.iter().zip(&*wm).zip(z)) {
                    (*p, *x) = element(s, m, z);
                }
                let (bp, bx) = (&mut bp[..n], &mut bx[..n]);
                T::narrow_slice(wp, bp);
                T::narrow_slice(wx, bx);
                prev.extend_from_slice(bp);
                x0.extend_from_slice(bx);
            }
            return;
        }
        let len = ss.len();
        let (ss, ms) = (&ss[..len], &ms[..len]);
        prev.reserve(len);
        x0.reserve(len);
        let (start_p, start_x) = (prev.len(), x0.len());
        let (Some(p), Some(x)) = (
            prev.spare_capacity_mut().get_mut(..len),
            x0.spare_capacity_mut().get_mut(..len),
        ) else {
            return; // Unreachable: both vectors were just given room for `len` more values.
        };
        // Every slot `p[i]`, `x[i]` for `i < len` is written below, exactly once.
        if zs.is_zero() {
            for i in 0..len {
                let (prev, x0) = element(ss[i].widen(), ms[i].widen(), T::Compute::ZERO);
                p[i].write(T::narrow(prev));
                x[i].write(T::narrow(x0));
            }
        } else {
            // `chunks_mut` of slices of equal length cover every index with chunks of equal
            // lengths `n`; each chunk's loop writes its `n` slots.
            let blocks = p.chunks_mut(BLOCK).zip(x.chunks_mut(BLOCK));
            for ((p, x), (s, m)) in blocks.zip(ss.chunks(BLOCK).zip(ms.chunks(BLOCK))) {
                let n = p.len();
                let (x, s, m) = (&mut x[..n], &s[..n], &m[..n]);
                let z = &zs.next(n)[..n];
                for i in 0..n {
                    let (prev, x0) = element(s[i].widen(), m[i].widen(), z[i]);
                    p[i].write(T::narrow(prev));
                    x[i].write(T::narrow(x0));
                }
            }
        }
        // SAFETY: `p` and `x` are the first `len` spare slots of `prev` and `x0` (their
        // capacity was reserved above), and the loops above wrote every one of them with an
        // initialised value (any short slice would have panicked at its slicing, before
        // this point). So the first `start + len` elements of each vector are initialised,
        // and `start + len` is within capacity.
        #[allow(unsafe_code)]
        unsafe {
            prev.set_len(start_p + len);
            x0.set_len(start_x + len);
        }
        return;
    }
    let inputs = s.iter().zip(m.iter());
    match noise {
        Noise::Given(z) => {
            for ((&s, &m), &z) in inputs.zip(z.iter()) {
                let (p, x) = element(s.widen(), m.widen(), z.widen());
                prev.push(T::narrow(p));
                x0.push(T::narrow(x));
            }
        }
        Noise::Drawn(draw) => {
            for (&s, &m) in inputs {
                let (p, x) = element(s.widen(), m.widen(), draw_one(draw));
                prev.push(T::narrow(p));
                x0.push(T::narrow(x));
            }
        }
        Noise::Zero => {
            for (&s, &m) in inputs {
                let (p, x) = element(s.widen(), m.widen(), T::Compute::ZERO);
                prev.push(T::narrow(p));
                x0.push(T::narrow(x));
            }
        }
    }
}

/// Stores the results of one element, each rounded once to the element type.
#[inline(always)]
fn store<T: DdimFloat>(prev: &mut T, x0: &mut T, (p, x): (T::Compute, T::Compute)) {
    *prev = T::narrow(p);
    *x0 = T::narrow(x);
}

/// One value from a block-filling generator.
#[inline(always)]
fn draw_one<C: Arithmetic>(draw: &mut dyn FnMut(&mut [C])) -> C {
    let mut one = [C::ZERO];
    draw(&mut one);
    one[0]
}
