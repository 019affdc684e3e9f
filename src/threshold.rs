//! Dynamic thresholding (Saharia et al. 2022, "Photorealistic Text-to-Image Diffusion Models
//! with Deep Language Understanding", section 2.3): the per-batch-item threshold `s`.
//!
//! `s` needs two neighbouring order statistics of `|x0|` over a batch item. Small items and
//! items whose arrays are not contiguous take the direct path: the bit patterns of every `|x0|`
//! go to the scratch buffer and a selection finds the two (see [`dynamic_threshold`]). Other
//! items are bracketed first ([`bracketed_quantile`]), on `|x0|` before its last division
//! (ε-prediction divides by `√α_t`; the order is the same, and only the two order statistics
//! found are divided):
//!
//! 1. a sample of the item (one element drawn from every stretch of `len / m` elements) gives
//!    two values `lo <= hi` that hold the wanted ranks between them with high probability;
//! 2. one vectorised pass over the item counts the elements below `lo` and up to `hi`, notes
//!    NaN, and keeps the bit patterns of the few elements in `[lo, hi]` (on AVX2, eight at a
//!    time without a branch: the kept lanes are moved to the front of a vector and the whole
//!    vector stored);
//! 3. if the wanted ranks do lie in `[lo, hi]`, a selection among the kept elements finds the
//!    two order statistics exactly (on AVX2, 512 or more kept `f32` values are narrowed the
//!    same way first: a sample of them gives a bracket, and one vector pass copies the values
//!    inside it; see [`select_kept`]); after an unlucky sample the pass is repeated once with
//!    a much wider bracket, and if that misses too (or a bracket holds more elements than it
//!    may keep: long runs of equal values) the item takes the direct path.
//!
//! Both paths find the same order statistics, so the threshold is the same to the bit.

use ndarray::ArrayViewD;

use crate::float::{Arithmetic, Precision, SCRATCH_KEEP};
use crate::kernel::update::{with_prediction, NoiseLevel, Prediction};
use crate::kernel::Update;
use crate::DdimFloat;

/// The bit patterns `|x0|` values are kept as in the scratch buffer.
type Bits<T> = <<T as crate::float::Sealed>::Compute as Arithmetic>::Bits;

/// Items with fewer elements than this take the direct path: the bracket would not pay for its
/// sample.
const BRACKET_FROM: usize = 4096;

/// Values per block of the bracketing pass (computed into a buffer that stays in L1).
const BLOCK: usize = 256;

/// Values per block of the bracketing pass when the vector pass takes them (`f32` elements
/// on a CPU with AVX2): it computes no buffer, and a block's fixed costs (the call, the sums
/// of the vector counters, the check of the bracket's capacity) paid every 256 values took
/// about a tenth of its time.
const VECTOR_BLOCK: usize = 2048;
const _: () = assert!(VECTOR_BLOCK.is_power_of_two() && VECTOR_BLOCK >= BLOCK);

/// Values per group when the bracketing pass looks for elements inside the bracket: groups
/// without any are skipped after one vectorised count, the others copied without branches.
const GROUP: usize = 16;

/// Half the width of the bracket, in standard deviations of the sample rank (plus two ranks): a
/// bracket misses the wanted ranks with a probability of about 0.5% (measured on normal data),
/// and then costs one more pass with a bracket [`RETRY_SIGMAS`] wide. Wider brackets keep more
/// elements, which costs on every item.
const BRACKET_SIGMAS: f64 = 2.5;

/// Half the width of the second bracket, when the first missed: it misses with a probability
/// far below one in a million, and then the item takes the direct path.
const RETRY_SIGMAS: f64 = 6.0;

/// The threshold `s` of one batch item (arrays of one item, of the same shape, any layout), in
/// the compute type; `scratch` is the thread's scratch buffer.
pub(crate) fn item_threshold<T: DdimFloat>(
    update: &Update<T::Compute>,
    model_output: &ArrayViewD<'_, T>,
    sample: &ArrayViewD<'_, T>,
    ratio: f64,
    max_value: T::Compute,
    scratch: &mut Vec<Bits<T>>,
) -> T::Compute {
    let len = model_output.len();
    // Room for the direct path, so that a step never allocates after the first of its shape.
    scratch.clear();
    scratch.reserve_exact(len);
    let bracketed = match (model_output.as_slice(), sample.as_slice()) {
        (Some(m), Some(s)) if len >= BRACKET_FROM => {
            bracketed_quantile(update, m, s, ratio, scratch)
        }
        _ => None,
    };
    match bracketed {
        Some(q) => threshold_of(Some(q), max_value),
        None => {
            abs_raw_x0_bits(update, model_output, sample, scratch);
            dynamic_threshold(scratch, ratio, max_value)
        }
    }
}

/// Leaves at least a quarter of `item_len` values in the scratch buffer at the end of a step.
/// The buffer is trimmed after a step to four times what the step left in it (see
/// `trim_scratch`), and a bracketed item leaves only a few percent of its elements there; this
/// keeps room for the direct path on items of this size, so that the next step of the shape
/// does not allocate even when one of its items has to take that path. Buffers the trim never
/// shrinks (up to `SCRATCH_KEEP` elements) are left alone.
pub(crate) fn keep_for_next_step<T: Arithmetic>(scratch: &mut Vec<T::Bits>, item_len: usize) {
    if scratch.capacity() <= SCRATCH_KEEP {
        return;
    }
    let quarter = item_len.div_ceil(4);
    if scratch.len() < quarter {
        scratch.resize(quarter, T::to_bits(T::ZERO));
    }
}

/// The threshold from the quantile (`None` for an empty item): `1` for an empty item, NaN for
/// NaN, else the quantile clamped to `[1, max_value]`.
fn threshold_of<T: Arithmetic>(quantile: Option<T>, max_value: T) -> T {
    match quantile {
        None => clamp_threshold(T::ONE, max_value),
        Some(q) if q.is_nan() => q,
        Some(q) => clamp_threshold(q, max_value),
    }
}

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
    threshold_of(quantile::<T>(abs_x0, ratio), max_value)
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

/// The ranks of the two order statistics the `ratio` quantile of `len > 0` values interpolates
/// between, and the weight of the upper one. The ratio is rounded to the element type first
/// (torch makes it a tensor of the input's dtype); the rank is then exact enough in double.
fn ranks<T: Arithmetic>(len: usize, ratio: f64) -> (usize, usize, T) {
    let last = len - 1;
    let rank = T::from_f64(ratio).to_f64() * last as f64;
    let lo = (rank.floor() as usize).min(last);
    let hi = (rank.ceil() as usize).min(last);
    (lo, hi, T::from_f64(rank - lo as f64))
}

/// Whether a bit pattern of a non-negative value is NaN: every NaN pattern of a non-negative
/// sign lies above infinity's.
fn is_nan_bits<T: Arithmetic>(bits: T::Bits) -> bool {
    bits > T::to_bits(T::ONE / T::ZERO)
}

