//! The DDIM update of one element, and the single pass that applies it to whole arrays.
//!
//! Every flavour of step (three prediction types, clipping or thresholding, re-derived noise,
//! eta with or without noise) is the same three lines per element,
//!
//! ```text
//! x0   = clamp((a*sample + b*model_output) / q, lo, hi) / r
//! eps  = (c*sample + d*model_output + h*x0) / u
//! prev = e*x0 + f*eps + g*noise
//! ```
//!
//! with scalars that depend only on the timestep and the options; the scheduler computes them,
//! this module applies them in one pass that reads each input once and writes each output once.
//!
//! Each step uses only the terms its prediction type has (the rest are left out, not multiplied
//! by zero), and divides where the reference divides: every formula of the reference is
//! evaluated with the same operations in the same order, so a float32 step rounds exactly as the
//! reference's does, and non-finite values travel as they do there.

use ndarray::{ArrayView, ArrayViewMut, Axis, Dimension, Slice, Zip};

use crate::DdimFloat;

/// Which of the general formulas' terms a step has. Absent terms are left out rather than
/// multiplied by zero, so that infinities and NaN travel exactly as in the reference (where
/// `0 * inf` would make a NaN the reference never computes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
    /// `x0 = (sample + b*output) / q`, `eps = output`.
    Epsilon,
    /// `x0 = output`, `eps = (sample + d*output) / u`.
    Sample,
    /// `x0 = a*sample + b*output`, `eps = c*sample + d*output`.
    Velocity,
}

/// The per-timestep scalars of one DDIM update (see the module docs for the formulas).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct StepCoefficients<T> {
    /// Which terms the formulas have.
    pub form: Form,
    /// Whether `eps` is re-derived from the clamped `x0`: `eps = (sample + h*x0) / u`.
    pub eps_from_clamped_x0: bool,
    /// `a`: weight of `sample` in the raw `x0`.
    pub x0_from_sample: T,
    /// `b`: weight of `model_output` in the raw `x0`.
    pub x0_from_output: T,
    /// `q`: divisor of the raw `x0`.
    pub x0_divisor: T,
    /// `c`: weight of `sample` in `eps`.
    pub eps_from_sample: T,
    /// `d`: weight of `model_output` in `eps`.
    pub eps_from_output: T,
    /// `h`: weight of the (clamped) `x0` in `eps`.
    pub eps_from_x0: T,
    /// `u`: divisor of `eps`.
    pub eps_divisor: T,
    /// `e`: weight of `x0` in the result, `sqrt(alpha_bar_prev)`.
    pub prev_from_x0: T,
    /// `f`: weight of `eps` in the result, `sqrt(1 - alpha_bar_prev - sigma^2)`.
    pub prev_from_eps: T,
    /// `g`: weight of the noise in the result, `sigma = eta * sqrt(variance)`.
    pub prev_from_noise: T,
}

impl StepCoefficients<f32> {
    /// Widens every coefficient to the element type, exactly.
    pub(crate) fn widen<T: DdimFloat>(&self) -> StepCoefficients<T> {
        StepCoefficients {
            form: self.form,
            eps_from_clamped_x0: self.eps_from_clamped_x0,
            x0_from_sample: T::from_f32(self.x0_from_sample),
            x0_from_output: T::from_f32(self.x0_from_output),
            x0_divisor: T::from_f32(self.x0_divisor),
            eps_from_sample: T::from_f32(self.eps_from_sample),
            eps_from_output: T::from_f32(self.eps_from_output),
            eps_from_x0: T::from_f32(self.eps_from_x0),
            eps_divisor: T::from_f32(self.eps_divisor),
            prev_from_x0: T::from_f32(self.prev_from_x0),
            prev_from_eps: T::from_f32(self.prev_from_eps),
            prev_from_noise: T::from_f32(self.prev_from_noise),
        }
    }
}

impl<T: DdimFloat> StepCoefficients<T> {
    /// The raw (unclamped) `x0` of one element.
    #[inline(always)]
    pub(crate) fn raw_x0(&self, sample: T, model_output: T) -> T {
        match self.form {
            Form::Epsilon => (sample + self.x0_from_output * model_output) / self.x0_divisor,
            Form::Sample => model_output,
            Form::Velocity => self.x0_from_sample * sample + self.x0_from_output * model_output,
        }
    }

    /// Replaces `out` with the bit patterns of `|raw x0|` of every element, in row-major order.
    pub(crate) fn abs_raw_x0_bits<D: Dimension>(
        &self,
        model_output: ArrayView<'_, T, D>,
        sample: ArrayView<'_, T, D>,
        out: &mut Vec<T::Bits>,
    ) {
        out.clear();
        let bits = |(&m, &s): (&T, &T)| self.raw_x0(s, m).abs().to_bits();
        match (model_output.as_slice(), sample.as_slice()) {
            (Some(m), Some(s)) => out.extend(m.iter().zip(s).map(bits)),
            _ => out.extend(model_output.iter().zip(sample.iter()).map(bits)),
        }
    }
}

/// What happens to the raw `x0` before it is used: `clamp(x0, lo, hi) / divisor`.
///
/// NaN passes through unchanged, as in `torch.clamp`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct X0Bounds<T> {
    /// Lower bound (`-inf` for none).
    pub lo: T,
    /// Upper bound (`+inf` for none).
    pub hi: T,
    /// Divisor applied after clamping (1 except for dynamic thresholding, where it is `s`).
    pub divisor: T,
}

impl<T: DdimFloat> X0Bounds<T> {
    /// No clamping at all.
    pub(crate) fn unbounded() -> Self {
        let inf = T::ONE / T::ZERO;
        X0Bounds {
            lo: -inf,
            hi: inf,
            divisor: T::ONE,
        }
    }

    /// `clamp(x, -range, range)`.
    pub(crate) fn symmetric(range: T) -> Self {
        X0Bounds {
            lo: -range,
            hi: range,
            divisor: T::ONE,
        }
    }

    /// Applies the bounds to one value.
    #[inline(always)]
    pub(crate) fn apply(&self, x: T) -> T {
        let above_lo = if x < self.lo { self.lo } else { x };
        let clamped = if above_lo > self.hi {
            self.hi
        } else {
            above_lo
        };
        clamped / self.divisor
    }
}

/// [`Form`] as a const parameter.
const EPSILON: u8 = 0;
const SAMPLE: u8 = 1;
const VELOCITY: u8 = 2;

/// One element of the update: returns `(prev_sample, pred_original_sample)`.
///
/// The const parameters select the formulas' terms ([`Form`], whether `eps` is re-derived from
/// the clamped `x0`, whether `x0` is clamped at all), so each instance has exactly the
/// reference's operations, in its order, and nothing else.
#[inline(always)]
fn update<T: DdimFloat, const FORM: u8, const EPS_FROM_X0: bool, const BOUND_X0: bool>(
    k: &StepCoefficients<T>,
    bounds: &X0Bounds<T>,
    sample: T,
    model_output: T,
    noise: T,
) -> (T, T) {
    let raw_x0 = match FORM {
        EPSILON => (sample + k.x0_from_output * model_output) / k.x0_divisor,
        SAMPLE => model_output,
        _ => k.x0_from_sample * sample + k.x0_from_output * model_output,
    };
    let x0 = if BOUND_X0 {
        bounds.apply(raw_x0)
    } else {
        raw_x0
    };
    let eps = if EPS_FROM_X0 {
        (sample + k.eps_from_x0 * x0) / k.eps_divisor
    } else {
        match FORM {
            EPSILON => model_output,
            SAMPLE => (sample + k.eps_from_output * model_output) / k.eps_divisor,
            _ => k.eps_from_sample * sample + k.eps_from_output * model_output,
        }
    };
    let prev = k.prev_from_x0 * x0 + k.prev_from_eps * eps + k.prev_from_noise * noise;
    (prev, x0)
}

/// Where the noise of a step comes from.
pub(crate) enum Noise<'a, T, D, F> {
    /// No noise (deterministic steps).
    Zero,
    /// A caller-provided array of the sample's shape.
    Given(ArrayView<'a, T, D>),
    /// Drawn element by element, in the order the pass visits the elements.
    Drawn(F),
}

/// The sample, and where the results of a pass go.
pub(crate) enum Target<'a, T, D> {
    /// Read `sample`; write `prev_sample` and `pred_original_sample` to their own buffers.
    Separate {
        sample: ArrayView<'a, T, D>,
        prev_sample: ArrayViewMut<'a, T, D>,
        pred_original_sample: ArrayViewMut<'a, T, D>,
    },
    /// Overwrite the sample with `prev_sample`; `pred_original_sample` is not kept.
    InPlace(ArrayViewMut<'a, T, D>),
}