/// The linearly interpolated `ratio` quantile of the non-negative values whose bit patterns
/// are `values` (reordered in place); `None` when empty.
fn quantile<T: Arithmetic>(values: &mut [T::Bits], ratio: f64) -> Option<T> {
    if values.is_empty() {
        return None;
    }
    if values.iter().any(|&v| is_nan_bits::<T>(v)) {
        return Some(T::from_f64(f64::NAN));
    }
    let (lo, hi, weight) = ranks::<T>(values.len(), ratio);
    let (below, above) = lo_and_next(values, lo, hi > lo);
    Some(lerp(T::from_bits(below), T::from_bits(above), weight))
}

/// The order statistic `index` of `values` (reordered in place) and, if `next`, the one after it
/// (else the same again).
fn lo_and_next<B: Ord + Copy>(values: &mut [B], index: usize, next: bool) -> (B, B) {
    let (_, &mut below, upper) = values.select_nth_unstable(index);
    let above = if next {
        // The smallest value of the upper partition is the order statistic `index + 1`.
        upper.iter().copied().min().unwrap_or(below)
    } else {
        below
    };
    (below, above)
}

/// Kept values from which [`select_kept`] narrows them with a bracket of their own first.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const NARROW_FROM: usize = 512;

/// [`lo_and_next`] of the bit patterns of non-negative, non-NaN values that fill `scratch`
/// (which keeps its length; the values may be reordered).
///
/// Many values are narrowed first, as the item's elements were, when `f32` values go through
/// the AVX2 pass: a sample of them gives a bracket, one vector pass counts the values below it
/// and copies those inside it behind the values, and the selection runs among the copies. If the
/// bracket misses the wanted ranks (or the buffer has no room for the copies without
/// allocating), it runs among all of them.
fn select_kept<C: Arithmetic>(
    scratch: &mut Vec<C::Bits>,
    index: usize,
    next: bool,
) -> (C::Bits, C::Bits) {
    let kept = scratch.len();
    let found = narrowed::<C>(scratch, index, next);
    // The copies, if any, are dropped; the values are still at the front.
    scratch.truncate(kept);
    found.unwrap_or_else(|| lo_and_next(scratch, index, next))
}

/// The narrowing of [`select_kept`]: x86-64 only (the vector pass is AVX2's).
#[cfg(not(target_arch = "x86_64"))]
fn narrowed<C: Arithmetic>(_: &mut Vec<C::Bits>, _: usize, _: bool) -> Option<(C::Bits, C::Bits)> {
    None
}