impl<T, D: Dimension, F> Noise<'_, T, D, F> {
    /// The same noise restricted to `range` along axis 0 (drawn noise keeps its generator).
    pub(crate) fn item(&mut self, range: Slice) -> Noise<'_, T, D, &mut F> {
        match self {
            Noise::Given(view) => Noise::Given(view.slice_axis(Axis(0), range)),
            Noise::Drawn(draw) => Noise::Drawn(draw),
            Noise::Zero => Noise::Zero,
        }
    }
}

impl<T, D: Dimension> Target<'_, T, D> {
    /// The sample the step reads.
    pub(crate) fn sample(&self) -> ArrayView<'_, T, D> {
        match self {
            Target::Separate { sample, .. } => sample.view(),
            Target::InPlace(sample) => sample.view(),
        }
    }

    /// The same target restricted to `range` along axis 0 (one batch item, say).
    pub(crate) fn item(&mut self, range: Slice) -> Target<'_, T, D> {
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
        }
    }
}

/// Applies the update to every element: one read of each input, one write of each output.
///
/// The caller guarantees that all arrays have the same shape.
pub(crate) fn fused_step<T, D, F>(
    k: &StepCoefficients<T>,
    bounds: &X0Bounds<T>,
    model_output: ArrayView<'_, T, D>,
    target: Target<'_, T, D>,
    noise: Noise<'_, T, D, F>,
) where
    T: DdimFloat,
    D: Dimension,
    F: FnMut() -> T,
{
    #[cfg(feature = "parallel")]
    let (target, noise) = match parallel::try_split(k, bounds, &model_output, target, noise) {
        Some((target, noise)) => (target, noise),
        None => return,
    };
    fused_step_on_this_thread(k, bounds, model_output, target, noise);
}

/// The pass on the calling thread, for the best instruction set the CPU has.
fn fused_step_on_this_thread<T, D, F>(
    k: &StepCoefficients<T>,
    bounds: &X0Bounds<T>,
    model_output: ArrayView<'_, T, D>,
    target: Target<'_, T, D>,
    noise: Noise<'_, T, D, F>,
) where
    T: DdimFloat,
    D: Dimension,
    F: FnMut() -> T,
{
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: `fused_step_avx2` only requires the CPU to support AVX2, which was checked
        // at run time just above.
        #[allow(unsafe_code)]
        unsafe {
            fused_step_avx2(k, bounds, model_output, target, noise)
        };
        return;
    }
    fused_step_portable(k, bounds, model_output, target, noise);
}

/// The optional multi-threaded pass (cargo feature `parallel`).
#[cfg(feature = "parallel")]
mod parallel {
    use super::*;
    use ndarray::{ArrayView1, ArrayViewMut1};

    /// The target and noise of a pass that stays on the calling thread.
    type Unsplit<'t, 'n, T, D, F> = (Target<'t, T, D>, Noise<'n, T, D, F>);

    /// Given noise of one part, or none.
    fn noise_of<T>(z: Option<&[T]>) -> Noise<'_, T, ndarray::Ix1, fn() -> T> {
        match z {
            Some(z) => Noise::Given(ArrayView1::from(z)),
            None => Noise::Zero,
        }
    }

    /// Arrays smaller than this stay on one thread: measured on 2 cores, splitting an
    /// 8x4x128x128 step (half a million elements, cache-resident) was slower, a 16x3x256x256
    /// one (three million, memory-bound) 1.7 times faster.
    const MIN_ELEMENTS: usize = 1 << 21;

    /// Runs the pass on all available cores when the arrays are large, contiguous and row-major
    /// and the noise is not drawn from a generator (whose draws must stay in order); then
    /// returns `None`. Otherwise hands `target` and `noise` back untouched.
    pub(super) fn try_split<'t, 'n, T, D, F>(
        k: &StepCoefficients<T>,
        bounds: &X0Bounds<T>,
        model_output: &ArrayView<'_, T, D>,
        mut target: Target<'t, T, D>,
        noise: Noise<'n, T, D, F>,
    ) -> Option<Unsplit<'t, 'n, T, D, F>>
    where
        T: DdimFloat,
        D: Dimension,
        F: FnMut() -> T,
    {
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
        let run = |m: &[T], target: Target<'_, T, ndarray::Ix1>, z: Option<&[T]>| {
            fused_step_on_this_thread(k, bounds, ArrayView1::from(m), target, noise_of(z));
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
                            sample: ArrayView1::from(s),
                            prev_sample: ArrayViewMut1::from(p),
                            pred_original_sample: ArrayViewMut1::from(x),
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
                        let part = Target::InPlace(ArrayViewMut1::from(s));
                        scope.spawn(move || run(m, part, zs(i)));
                    }
                });
            }
        }
        None
    }
}

/// [`fused_step_portable`] compiled for AVX2: the same operations in the same order (Rust never
/// fuses or reorders floating-point operations), so the same results to the bit, with twice as
/// many lanes per instruction as the x86-64 baseline (SSE2).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn fused_step_avx2<T, D, F>(
    k: &StepCoefficients<T>,
    bounds: &X0Bounds<T>,
    model_output: ArrayView<'_, T, D>,
    target: Target<'_, T, D>,
    noise: Noise<'_, T, D, F>,
) where
    T: DdimFloat,
    D: Dimension,
    F: FnMut() -> T,
{
    fused_step_portable(k, bounds, model_output, target, noise);
}

/// The pass itself, for whatever instruction set the caller was compiled for.
#[inline(always)]
fn fused_step_portable<T, D, F>(
    k: &StepCoefficients<T>,
    bounds: &X0Bounds<T>,
    model_output: ArrayView<'_, T, D>,
    target: Target<'_, T, D>,
    noise: Noise<'_, T, D, F>,
) where
    T: DdimFloat,
    D: Dimension,
    F: FnMut() -> T,
{
    let bound_x0 = *bounds != X0Bounds::unbounded();
    // One instance of the loop per combination of the formulas' terms.
    macro_rules! run {
        ($form:expr, $eps_from_x0:literal, $bound:literal) => {
            for_each_element(model_output, target, noise, |s, m, z| {
                update::<T, { $form }, $eps_from_x0, $bound>(k, bounds, s, m, z)
            })
        };
    }
    match (k.form, k.eps_from_clamped_x0, bound_x0) {
        (Form::Epsilon, false, false) => run!(EPSILON, false, false),
        (Form::Epsilon, false, true) => run!(EPSILON, false, true),
        (Form::Epsilon, true, false) => run!(EPSILON, true, false),
        (Form::Epsilon, true, true) => run!(EPSILON, true, true),
        (Form::Sample, false, false) => run!(SAMPLE, false, false),
        (Form::Sample, false, true) => run!(SAMPLE, false, true),
        (Form::Sample, true, false) => run!(SAMPLE, true, false),
        (Form::Sample, true, true) => run!(SAMPLE, true, true),
        (Form::Velocity, false, false) => run!(VELOCITY, false, false),
        (Form::Velocity, false, true) => run!(VELOCITY, false, true),
        (Form::Velocity, true, false) => run!(VELOCITY, true, false),
        (Form::Velocity, true, true) => run!(VELOCITY, true, true),
    }
}

/// Elements per block of the contiguous path. The noise of a block is gathered into a small
/// buffer first (drawn from the generator, or zeros), so that the arithmetic over every block is
/// one vectorised loop even when the noise comes from a generator one value at a time.
const BLOCK: usize = 256;

/// The noise of the contiguous path, handed out block by block.
struct NoiseBlocks<'a, T, F> {
    /// Given noise not yet handed out.
    given: Option<&'a [T]>,
    /// The generator of drawn noise.
    draw: Option<&'a mut F>,
    /// Drawn noise of the current block, or zeros.
    buffer: [T; BLOCK],
}

impl<'a, T: DdimFloat, F: FnMut() -> T> NoiseBlocks<'a, T, F> {
    /// `None` when given noise is not one contiguous row-major slice.
    fn new<D: Dimension>(noise: &'a mut Noise<'_, T, D, F>) -> Option<Self> {
        let (given, draw) = match noise {
            Noise::Given(z) => (Some(z.as_slice()?), None),
            Noise::Drawn(draw) => (None, Some(draw)),
            Noise::Zero => (None, None),
        };
        Some(NoiseBlocks {
            given,
            draw,
            buffer: [T::ZERO; BLOCK],
        })
    }

    /// Whether there is no noise at all (deterministic steps).
    fn is_zero(&self) -> bool {
        self.given.is_none() && self.draw.is_none()
    }

    /// The noise of the next `len <= BLOCK` elements.
    #[inline(always)]
    fn next(&mut self, len: usize) -> &[T] {
        if let Some(given) = &mut self.given {
            let (head, tail) = given.split_at(len.min(given.len()));
            *given = tail;
            return head;
        }
        let block = &mut self.buffer[..len.min(BLOCK)];
        if let Some(draw) = &mut self.draw {
            block.iter_mut().for_each(|z| *z = draw());
        }
        block
    }
}