/// The narrowing of [`select_kept`], with the copies behind the values: `None` when it does not
/// apply or its bracket misses (the values are still at the front of `scratch`, as they were).
#[cfg(target_arch = "x86_64")]
fn narrowed<C: Arithmetic>(
    scratch: &mut Vec<C::Bits>,
    index: usize,
    next: bool,
) -> Option<(C::Bits, C::Bits)> {
    let simd = avx2::Avx2::detect()?;
    // `f32` values only (the vector pass's), checked before the buffer grows.
    C::ZERO.as_f32()?;
    let kept = scratch.len();
    // The copies and a vector more, behind the values.
    let room = 2 * kept + LANES;
    if kept < NARROW_FROM || room > scratch.capacity() {
        return None;
    }
    scratch.resize(room, C::to_bits(C::ZERO));
    let (values, rest) = scratch.split_at_mut(kept);
    // `2 √kept` values, one from each of as many stretches: at least 44, as `kept >= 512`.
    let m = (2 * kept.isqrt()).min(512);
    let stretch = kept / m;
    let sample = rest.get_mut(..m)?;
    for (j, slot) in sample.iter_mut().enumerate() {
        *slot = *values.get(stratified(j, stretch))?;
    }
    let p = index as f64 / (kept - 1) as f64;
    let (lo, hi, _) = sample_ends(sample, p, BRACKET_SIGMAS);
    let bits = |end: Option<C::Bits>, open: f32| {
        end.map_or(Some(open), |b| C::from_bits(b).as_f32())
            .map(f32::to_bits)
    };
    let (lo, hi) = (bits(lo, 0.0)?, bits(hi, f32::INFINITY)?);
    let (below, inside) = simd.compact(C::as_u32s(values)?, lo, hi, C::as_u32s(rest)?)?;
    if below <= index && index + usize::from(next) < below + inside {
        Some(lo_and_next(rest.get_mut(..inside)?, index - below, next))
    } else {
        None
    }
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

/// The quantile of the `|x0|` of contiguous arrays found through a bracket (see the module
/// docs), with the scratch buffer (empty, with room for the item) as working space; `None` when
/// the bracket does not hold the wanted ranks, and the caller takes the direct path. NaN
/// anywhere gives NaN, as on the direct path.
fn bracketed_quantile<T: DdimFloat>(
    update: &Update<T::Compute>,
    model_output: &[T],
    sample: &[T],
    ratio: f64,
    scratch: &mut Vec<Bits<T>>,
) -> Option<T::Compute> {
    with_prediction!(update.prediction, P => {
        bracketed_with::<T, P>(&update.level, model_output, sample, ratio, scratch)
    })
}

/// [`bracketed_quantile`] with the `x0` formula of one prediction type.
///
/// The bracket and the selection work on `|x0 numerator|` (see [`Prediction::x0_numerator`]):
/// `|x0| = |numerator| / divisor` with a positive, finite divisor, and dividing by such a
/// number never reverses the order of two values (it may only make them equal), so the order
/// statistics of `|x0|` are the divided order statistics of the numerators, to the bit. Only
/// the two that the quantile needs are divided; NaN numerators are exactly the NaN `x0`.
fn bracketed_with<T: DdimFloat, P: Prediction>(
    level: &NoiseLevel<T::Compute>,
    model_output: &[T],
    sample: &[T],
    ratio: f64,
    scratch: &mut Vec<Bits<T>>,
) -> Option<T::Compute> {
    let zero = T::Compute::ZERO;
    let divisor = P::x0_divisor(level);
    if let Some(d) = divisor {
        // A zero divisor (no signal left) makes `x0` infinite or NaN, which the numerators do
        // not order; such steps take the direct path.
        if !(d > zero && d < T::Compute::ONE / zero) {
            return None;
        }
    }
    let finish = |bits| {
        let u = T::Compute::from_bits(bits);
        divisor.map_or(u, |d| u / d)
    };
    let len = model_output.len();
    let (lo_rank, hi_rank, weight) = ranks::<T::Compute>(len, ratio);
    let mut attempt = None;
    for sigmas in [BRACKET_SIGMAS, RETRY_SIGMAS] {
        let bracket = sample_bracket::<T, P>(level, model_output, sample, ratio, sigmas, scratch);
        let counts = scan::<T, P>(level, model_output, sample, &bracket, scratch);
        if counts.nan {
            return Some(T::Compute::from_f64(f64::NAN));
        }
        if counts.overflow {
            // Too many elements in the bracket (long runs of equal values): a wider one would
            // hold more.
            return None;
        }
        if counts.below <= lo_rank && hi_rank < counts.up_to {
            attempt = Some((bracket, counts));
            break;
        }
    }
    let (bracket, counts) = attempt?;
    let (below, above) = if bracket.collect {
        // Every element in [lo, hi] is in the scratch buffer, in no particular order.
        select_kept::<T::Compute>(scratch, lo_rank - counts.below, hi_rank > lo_rank)
    } else {
        // lo == hi: every element of the bracket has that value.
        let bits = T::Compute::to_bits(bracket.lo);
        (bits, bits)
    };
    Some(lerp(finish(below), finish(above), weight))
}

/// Values of `|x0 numerator|` that hold the wanted order statistics between them, probably.
struct Bracket<C> {
    /// The lower end (an element's value, or zero).
    lo: C,
    /// The upper end (an element's value, or infinity).
    hi: C,
    /// Whether the elements in `[lo, hi]` are kept (not when `lo == hi`: they all equal `lo`).
    collect: bool,
    /// How many elements in `[lo, hi]` may be kept before the bracket is given up as too wide.
    capacity: usize,
}

/// The bracket from a stratified sample of the item: `m` elements, one at a pseudo-random
/// position in each of `m` equal stretches of the item (so that sampling adapts neither to
/// the data nor to a periodic structure in it). The ends are the sample's order statistics
/// `sigmas` standard deviations of the sample rank either side of the wanted one.
/// Uses `scratch` for the sample.
fn sample_bracket<T: DdimFloat, P: Prediction>(
    level: &NoiseLevel<T::Compute>,
    model_output: &[T],
    sample: &[T],
    ratio: f64,
    sigmas: f64,
    scratch: &mut Vec<Bits<T>>,
) -> Bracket<T::Compute> {
    let len = model_output.len();
    let m = sample_size(len);
    let stretch = len / m;
    scratch.clear();
    scratch.extend((0..m).map(|j| {
        let i = stratified(j, stretch);
        let (s, m) = match (sample.get(i), model_output.get(i)) {
            (Some(s), Some(m)) => (s.widen(), m.widen()),
            _ => (T::Compute::ZERO, T::Compute::ZERO),
        };
        P::x0_numerator(level, s, m).abs().to_bits()
    }));
    let p = T::Compute::from_f64(ratio).to_f64();
    let (lo, hi, inside) = sample_ends(scratch, p, sigmas);
    let lo = lo.map_or(T::Compute::ZERO, T::Compute::from_bits);
    let hi = hi.map_or(T::Compute::ONE / T::Compute::ZERO, T::Compute::from_bits);
    // The share of the sample inside the bracket, scaled to the item, with room to spare.
    let capacity = ((3.0 * inside * len as f64) as usize + 256).min(len);
    Bracket {
        lo,
        hi,
        collect: lo != hi,
        capacity,
    }
}

/// The position of the element sampled from stretch `j` of `stretch` elements (below
/// `(j + 1) * stretch`). The offset within the stretch is the fraction of `j` times the golden
/// ratio: a Weyl sequence, spread evenly over the stretch and with no period, computed without a
/// chain of dependent operations, so that the loads of many samples are in flight at once.
fn stratified(j: usize, stretch: usize) -> usize {
    const GOLDEN: u32 = 0x9E37_79B9;
    let fraction = (j as u32).wrapping_mul(GOLDEN);
    j * stretch + ((u64::from(fraction) * stretch as u64) >> 32) as usize
}

/// The ends of a bracket around the order statistic at the share `p` of the way up a set, from
/// a sample of it (reordered): the sample's order statistics `sigmas` standard deviations of the
/// sample rank below and above the one at `p` (`None` past the sample's ends: the bracket is
/// open on that side), and the share of the sample from one end to the other.
fn sample_ends<B: Ord + Copy>(
    sample: &mut [B],
    p: f64,
    sigmas: f64,
) -> (Option<B>, Option<B>, f64) {
    let m = sample.len();
    let centre = p * m.saturating_sub(1) as f64;
    let spread = sigmas * (m as f64 * p * (1.0 - p)).sqrt() + 2.0;
    let below = (centre - spread).floor();
    let above = (centre + spread).ceil();
    // A rank inside the sample, if `x` is one (not for NaN).
    let rank = |x: f64| (x >= 0.0 && x < m as f64).then_some(x as usize);
    let lo_rank = rank(below);
    let lo = lo_rank.and_then(|k| nth(sample, k));
    // The sample up to `lo`'s rank is already partitioned off; the spread is at least two
    // ranks either side, so `above`'s rank lies beyond it.
    let from = lo_rank.map_or(0, |k| k + 1);
    let hi = rank(above).and_then(|k| nth(sample.get_mut(from..)?, k.checked_sub(from)?));
    let inside = (above.min(m as f64) - below.max(0.0) + 1.0) / m as f64;
    (lo, hi, inside)
}

/// The order statistic `k` of `values` (reordered), if it has one.
fn nth<B: Ord + Copy>(values: &mut [B], k: usize) -> Option<B> {
    (k < values.len()).then(|| *values.select_nth_unstable(k).1)
}

/// The sample size for an item of `len >= BRACKET_FROM` elements: `2 √len`, at most 4096
/// (128 for 4,096 elements, 256 for 16,384, 512 for 65,536, 886 for 196,608). The sample's
/// cost grows with its size, the bracket's width (the elements kept and selected among) shrinks
/// with its square root. Measured on the benchmark shapes against `√len`, `4 √len` and
/// `len / 32`; a floor of `len / 32` (up to 512), which paid on cache-resident items before
/// large kept sets were narrowed (see [`select_kept`]), now costs about 3% at 16,384 elements.
fn sample_size(len: usize) -> usize {
    (2 * len.isqrt()).clamp(128, 4096)
}

/// What the bracketing pass found.
#[derive(Debug, Default)]
struct Counts {
    /// Elements below the bracket.
    below: usize,
    /// Elements below the bracket or in it.
    up_to: usize,
    /// Elements kept (those in the bracket, when it collects).
    kept: usize,
    /// Whether some value is NaN.
    nan: bool,
    /// Whether more elements fell inside the bracket than it may keep, whatever the block
    /// length (the pass may then have stopped early: the counts are incomplete and NaN may
    /// have been missed).
    overflow: bool,
}

/// The bracketing pass: counts, and the bit patterns of the elements in `[lo, hi]` left in
/// `inside` (up to the bracket's capacity). On x86-64 CPUs with AVX2 the pass is compiled for
/// it, chosen at run time like the step's own pass, and keeps `f32` values eight at a time.
fn scan<T: DdimFloat, P: Prediction>(
    level: &NoiseLevel<T::Compute>,
    model_output: &[T],
    sample: &[T],
    bracket: &Bracket<T::Compute>,
    inside: &mut Vec<Bits<T>>,
) -> Counts {
    inside.clear();
    if bracket.collect {
        inside.resize(
            room(bracket.capacity),
            T::Compute::to_bits(T::Compute::ZERO),
        );
    }
    #[cfg(target_arch = "x86_64")]
    let counts = match avx2::Avx2::detect() {
        Some(simd) => simd.scan::<T, P>(level, model_output, sample, bracket, inside),
        None => scan_with::<T, P>(None, level, model_output, sample, bracket, inside),
    };
    #[cfg(not(target_arch = "x86_64"))]
    let counts = scan_with::<T, P>(None, level, model_output, sample, bracket, inside);
    inside.truncate(counts.kept);
    counts
}

/// The room the bracketing pass needs to keep up to `capacity` elements: a whole block (and
/// one vector) past it, as the pass checks the capacity once per block and writes whole
/// vectors.
fn room(capacity: usize) -> usize {
    capacity + BLOCK.max(VECTOR_BLOCK) + LANES
}

/// The vector unit the bracketing pass may use (`None`: portable code only).
#[cfg(target_arch = "x86_64")]
type Simd = Option<avx2::Avx2>;
/// The vector unit the bracketing pass may use (`None`: portable code only).
#[cfg(not(target_arch = "x86_64"))]
type Simd = Option<std::convert::Infallible>;

/// The lanes of the widest vector the pass keeps values with.
const LANES: usize = 8;

/// The bracketing pass with the `x0` formula of one prediction type, a block at a time.
/// `inside` holds [`room`]`(bracket.capacity)` values.
#[inline(always)]
fn scan_with<T: DdimFloat, P: Prediction>(
    simd: Simd,
    level: &NoiseLevel<T::Compute>,
    model_output: &[T],
    sample: &[T],
    bracket: &Bracket<T::Compute>,
    inside: &mut [Bits<T>],
) -> Counts {
    let zero = T::Compute::ZERO;
    // Widened 16-bit inputs (unused for f32 and f64, which are read where they lie).
    let (mut wm, mut ws) = ([zero; BLOCK], [zero; BLOCK]);
    // A copy, so that the coefficients stay in registers across the pass's stores.
    let level = *level;
    let value = move |m, s| P::x0_numerator(&level, s, m).abs();
    let mut counts = Counts::default();
    // The vector pass takes `f32` elements where they lie, in longer blocks; every other
    // block is computed into (or widened into) buffers of BLOCK values.
    let in_place_f32 =
        T::as_compute(model_output).is_some_and(|m| T::Compute::as_f32s(m).is_some());
    let block = if simd.is_some() && in_place_f32 {
        VECTOR_BLOCK
    } else {
        BLOCK
    };
    for (m, s) in model_output.chunks(block).zip(sample.chunks(block)) {
        if counts.kept > bracket.capacity {
            counts.overflow = true;
            break;
        }
        let (m, s) = match (T::as_compute(m), T::as_compute(s)) {
            (Some(m), Some(s)) => (m, s),
            _ => {
                let (wm, ws) = (&mut wm[..m.len()], &mut ws[..m.len()]);
                T::widen_slice(m, wm);
                T::widen_slice(s, ws);
                (&*wm, &*ws)
            }
        };
        if !count_block(simd, m, s, value, bracket, &mut counts, inside) {
            counts.overflow = true;
            break;
        }
    }
    // The capacity is checked before each block; this covers the last one, so that the flag
    // does not depend on where the blocks end.
    counts.overflow |= counts.kept > bracket.capacity;
    counts
}

/// Counts the `value(model output, sample)` of one block (`|x0 numerator|`) and keeps those in
/// the bracket at `inside[counts.kept..]`, which has room for the block and one vector more;
/// `false` if it had not. The block holds at most [`BLOCK`] values unless the vector pass takes
/// it (then at most [`VECTOR_BLOCK`]).
#[inline(always)]
fn count_block<C: Arithmetic>(
    simd: Simd,
    model_output: &[C],
    sample: &[C],
    value: impl Fn(C, C) -> C,
    bracket: &Bracket<C>,
    counts: &mut Counts,
    inside: &mut [C::Bits],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if let Some(simd) = simd {
        if let (Some(m), Some(s), Some(lo), Some(hi), Some(inside)) = (
            C::as_f32s(model_output),
            C::as_f32s(sample),
            C::as_f32(bracket.lo),
            C::as_f32(bracket.hi),
            C::as_u32s(inside),
        ) {
            // The identity for `C = f32`, the only type that gets here.
            let value = |m, s| {
                let v = value(C::from_f32(m), C::from_f32(s));
                v.as_f32().unwrap_or(f32::NAN)
            };
            return simd.count_block(m, s, value, lo, hi, bracket.collect, counts, inside);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = simd;
    let (lo, hi, collect) = (bracket.lo, bracket.hi, bracket.collect);
    count_values(model_output, sample, value, lo, hi, collect, counts, inside)
}

/// Counts the `value(model output, sample)` of at most a block of elements (more are ignored)
/// and keeps those in `[lo, hi]` (if `collect`) at `inside[counts.kept..]`: portable code, the
/// values computed into a buffer, counted with vectorisable loops and kept a group at a time.
/// `false` if `inside` had no room for them.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn count_values<C: Arithmetic>(
    model_output: &[C],
    sample: &[C],
    value: impl Fn(C, C) -> C,
    lo: C,
    hi: C,
    collect: bool,
    counts: &mut Counts,
    inside: &mut [C::Bits],
) -> bool {
    let mut buffer = [C::ZERO; BLOCK];
    let mut n = 0;
    for ((x, &m), &s) in buffer.iter_mut().zip(model_output).zip(sample) {
        *x = value(m, s);
        n += 1;
    }
    // `n` is at most BLOCK, the buffer's length.
    let x = buffer.get(..n).unwrap_or_default();
    // At most BLOCK per block, so 32-bit counters (one vector lane per value) cannot overflow.
    let (mut below, mut up_to, mut nan) = (0u32, 0u32, false);
    for &v in x {
        below += u32::from(v < lo);
        up_to += u32::from(v <= hi);
        nan |= v.is_nan();
    }
    counts.below += below as usize;
    counts.up_to += up_to as usize;
    counts.nan |= nan;
    if up_to == below || !collect {
        return true;
    }
    let Some(room) = inside.get_mut(counts.kept..counts.kept + x.len()) else {
        return false;
    };
    let mut kept = 0;
    for group in x.chunks(GROUP) {
        // Most groups hold none: one vectorised count skips them. The others are copied
        // without branches, each value stored and kept only if inside.
        let any = group
            .iter()
            .fold(0u32, |n, &v| n + u32::from(lo <= v && v <= hi));
        if any > 0 {
            for &v in group {
                // `kept` stays below `room.len()`: it counts values of this block.
                if let Some(slot) = room.get_mut(kept) {
                    *slot = v.to_bits();
                }
                kept += usize::from(lo <= v && v <= hi);
            }
        }
    }
    counts.kept += kept;
    true
}

/// The bracketing pass on AVX2: the block loop compiled for it, and `f32` values counted and
/// kept eight at a time (compare, then move the lanes inside the bracket to the front of the
/// vector with one permutation and store the whole vector; the next store starts where the
/// kept lanes end).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{
        __m256, __m256i, _mm256_andnot_ps, _mm256_castps_si256, _mm256_castsi256_ps,
        _mm256_castsi256_si128, _mm256_cmp_ps, _mm256_cmpgt_epi32, _mm256_cvtepu8_epi32,
        _mm256_extracti128_si256, _mm256_loadu_ps, _mm256_loadu_si256, _mm256_max_epu32,
        _mm256_movemask_epi8, _mm256_movemask_ps, _mm256_or_si256, _mm256_permutevar8x32_ps,
        _mm256_set1_epi32, _mm256_set1_ps, _mm256_setzero_si256, _mm256_storeu_ps,
        _mm256_sub_epi32, _mm256_xor_si256, _mm_add_epi32, _mm_cvtsi128_si32, _mm_loadl_epi64,
        _mm_shuffle_epi32, _CMP_LE_OQ, _CMP_LT_OQ,
    };

    use super::{count_values, scan_with, Bits, Bracket, Counts, Prediction, LANES, VECTOR_BLOCK};
    use crate::kernel::update::NoiseLevel;
    use crate::DdimFloat;

    /// Proof that this CPU has AVX2 and POPCNT: only [`Avx2::detect`] makes one.
    #[derive(Debug, Clone, Copy)]
    pub(super) struct Avx2 {
        _detected: (),
    }

    impl Avx2 {
        /// `Some` if the CPU running this has AVX2 and POPCNT.
        pub(super) fn detect() -> Option<Self> {
            let found = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("popcnt");
            found.then_some(Avx2 { _detected: () })
        }

        /// [`super::scan_with`], compiled for AVX2.
        pub(super) fn scan<T: DdimFloat, P: Prediction>(
            self,
            level: &NoiseLevel<T::Compute>,
            model_output: &[T],
            sample: &[T],
            bracket: &Bracket<T::Compute>,
            inside: &mut [Bits<T>],
        ) -> Counts {
            // SAFETY: `scan_avx2` only requires AVX2 and POPCNT, which `self` proves this CPU
            // has (see `detect`).
            #[allow(unsafe_code)]
            unsafe {
                scan_avx2::<T, P>(self, level, model_output, sample, bracket, inside)
            }
        }

        /// Counts the `values` (bit patterns of non-negative `f32`) below `lo` and copies those
        /// in `[lo, hi]` (bit patterns too) to the front of `out`, which needs room for them
        /// and one vector more: `(below, copied)`, or `None` if it had not.
        pub(super) fn compact(
            self,
            values: &[u32],
            lo: u32,
            hi: u32,
            out: &mut [u32],
        ) -> Option<(usize, usize)> {
            // SAFETY: as in `scan`.
            #[allow(unsafe_code)]
            unsafe {
                compact_avx2(values, lo, hi, out)
            }
        }

        /// [`super::count_block`] for `f32` values.
        #[inline(always)]
        #[allow(clippy::too_many_arguments)]
        pub(super) fn count_block(
            self,
            model_output: &[f32],
            sample: &[f32],
            value: impl Fn(f32, f32) -> f32,
            lo: f32,
            hi: f32,
            collect: bool,
            counts: &mut Counts,
            inside: &mut [u32],
        ) -> bool {
            // SAFETY: as in `scan`.
            #[allow(unsafe_code)]
            unsafe {
                count_block_avx2(model_output, sample, value, lo, hi, collect, counts, inside)
            }
        }
    }

    #[target_feature(enable = "avx2,popcnt")]
    fn scan_avx2<T: DdimFloat, P: Prediction>(
        simd: Avx2,
        level: &NoiseLevel<T::Compute>,
        model_output: &[T],
        sample: &[T],
        bracket: &Bracket<T::Compute>,
        inside: &mut [Bits<T>],
    ) -> Counts {
        scan_with::<T, P>(Some(simd), level, model_output, sample, bracket, inside)
    }

    /// `PACK[mask]` lists the lanes whose bit is set in `mask`, lowest first (then zeros): the
    /// permutation that moves the lanes a comparison selected to the front of a vector. Bytes
    /// (2 KiB in all), widened to lanes as they are loaded.
    static PACK: [[u8; LANES]; 1 << LANES] = pack_table();

    /// Evaluated when compiling: an index out of range would stop the build, not panic.
    const fn pack_table() -> [[u8; LANES]; 1 << LANES] {
        let mut table = [[0; LANES]; 1 << LANES];
        let mut mask = 0;
        while mask < 1 << LANES {
            let (mut lane, mut to) = (0, 0);
            while lane < LANES {
                if mask >> lane & 1 == 1 {
                    table[mask][to] = lane as u8;
                    to += 1;
                }
                lane += 1;
            }
            mask += 1;
        }
        table
    }

    /// The sum of the eight 32-bit lanes.
    #[target_feature(enable = "avx2")]
    fn sum_lanes(v: __m256i) -> usize {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
        _mm_cvtsi128_si32(s) as u32 as usize
    }

    /// [`super::count_block`] for `f32`, eight values at a time.
    #[target_feature(enable = "avx2,popcnt")]
    #[allow(clippy::too_many_arguments)]
    fn count_block_avx2(
        model_output: &[f32],
        sample: &[f32],
        value: impl Fn(f32, f32) -> f32,
        lo: f32,
        hi: f32,
        collect: bool,
        counts: &mut Counts,
        inside: &mut [u32],
    ) -> bool {
        let counted = if collect {
            count_vectors::<true>(model_output, sample, &value, lo, hi, counts, inside)
        } else {
            count_vectors::<false>(model_output, sample, &value, lo, hi, counts, inside)
        };
        let Some(done) = counted else {
            return false;
        };
        if done >= model_output.len() {
            // No values left over (the blocks but the item's last are whole vectors): the
            // portable count below would still set up its buffer.
            return true;
        }
        // The last values, fewer than a vector.
        let m = model_output.get(done..).unwrap_or_default();
        let s = sample.get(done..).unwrap_or_default();
        count_values(m, s, value, lo, hi, collect, counts, inside)
    }

    /// The whole vectors of [`count_block_avx2`]: returns how many values were counted (a
    /// multiple of LANES), or `None` if `inside` had no room for a whole block and a vector
    /// past its `counts.kept` values (or the block is longer than [`VECTOR_BLOCK`]). Keeps the
    /// values only if `COLLECT`; the counts of values up to `hi` are then the counts below `lo`
    /// plus those kept (`lo <= hi`).
    #[target_feature(enable = "avx2,popcnt")]
    #[inline]
    fn count_vectors<const COLLECT: bool>(
        model_output: &[f32],
        sample: &[f32],
        value: &impl Fn(f32, f32) -> f32,
        lo: f32,
        hi: f32,
        counts: &mut Counts,
        inside: &mut [u32],
    ) -> Option<usize> {
        let (vlo, vhi) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
        // Compare results are all-ones (-1) lanes: subtracting them counts. A block has at
        // most VECTOR_BLOCK values, so no lane overflows.
        let (mut below, mut up_to) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        // The largest bit pattern: the values are non-negative, so NaN is above infinity's.
        let mut top = _mm256_setzero_si256();
        if model_output.len().min(sample.len()) > VECTOR_BLOCK {
            return None;
        }
        let start = counts.kept;
        // The block's window of the buffer. A block keeps at most the values it has read:
        // before a vector is stored, `kept <= done < VECTOR_BLOCK`, so the mask below (a power
        // of two less one) changes nothing; it shows the compiler that every store lies inside
        // the window, with no check left in the loop.
        let mut window: Option<&mut [u32; VECTOR_BLOCK + LANES]> = match COLLECT {
            true => Some(
                inside
                    .get_mut(start..start + VECTOR_BLOCK + LANES)?
                    .try_into()
                    .ok()?,
            ),
            false => None,
        };
        let mut kept = 0;
        let mut done = 0;
        for (m, s) in model_output
            .chunks_exact(LANES)
            .zip(sample.chunks_exact(LANES))
        {
            let x: [f32; LANES] = std::array::from_fn(|j| value(m[j], s[j]));
            // SAFETY: `x` is LANES = 8 `f32`, the 32 bytes an unaligned load reads.
            #[allow(unsafe_code)]
            let v = unsafe { _mm256_loadu_ps(x.as_ptr()) };
            top = _mm256_max_epu32(top, _mm256_castps_si256(v));
            let lt = _mm256_cmp_ps::<_CMP_LT_OQ>(v, vlo);
            let le = _mm256_cmp_ps::<_CMP_LE_OQ>(v, vhi);
            below = _mm256_sub_epi32(below, _mm256_castps_si256(lt));
            if COLLECT {
                // Inside: not below `lo`, and up to `hi` (which NaN is not).
                let at = kept & (VECTOR_BLOCK - 1);
                let to = window.as_mut()?.get_mut(at..at + LANES)?.try_into().ok()?;
                kept = at + keep_lanes(v, _mm256_andnot_ps(lt, le), to);
            } else {
                up_to = _mm256_sub_epi32(up_to, _mm256_castps_si256(le));
            }
            done += LANES;
        }
        let below = sum_lanes(below);
        counts.below += below;
        counts.up_to += if COLLECT {
            below + kept
        } else {
            sum_lanes(up_to)
        };
        let infinity = _mm256_set1_epi32(f32::INFINITY.to_bits() as i32);
        // Signed comparison: the sign bits are clear.
        let nan = _mm256_cmpgt_epi32(top, infinity);
        counts.nan |= _mm256_movemask_epi8(nan) != 0;
        counts.kept = start + kept;
        Some(done)
    }
    /// Stores the lanes of `v` that `inside` selects (all-ones lanes) at the front of `to`, the
    /// others after them, and returns how many it selects.
    #[target_feature(enable = "avx2,popcnt")]
    #[inline]
    fn keep_lanes(v: __m256, inside: __m256, to: &mut [u32; LANES]) -> usize {
        // Eight bits, so `mask < 256 = PACK.len()`.
        let mask = _mm256_movemask_ps(inside) as usize & 0xFF;
        // SAFETY: `PACK[mask]` is LANES = 8 bytes, the 8 bytes this unaligned load reads.
        #[allow(unsafe_code)]
        let order = unsafe { _mm_loadl_epi64(PACK[mask].as_ptr().cast()) };
        let packed = _mm256_permutevar8x32_ps(v, _mm256_cvtepu8_epi32(order));
        // SAFETY: `to` is LANES = 8 `u32`, the 32 bytes an unaligned store writes.
        #[allow(unsafe_code)]
        unsafe {
            _mm256_storeu_ps(to.as_mut_ptr().cast(), packed)
        };
        mask.count_ones() as usize
    }

    /// [`Avx2::compact`], eight values at a time. The comparisons are on the bit patterns (as
    /// signed integers: the sign bits are clear), which order the values as numbers do and are
    /// exact even where the thread flushes denormals to zero.
    #[target_feature(enable = "avx2,popcnt")]
    fn compact_avx2(values: &[u32], lo: u32, hi: u32, out: &mut [u32]) -> Option<(usize, usize)> {
        let (vlo, vhi) = (_mm256_set1_epi32(lo as i32), _mm256_set1_epi32(hi as i32));
        // Compare results are all-ones (-1) lanes: subtracting them counts.
        let mut below = _mm256_setzero_si256();
        let mut kept = 0;
        let vectors = values.chunks_exact(LANES);
        let tail = vectors.remainder();
        for chunk in vectors {
            // SAFETY: `chunk` is LANES = 8 `u32`, the 32 bytes an unaligned load reads.
            #[allow(unsafe_code)]
            let v = unsafe { _mm256_loadu_si256(chunk.as_ptr().cast()) };
            let lt = _mm256_cmpgt_epi32(vlo, v);
            let outside = _mm256_or_si256(lt, _mm256_cmpgt_epi32(v, vhi));
            below = _mm256_sub_epi32(below, lt);
            let to = out.get_mut(kept..kept + LANES)?.try_into().ok()?;
            let inside = _mm256_xor_si256(outside, _mm256_set1_epi32(-1));
            kept += keep_lanes(_mm256_castsi256_ps(v), _mm256_castsi256_ps(inside), to);
        }
        let mut below = sum_lanes(below);
        for &bits in tail {
            below += usize::from(bits < lo);
            if lo <= bits && bits <= hi {
                *out.get_mut(kept)? = bits;
                kept += 1;
            }
        }
        Some((below, kept))
    }
}