/// Runs `element(sample, model_output, noise) -> (prev, x0)` over every element and stores the
/// results in `target`: block by block over plain slices when every array is contiguous and
/// row-major (loops the compiler vectorises), through `Zip` for any other layout.
#[inline(always)]
fn for_each_element<T, D, F>(
    model_output: ArrayView<'_, T, D>,
    target: Target<'_, T, D>,
    mut noise: Noise<'_, T, D, F>,
    element: impl Fn(T, T, T) -> (T, T),
) where
    T: DdimFloat,
    D: Dimension,
    F: FnMut() -> T,
{
    let m = &model_output;
    match target {
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
                if zs.is_zero() {
                    // No noise stream at all: the leanest loop.
                    for ((p, x), (&s, &m)) in ps.iter_mut().zip(xs).zip(ss.iter().zip(ms)) {
                        (*p, *x) = element(s, m, T::ZERO);
                    }
                    return;
                }
                let blocks = ps.chunks_mut(BLOCK).zip(xs.chunks_mut(BLOCK));
                for ((p, x), (s, m)) in blocks.zip(ss.chunks(BLOCK).zip(ms.chunks(BLOCK))) {
                    let z = zs.next(s.len());
                    for ((p, x), ((&s, &m), &z)) in p.iter_mut().zip(x).zip(s.iter().zip(m).zip(z))
                    {
                        (*p, *x) = element(s, m, z);
                    }
                }
                return;
            }
            let zip = Zip::from(&mut p).and(&mut x).and(&s).and(m);
            match noise {
                Noise::Given(z) => zip
                    .and(&z)
                    .for_each(|p, x, &s, &m, &z| (*p, *x) = element(s, m, z)),
                Noise::Drawn(mut draw) => {
                    zip.for_each(|p, x, &s, &m| (*p, *x) = element(s, m, draw()))
                }
                Noise::Zero => zip.for_each(|p, x, &s, &m| (*p, *x) = element(s, m, T::ZERO)),
            }
        }
        Target::InPlace(mut s) => {
            if let (Some(ss), Some(ms), Some(mut zs)) =
                (s.as_slice_mut(), m.as_slice(), NoiseBlocks::new(&mut noise))
            {
                if zs.is_zero() {
                    for (s, &m) in ss.iter_mut().zip(ms) {
                        *s = element(*s, m, T::ZERO).0;
                    }
                    return;
                }
                for (s, m) in ss.chunks_mut(BLOCK).zip(ms.chunks(BLOCK)) {
                    let z = zs.next(s.len());
                    for ((s, &m), &z) in s.iter_mut().zip(m).zip(z) {
                        *s = element(*s, m, z).0;
                    }
                }
                return;
            }
            let zip = Zip::from(&mut s).and(m);
            match noise {
                Noise::Given(z) => zip.and(&z).for_each(|s, &m, &z| *s = element(*s, m, z).0),
                Noise::Drawn(mut draw) => zip.for_each(|s, &m| *s = element(*s, m, draw()).0),
                Noise::Zero => zip.for_each(|s, &m| *s = element(*s, m, T::ZERO).0),
            }
        }
    }
}

/// Writes `weight_a * a + weight_b * b` into `out`, element by element: the shape of
/// `add_noise` (`sqrt(alpha_bar) * x0 + sqrt(1 - alpha_bar) * eps`) and `get_velocity`.
pub(crate) fn weighted_sum<T, D>(
    weight_a: T,
    a: ArrayView<'_, T, D>,
    weight_b: T,
    b: ArrayView<'_, T, D>,
    out: ArrayViewMut<'_, T, D>,
) where
    T: DdimFloat,
    D: Dimension,
{
    Zip::from(out)
        .and(&a)
        .and(&b)
        .for_each(|o, &a, &b| *o = weight_a * a + weight_b * b);
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    /// The dispatched pass (AVX2 where the CPU has it) and the portable one agree to the bit,
    /// for every combination of the skippable operations and every noise kind.
    #[test]
    fn dispatched_and_portable_passes_agree_to_the_bit() {
        let shape = (3, 1000);
        let m = Array2::from_shape_fn(shape, |(i, j)| ((i * 1000 + j) as f32 * 0.37).sin() * 3.0);
        let s = Array2::from_shape_fn(shape, |(i, j)| ((i * 7 + j) as f32 * 0.11).cos());
        let z = Array2::from_shape_fn(shape, |(i, j)| ((i + j * 3) as f32 * 0.05).sin());
        for (q, u, bounded) in [
            (1.0, 1.0, false),
            (0.3, 1.0, true),
            (1.0, 0.7, false),
            (0.9, 0.4, true),
        ] {
            let k = StepCoefficients {
                form: Form::Velocity,
                eps_from_clamped_x0: q != 1.0,
                x0_from_sample: 1.0f32,
                x0_from_output: -0.6,
                x0_divisor: q,
                eps_from_sample: 0.2,
                eps_from_output: 0.9,
                eps_from_x0: -0.1,
                eps_divisor: u,
                prev_from_x0: 0.8,
                prev_from_eps: 0.55,
                prev_from_noise: 0.25,
            };
            let bounds = if bounded {
                X0Bounds::symmetric(1.2)
            } else {
                X0Bounds::unbounded()
            };
            let run = |portable: bool, given: bool| {
                let (mut p, mut x) = (Array2::zeros(shape), Array2::zeros(shape));
                let target = Target::Separate {
                    sample: s.view(),
                    prev_sample: p.view_mut(),
                    pred_original_sample: x.view_mut(),
                };
                let mut n = 0.0f32;
                let noise = if given {
                    Noise::Given(z.view())
                } else {
                    Noise::Drawn(move || {
                        n += 0.001;
                        n
                    })
                };
                if portable {
                    fused_step_portable(&k, &bounds, m.view(), target, noise);
                } else {
                    fused_step(&k, &bounds, m.view(), target, noise);
                }
                (p, x)
            };
            for given in [false, true] {
                let (a, b) = (run(false, given), run(true, given));
                let bits = |v: &Array2<f32>| v.mapv(f32::to_bits);
                assert_eq!(
                    bits(&a.0),
                    bits(&b.0),
                    "prev, q {q}, u {u}, bounded {bounded}"
                );
                assert_eq!(
                    bits(&a.1),
                    bits(&b.1),
                    "x0, q {q}, u {u}, bounded {bounded}"
                );
            }
        }
    }

    /// With the `parallel` feature, a large step is split across threads; every part computes
    /// exactly what the single-threaded pass computes.
    #[cfg(feature = "parallel")]
    #[test]
    fn parallel_pass_equals_the_single_thread_pass() {
        use ndarray::Array1;
        let len = (1 << 21) + 123;
        let m = Array1::from_shape_fn(len, |i| (i as f32 * 0.37).sin() * 3.0);
        let s = Array1::from_shape_fn(len, |i| (i as f32 * 0.11).cos());
        let z = Array1::from_shape_fn(len, |i| (i as f32 * 0.05).sin());
        let k = StepCoefficients {
            form: Form::Epsilon,
            eps_from_clamped_x0: false,
            x0_from_sample: 1.0f32,
            x0_from_output: -0.6,
            x0_divisor: 0.3,
            eps_from_sample: 0.0,
            eps_from_output: 1.0,
            eps_from_x0: 0.0,
            eps_divisor: 1.0,
            prev_from_x0: 0.8,
            prev_from_eps: 0.55,
            prev_from_noise: 0.25,
        };
        let bounds = X0Bounds::symmetric(1.2);
        for given in [false, true] {
            let noise = || -> Noise<'_, f32, ndarray::Ix1, fn() -> f32> {
                if given {
                    Noise::Given(z.view())
                } else {
                    Noise::Zero
                }
            };
            let (mut p1, mut x1) = (Array1::zeros(len), Array1::zeros(len));
            let target = Target::Separate {
                sample: s.view(),
                prev_sample: p1.view_mut(),
                pred_original_sample: x1.view_mut(),
            };
            fused_step(&k, &bounds, m.view(), target, noise());
            let (mut p2, mut x2) = (Array1::zeros(len), Array1::zeros(len));
            let target = Target::Separate {
                sample: s.view(),
                prev_sample: p2.view_mut(),
                pred_original_sample: x2.view_mut(),
            };
            fused_step_on_this_thread(&k, &bounds, m.view(), target, noise());
            assert_eq!(
                p1.mapv(f32::to_bits),
                p2.mapv(f32::to_bits),
                "given noise: {given}"
            );
            assert_eq!(
                x1.mapv(f32::to_bits),
                x2.mapv(f32::to_bits),
                "given noise: {given}"
            );
            let mut in_place = s.clone();
            fused_step(
                &k,
                &bounds,
                m.view(),
                Target::InPlace(in_place.view_mut()),
                noise(),
            );
            assert_eq!(
                in_place.mapv(f32::to_bits),
                p2.mapv(f32::to_bits),
                "in place"
            );
        }
    }
}