/// Replaces `out` with the bit patterns of `|raw x0|` of every element, in row-major order, in
/// the compute type: the direct path.
fn abs_raw_x0_bits<T: DdimFloat>(
    update: &Update<T::Compute>,
    model_output: &ArrayViewD<'_, T>,
    sample: &ArrayViewD<'_, T>,
    out: &mut Vec<Bits<T>>,
) {
    out.clear();
    let bits = |(&m, &s): (&T, &T)| update.raw_x0(s.widen(), m.widen()).abs().to_bits();
    match (model_output.as_slice(), sample.as_slice()) {
        (Some(m), Some(s)) if matches!(T::PRECISION, Precision::Reduced) => {
            widened_abs_raw_x0_bits(update, m, s, out);
        }
        (Some(m), Some(s)) => out.extend(m.iter().zip(s).map(bits)),
        _ => out.extend(model_output.iter().zip(sample.iter()).map(bits)),
    }
}

/// [`abs_raw_x0_bits`] of contiguous 16-bit elements, widened a block at a time.
#[inline(never)]
fn widened_abs_raw_x0_bits<T: DdimFloat>(
    update: &Update<T::Compute>,
    model_output: &[T],
    sample: &[T],
    out: &mut Vec<Bits<T>>,
) {
    let zero = T::Compute::ZERO;
    let (mut bm, mut bs) = ([zero; BLOCK], [zero; BLOCK]);
    for (m, s) in model_output.chunks(BLOCK).zip(sample.chunks(BLOCK)) {
        let n = m.len().min(BLOCK);
        let (bm, bs) = (&mut bm[..n], &mut bs[..n]);
        T::widen_slice(m, bm);
        T::widen_slice(s, bs);
        let raw = bm.iter().zip(&*bs).map(|(&m, &s)| update.raw_x0(s, m));
        out.extend(raw.map(|x0| x0.abs().to_bits()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::PredictionType;
    use crate::kernel::update::PrevWeights;

    /// An update whose raw `x0` is the model output itself, so that tests choose `|x0|`.
    fn x0_is_model_output<T: Arithmetic>() -> Update<T> {
        Update::<f32> {
            prediction: PredictionType::Sample,
            level: NoiseLevel {
                sqrt_alpha_bar: 0.6,
                sqrt_one_minus_alpha_bar: 0.8,
            },
            eps_from_clamped_x0: false,
            prev: PrevWeights {
                x0: 0.8,
                eps: 0.6,
                noise: 0.0,
            },
        }
        .widen()
    }

    /// torch.quantile of `|values|` by sorting, independently of the code under test.
    fn reference<T: Arithmetic>(values: &[T], ratio: f64) -> Option<T> {
        let mut v: Vec<f64> = values.iter().map(|x| x.abs().to_f64()).collect();
        if v.is_empty() {
            return None;
        }
        if v.iter().any(|x| x.is_nan()) {
            return Some(T::from_f64(f64::NAN));
        }
        v.sort_by(f64::total_cmp);
        let rank = T::from_f64(ratio).to_f64() * (v.len() - 1) as f64;
        let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
        let weight = T::from_f64(rank - lo as f64);
        Some(lerp(T::from_f64(v[lo]), T::from_f64(v[hi]), weight))
    }

    /// A small deterministic generator (xorshift64*).
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn uniform(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64
        }
        fn normal(&mut self) -> f64 {
            let u = self.uniform().max(1e-300);
            (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * self.uniform()).cos()
        }
    }

    /// The item kinds of the property test, several of them adversarial for a bracket.
    fn item<T: Arithmetic>(kind: usize, len: usize, g: &mut Gen) -> Vec<T> {
        let inf = f64::INFINITY;
        let value = |g: &mut Gen| -> f64 {
            match kind {
                // Plain normal data, signed.
                0 => g.normal() * 3.0,
                // All equal, all zeros (both signs).
                1 => 0.75,
                2 => [0.0, -0.0][g.below(2)],
                // Two values.
                3 => [0.5, 2.0][g.below(2)],
                // Mostly zeros, the rest normal.
                4 if g.below(10) < 9 => 0.0,
                // Concentrated: a few ulps around one value.
                5 => 1.0 + (g.below(8) as f64) * f64::from(f32::EPSILON),
                // Denormals and zeros.
                6 => f64::from(f32::from_bits(g.below(1 << 20) as u32)) * [1.0, 0.0][g.below(2)],
                // Normal data with a few infinities.
                7 if g.below(50) == 0 => [inf, -inf][g.below(2)],
                // Normal data with one NaN somewhere (set below).
                // Heavy ties at one value above the bulk.
                9 if g.below(20) == 0 => 7.0,
                // Wide dynamic range.
                10 => g.normal().exp2() * 1e3,
                _ => g.normal(),
            }
        };
        let mut values: Vec<T> = (0..len).map(|_| T::from_f64(value(g))).collect();
        if kind == 8 && len > 0 {
            let i = g.below(len);
            values[i] = T::from_f64(f64::NAN);
        }
        values
    }

    fn bits_equal<T: Arithmetic>(a: Option<T>, b: Option<T>) -> bool {
        match (a, b) {
            (Some(a), Some(b)) => a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
            (None, None) => true,
            _ => false,
        }
    }

    /// Both paths against the sorting reference, bit for bit, over every item kind, sizes
    /// about the bracketing limit and ratios at and near 0 and 1. Returns how many items the
    /// bracket resolved and how many it was tried on.
    fn property<T: Arithmetic>(seed: u64) -> (usize, usize) {
        let mut g = Gen(seed);
        let update = x0_is_model_output::<T>();
        let ratios = [0.0, 1e-7, 0.001, 0.25, 0.5, 0.95, 0.995, 0.999_999, 1.0];
        let sizes = [1, 2, 3, 7, BRACKET_FROM - 1, BRACKET_FROM, 5003, 40_000];
        let (mut resolved, mut tried) = (0, 0);
        for kind in 0..12 {
            for &len in &sizes {
                let values = item::<T>(kind, len, &mut g);
                let zeros = vec![T::ZERO; len];
                let ratio = ratios[g.below(ratios.len())];
                let expected = reference(&values, ratio);
                let mut scratch = Vec::new();
                // The direct path.
                scratch.extend(values.iter().map(|v| v.abs().to_bits()));
                let direct = quantile::<T>(&mut scratch, ratio);
                assert!(
                    bits_equal(direct, expected),
                    "direct: kind {kind} len {len} ratio {ratio}: {direct:?} != {expected:?}"
                );
                // The bracket, when it resolves.
                if len >= BRACKET_FROM {
                    tried += 1;
                    scratch.clear();
                    if let Some(q) =
                        bracketed_quantile(&update, &values, &zeros, ratio, &mut scratch)
                    {
                        resolved += 1;
                        assert!(
                            bits_equal(Some(q), expected),
                            "bracket: kind {kind} len {len} ratio {ratio}: {q:?} != {expected:?}"
                        );
                    }
                }
                // The whole item, whichever path it takes.
                fn view<T>(v: &[T]) -> ArrayViewD<'_, T> {
                    ndarray::ArrayView1::from(v).into_dyn()
                }
                let s = item_threshold(
                    &update,
                    &view(&values),
                    &view(&zeros),
                    ratio,
                    T::from_f64(1e30),
                    &mut scratch,
                );
                let want = threshold_of(expected, T::from_f64(1e30));
                assert!(
                    bits_equal(Some(s), Some(want)),
                    "item: kind {kind} len {len} ratio {ratio}: {s:?} != {want:?}"
                );
            }
        }
        (resolved, tried)
    }

    #[test]
    fn bracketed_selection_matches_sorting_bit_for_bit() {
        let (mut resolved, mut tried) = (0, 0);
        for seed in 1..=6 {
            let (r, t) = property::<f32>(seed);
            let (r64, t64) = property::<f64>(seed + 100);
            resolved += r + r64;
            tried += t + t64;
        }
        // The bracket is not a dead path: it resolves most items (all but the adversarial
        // ones whose bracket ends sit in long runs of equal values).
        assert!(
            resolved * 4 > tried * 3,
            "bracket resolved {resolved} of {tried} items"
        );
    }

    /// The selection among kept values (narrowed by its own bracket on AVX2) against a plain
    /// selection, bit for bit: several kinds of values (ties and runs of equal values among
    /// them), ranks at both ends and inside, with and without the next one; the buffer keeps
    /// its length and capacity. On AVX2 the narrowing must resolve nearly all normal sets, so
    /// that the test covers it and not only its fallback.
    #[test]
    fn kept_selection_matches_plain_selection() {
        let mut g = Gen(11);
        let (mut narrowed_sets, mut normal_sets) = (0, 0);
        for kind in [0, 1, 3, 4, 5, 7, 9, 10] {
            for len in [NARROW_FROM - 1, NARROW_FROM, 3_442, 20_001] {
                let values: Vec<u32> = item::<f32>(kind, len, &mut g)
                    .iter()
                    .map(|v| v.abs().to_bits())
                    .collect();
                for index in [0, 1, len / 3, len * 19 / 20, len - 2, len - 1] {
                    for next in [false, true].into_iter().filter(|&n| !n || index + 1 < len) {
                        let want = lo_and_next(&mut values.clone(), index, next);
                        let mut scratch = Vec::with_capacity(3 * len);
                        scratch.extend_from_slice(&values);
                        let capacity = scratch.capacity();
                        let got = select_kept::<f32>(&mut scratch, index, next);
                        let case = format!("kind {kind} len {len} index {index} next {next}");
                        assert_eq!(got, want, "{case}");
                        assert_eq!(
                            (scratch.len(), scratch.capacity()),
                            (len, capacity),
                            "{case}"
                        );
                        if kind == 0 && len >= NARROW_FROM {
                            normal_sets += 1;
                            narrowed_sets += usize::from(narrows(&values, index, next));
                        }
                    }
                }
            }
        }
        if narrowing_applies() {
            assert!(
                narrowed_sets * 10 >= normal_sets * 9,
                "narrowed {narrowed_sets} of {normal_sets} normal sets"
            );
        }
    }

    /// Whether this CPU narrows the selection among kept `f32` values at all.
    fn narrowing_applies() -> bool {
        #[cfg(target_arch = "x86_64")]
        return avx2::Avx2::detect().is_some();
        #[cfg(not(target_arch = "x86_64"))]
        return false;
    }

    /// Whether the narrowing resolves the selection in `values` (with room behind them).
    fn narrows(values: &[u32], index: usize, next: bool) -> bool {
        let mut scratch = Vec::with_capacity(3 * values.len());
        scratch.extend_from_slice(values);
        narrowed::<f32>(&mut scratch, index, next).is_some()
    }

    #[test]
    fn bracket_resolves_normal_items_and_keeps_few_elements() {
        let update = x0_is_model_output::<f32>();
        let mut g = Gen(7);
        let mut scratch = Vec::new();
        // The bracket is narrower (in ranks) towards the ends: the share of the item it may
        // keep at each ratio, with some room (at 0.995 its upper end is infinity).
        for &(ratio, share) in &[(0.5, 0.15), (0.9, 0.10), (0.95, 0.08), (0.995, 0.04)] {
            let values: Vec<f32> = (0..65_536).map(|_| g.normal() as f32).collect();
            let zeros = vec![0.0; values.len()];
            let q = bracketed_quantile(&update, &values, &zeros, ratio, &mut scratch);
            assert!(bits_equal(q, reference(&values, ratio)), "ratio {ratio}");
            assert!(
                (scratch.len() as f64) < share * values.len() as f64,
                "ratio {ratio}: kept {} elements",
                scratch.len()
            );
        }
    }

    /// An ε-prediction update with the given `√α_t`: `x0 = (x_t − 0.8 ε) / √α_t`.
    fn epsilon_update<T: Arithmetic>(sqrt_alpha_bar: f64) -> Update<T> {
        Update {
            prediction: PredictionType::Epsilon,
            level: NoiseLevel {
                sqrt_alpha_bar: T::from_f64(sqrt_alpha_bar),
                sqrt_one_minus_alpha_bar: T::from_f64(0.8),
            },
            eps_from_clamped_x0: false,
            prev: PrevWeights {
                x0: T::ONE,
                eps: T::ZERO,
                noise: T::ZERO,
            },
        }
    }

    /// The bracket of an ε-prediction item works on the numerators and divides only the two
    /// order statistics: it must find the direct path's quantile of every `|x0|`, bit for
    /// bit, also when the division overflows to infinity (tiny `√α_t`), and give way to the
    /// direct path when `√α_t` is zero.
    fn epsilon_property<T: Arithmetic>(seed: u64, divisors: &[f64]) -> (usize, usize) {
        let mut g = Gen(seed);
        let ratios = [0.0, 0.25, 0.95, 0.995, 1.0];
        let (mut resolved, mut tried) = (0, 0);
        for &divisor in divisors {
            let update = epsilon_update::<T>(divisor);
            for kind in 0..12 {
                for len in [BRACKET_FROM, 5003, 40_000] {
                    let model_output = item::<T>(kind, len, &mut g);
                    let sample = item::<T>(0, len, &mut g);
                    let ratio = ratios[g.below(ratios.len())];
                    let mut direct: Vec<T::Bits> = model_output
                        .iter()
                        .zip(&sample)
                        .map(|(&m, &s)| update.raw_x0(s, m).abs().to_bits())
                        .collect();
                    let expected = quantile::<T>(&mut direct, ratio);
                    let mut scratch = Vec::new();
                    let q =
                        bracketed_quantile(&update, &model_output, &sample, ratio, &mut scratch);
                    if divisor == 0.0 {
                        assert!(q.is_none(), "a zero divisor must take the direct path");
                        continue;
                    }
                    tried += 1;
                    if let Some(q) = q {
                        resolved += 1;
                        assert!(
                            bits_equal(Some(q), expected),
                            "divisor {divisor} kind {kind} len {len} ratio {ratio}: \
                             {q:?} != {expected:?}"
                        );
                    }
                }
            }
        }
        (resolved, tried)
    }

    #[test]
    fn epsilon_bracket_matches_the_direct_path_bit_for_bit() {
        let (mut resolved, mut tried) = (0, 0);
        for seed in 1..=3 {
            // 1e-39 is below f32's smallest normal number: most quotients overflow.
            let (r, t) = epsilon_property::<f32>(seed, &[1.0, 0.7, 0.013, 1e-39, 0.0]);
            let (r64, t64) = epsilon_property::<f64>(seed + 50, &[0.7, 3e-3, 1e-310, 0.0]);
            resolved += r + r64;
            tried += t + t64;
        }
        assert!(
            resolved * 4 > tried * 3,
            "bracket resolved {resolved} of {tried} items"
        );
    }

    /// The AVX2 pass and the portable one count, flag and keep the same elements, for block
    /// lengths around the vector width, brackets that keep nothing, some or too many
    /// elements, and NaN.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_and_portable_passes_agree() {
        let Some(simd) = avx2::Avx2::detect() else {
            eprintln!("no AVX2 on this CPU: only the portable pass runs here");
            return;
        };
        let update = x0_is_model_output::<f32>();
        let mut g = Gen(11);
        for len in [1, 7, 8, 9, 255, 256, 257, 1000, 2047, 2048, 2049, 5003] {
            for kind in [0, 1, 3, 8, 9] {
                let values = item::<f32>(kind, len, &mut g);
                let zeros = vec![0.0f32; len];
                let (a, b) = (g.normal().abs() as f32, g.normal().abs() as f32);
                for (lo, hi, collect, capacity) in [
                    (a.min(b), a.max(b), true, len),
                    (a.min(b), a.max(b), true, 3),
                    (0.0, f32::INFINITY, true, len),
                    (0.75, 0.75, false, len),
                    (5.0, 6.0, true, len),
                ] {
                    let bracket = Bracket {
                        lo,
                        hi,
                        collect,
                        capacity,
                    };
                    let run = |simd| {
                        use crate::kernel::update::SamplePrediction;
                        let mut inside = vec![0u32; room(capacity)];
                        let level = &update.level;
                        let counts = scan_with::<f32, SamplePrediction>(
                            simd,
                            level,
                            &values,
                            &zeros,
                            &bracket,
                            &mut inside,
                        );
                        inside.truncate(counts.kept);
                        inside.sort_unstable();
                        (counts, inside)
                    };
                    let (portable, kept) = run(None);
                    let (vector, vector_kept) = run(Some(simd));
                    let case = format!("len {len} kind {kind} bracket [{lo}, {hi}] {capacity}");
                    assert_eq!(portable.overflow, vector.overflow, "{case}");
                    if portable.overflow {
                        continue;
                    }
                    assert_eq!(
                        (portable.below, portable.up_to, portable.nan, portable.kept),
                        (vector.below, vector.up_to, vector.nan, vector.kept),
                        "{case}"
                    );
                    assert_eq!(kept, vector_kept, "{case}");
                }
            }
        }
    }

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
