//! The 16-bit element types of the `half` feature, `half::f16` and `half::bf16`.
//!
//! - Every call on 16-bit arrays gives, bit for bit, what the same call gives on the exactly
//!   widened `f32` arrays with each output rounded once to the 16-bit type: every prediction
//!   type, `clip_sample`, thresholding, `use_clipped_model_output`, eta with given noise, a
//!   `rand` generator (same seed, same result) and the torch generator; standard, transposed and
//!   sliced layouts; `step_batch`, `inverse_step`, the slice calls, `add_noise`,
//!   `get_velocity`, guidance, `slerp` and the inpainting blend.
//! - `TorchGenerator` draws what `torch.randn(..., dtype=torch.float16 / torch.bfloat16)`
//!   draws, bit for bit, and leaves the generator where torch leaves it (fixture written by
//!   `scripts/golden_torch_half.py`, torch 2.15.0).
//! - Accuracy: on the same fixture's inputs, the crate's 16-bit step is at least as close to the
//!   exact (float64) step as diffusers' own float16 / bfloat16 step, in absolute value and in
//!   units in the last place.
#![cfg(feature = "half")]

use ddim::half::{bf16, f16};
use ddim::ndarray::{s, Array, ArrayD, ArrayRef, ArrayViewD, ArrayViewMutD, Dimension, IxDyn};
use ddim::rand::rngs::StdRng;
use ddim::rand::SeedableRng;
use ddim::{
    classifier_free_guidance, classifier_free_guidance_into, slerp, DdimConfig, DdimFloat,
    DdimScheduler, DdimSchedulerOutput, NoiseSource, PredictionType, StepOptions, TorchCpuKernel,
    TorchGenerator,
};
use serde_json::Value;

use crate::common::{config, golden, name, random_array, scheduler, tensor};

/// Whether the C library is glibc, the one torch's Linux build calls: the draws that go through
/// `log`, `log1p`, `sin` and `cos` are compared bit for bit there, within 4 units in the last
/// place elsewhere.
const GLIBC: bool = cfg!(all(target_os = "linux", target_env = "gnu"));

/// What the tests need of a 16-bit type.
trait Half16: DdimFloat {
    /// The fixture's name of the type.
    const NAME: &'static str;
    /// The bit pattern.
    fn bits(self) -> u16;
    /// The value of a bit pattern.
    fn from_bits(bits: u16) -> Self;
}

impl Half16 for f16 {
    const NAME: &'static str = "f16";
    fn bits(self) -> u16 {
        self.to_bits()
    }
    fn from_bits(bits: u16) -> Self {
        f16::from_bits(bits)
    }
}

impl Half16 for bf16 {
    const NAME: &'static str = "bf16";
    fn bits(self) -> u16 {
        self.to_bits()
    }
    fn from_bits(bits: u16) -> Self {
        bf16::from_bits(bits)
    }
}

/// Runs a generic test for both 16-bit types.
macro_rules! both_types {
    ($($test:ident => $generic:ident;)*) => {
        $(
            #[test]
            fn $test() {
                $generic::<f16>();
                $generic::<bf16>();
            }
        )*
    };
}

// ---------------------------------------------------------------------------------------------
// Conversions and comparisons
// ---------------------------------------------------------------------------------------------

/// The values widened to `f32` (exact), as a standard-layout array.
fn widen<H: Half16, D: Dimension>(a: &ArrayRef<H, D>) -> Array<f32, D> {
    a.mapv(|v| v.to_f64() as f32)
}

/// Asserts that `ours` is, bit for bit, `reference` (an `f32` result) rounded once to `H`.
fn assert_rounded<H: Half16, D: Dimension, E: Dimension>(
    what: &str,
    ours: &ArrayRef<H, D>,
    reference: &ArrayRef<f32, E>,
) {
    assert_eq!(ours.shape(), reference.shape(), "{what}: shape");
    let pairs = ours.iter().zip(reference.iter()).enumerate();
    for (i, (&o, &r)) in pairs {
        let expected = H::from_f32(r);
        assert!(
            o.bits() == expected.bits(),
            "{what} ({}): element {i} is {o} ({:#06x}), the f32 result {r} rounds to {expected} \
             ({:#06x})",
            H::NAME,
            o.bits(),
            expected.bits(),
        );
    }
}

/// Asserts equal bits, element by element.
fn assert_same_bits<H: Half16, D: Dimension, E: Dimension>(
    what: &str,
    ours: &ArrayRef<H, D>,
    expected: &ArrayRef<H, E>,
) {
    assert_eq!(ours.shape(), expected.shape(), "{what}: shape");
    let ours: Vec<u16> = ours.iter().map(|v| v.bits()).collect();
    let expected: Vec<u16> = expected.iter().map(|v| v.bits()).collect();
    assert_eq!(ours, expected, "{what} ({})", H::NAME);
}

/// Uniform values in `[-range, range]` rounded to `H` (so exactly representable).
fn random<H: Half16>(shape: &[usize], rng: &mut StdRng, range: f64) -> ArrayD<H> {
    random_array::<f32, _>(shape, rng, range).mapv(H::from_f32)
}

// ---------------------------------------------------------------------------------------------
// Layouts
// ---------------------------------------------------------------------------------------------

/// The logical shape of the arrays of the layout tests: batch 2.
const SHAPE: [usize; 4] = [2, 3, 6, 5];

/// How an input array lies in memory.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Layout {
    /// Row-major and contiguous.
    Standard,
    /// The transpose of a row-major array (column-major).
    Transposed,
    /// Every other row of a larger array, and not all of its columns.
    Sliced,
}

const LAYOUTS: [Layout; 3] = [Layout::Standard, Layout::Transposed, Layout::Sliced];

impl Layout {
    /// The shape of the array a view of logical shape [`SHAPE`] is taken from.
    fn backing_shape(self) -> Vec<usize> {
        let [b, c, h, w] = SHAPE;
        match self {
            Layout::Standard => SHAPE.to_vec(),
            Layout::Transposed => vec![w, h, c, b],
            Layout::Sliced => vec![b, c, 2 * h, w + 2],
        }
    }

    /// A backing array of random values.
    fn random<H: Half16>(self, rng: &mut StdRng, range: f64) -> ArrayD<H> {
        random(&self.backing_shape(), rng, range)
    }

    /// The view of logical shape [`SHAPE`].
    fn view<H>(self, backing: &ArrayD<H>) -> ArrayViewD<'_, H> {
        let view = backing.view();
        match self {
            Layout::Standard => view,
            Layout::Transposed => view.reversed_axes(),
            Layout::Sliced => view.slice_move(s![.., .., ..;2, 1..=SHAPE[3]]).into_dyn(),
        }
    }

    /// The mutable view of logical shape [`SHAPE`].
    fn view_mut<H>(self, backing: &mut ArrayD<H>) -> ArrayViewMutD<'_, H> {
        let view = backing.view_mut();
        match self {
            Layout::Standard => view,
            Layout::Transposed => view.reversed_axes(),
            Layout::Sliced => view.slice_move(s![.., .., ..;2, 1..=SHAPE[3]]).into_dyn(),
        }
    }
}

#[test]
fn layouts_have_the_logical_shape_and_the_intended_memory_order() {
    let mut rng = StdRng::seed_from_u64(0);
    for layout in LAYOUTS {
        let backing: ArrayD<f16> = layout.random(&mut rng, 1.0);
        let view = layout.view(&backing);
        assert_eq!(view.shape(), SHAPE, "{layout:?}");
        assert_eq!(
            view.is_standard_layout(),
            layout == Layout::Standard,
            "{layout:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Steps
// ---------------------------------------------------------------------------------------------

/// Where a step's noise comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Source {
    /// No noise, eta 0.
    None,
    /// A given array, eta 0.7.
    Given,
    /// A `rand` generator, eta 0.7.
    Rng,
    /// The torch generator, eta 0.7.
    Torch,
}

const SOURCES: [Source; 4] = [Source::None, Source::Given, Source::Rng, Source::Torch];

impl Source {
    fn eta(self) -> f64 {
        if self == Source::None {
            0.0
        } else {
            0.7
        }
    }
}

/// Configurations: every prediction type without clipping, with `clip_sample` and with dynamic
/// thresholding.
fn step_configs() -> Vec<(String, DdimConfig)> {
    let predictions = [
        PredictionType::Epsilon,
        PredictionType::Sample,
        PredictionType::VPrediction,
    ];
    let mut out = Vec::new();
    for prediction_type in predictions {
        let base = DdimConfig {
            prediction_type,
            clip_sample: false,
            ..DdimConfig::default()
        };
        out.push((format!("{prediction_type:?}"), base.clone()));
        out.push((
            format!("{prediction_type:?} clip 1.2"),
            DdimConfig {
                clip_sample: true,
                clip_sample_range: 1.2,
                ..base.clone()
            },
        ));
        out.push((
            format!("{prediction_type:?} thresholding"),
            DdimConfig {
                thresholding: true,
                dynamic_thresholding_ratio: 0.9,
                sample_max_value: 1.6,
                ..base
            },
        ));
    }
    out
}

/// The noise sources of one step, seeded alike for the 16-bit and the `f32` run.
struct Sources<'a, H> {
    given: ArrayViewD<'a, H>,
    rng: StdRng,
    torch: TorchGenerator,
    use_clipped_model_output: bool,
}

impl<'a, H: Half16> Sources<'a, H> {
    fn new(given: ArrayViewD<'a, H>, seed: u64, use_clipped_model_output: bool) -> Self {
        Sources {
            given,
            rng: StdRng::seed_from_u64(seed),
            torch: TorchGenerator::manual_seed(seed),
            use_clipped_model_output,
        }
    }

    fn options(&mut self, source: Source) -> StepOptions<'_, H> {
        let noise = match source {
            Source::None => NoiseSource::None,
            Source::Given => NoiseSource::given(&self.given),
            Source::Rng => NoiseSource::Rng(&mut self.rng),
            Source::Torch => NoiseSource::Torch(&mut self.torch),
        };
        StepOptions {
            eta: source.eta(),
            noise,
            use_clipped_model_output: self.use_clipped_model_output,
        }
    }
}

/// The `f32` counterpart of a 16-bit step's options: the widened given noise, a `rand`
/// generator with the same seed, or the widened 16-bit draw of a torch generator with the same
/// seed (a 16-bit step draws its torch noise in the 16-bit type, as diffusers does).
struct F32Sources {
    given: ArrayD<f32>,
    rng: StdRng,
    torch_draw: ArrayD<f32>,
    use_clipped_model_output: bool,
}

impl F32Sources {
    fn new<H: Half16>(given: &ArrayViewD<'_, H>, seed: u64, ucmo: bool) -> (Self, TorchGenerator) {
        let mut torch = TorchGenerator::manual_seed(seed);
        let draw: ArrayD<H> = torch.randn(IxDyn(given.shape()));
        let sources = F32Sources {
            given: widen(given),
            rng: StdRng::seed_from_u64(seed),
            torch_draw: widen(&draw),
            use_clipped_model_output: ucmo,
        };
        (sources, torch)
    }

    fn options(&mut self, source: Source) -> StepOptions<'_, f32> {
        let noise = match source {
            Source::None => NoiseSource::None,
            Source::Given => NoiseSource::given(&self.given),
            Source::Rng => NoiseSource::Rng(&mut self.rng),
            Source::Torch => NoiseSource::given(&self.torch_draw),
        };
        StepOptions {
            eta: source.eta(),
            noise,
            use_clipped_model_output: self.use_clipped_model_output,
        }
    }
}

/// Every step call on 16-bit arrays, against the `f32` step on the widened arrays.
fn steps_are_the_f32_steps_rounded_once<H: Half16>() {
    let mut rng = StdRng::seed_from_u64(16);
    for (label, config) in step_configs() {
        let s = scheduler(config, 10);
        let n = s.timesteps().len();
        let picks = [s.timesteps()[0], s.timesteps()[n / 2], s.timesteps()[n - 1]];
        for layout in LAYOUTS {
            let (mb, xb, zb) = (
                layout.random::<H>(&mut rng, 3.0),
                layout.random::<H>(&mut rng, 2.0),
                layout.random::<H>(&mut rng, 2.5),
            );
            let (m, x, z) = (layout.view(&mb), layout.view(&xb), layout.view(&zb));
            let (m32, x32) = (widen(&m), widen(&x));
            for ucmo in [false, true] {
                for source in SOURCES {
                    for &t in &picks {
                        let case = format!("{label}, {layout:?}, ucmo {ucmo}, {source:?}, t {t}");
                        let seed = t as u64 + 7;

                        let mut ours_sources = Sources::new(z.view(), seed, ucmo);
                        let ours = s
                            .step_with(&m, t, &x, ours_sources.options(source))
                            .expect("16-bit step");
                        let (mut f32_sources, mut torch_after) = F32Sources::new(&z, seed, ucmo);
                        let expected = s
                            .step_with(&m32, t, &x32, f32_sources.options(source))
                            .expect("f32 step");
                        assert_rounded(
                            &format!("prev, {case}"),
                            &ours.prev_sample,
                            &expected.prev_sample,
                        );
                        assert_rounded(
                            &format!("x0, {case}"),
                            &ours.pred_original_sample,
                            &expected.pred_original_sample,
                        );
                        if source == Source::Torch {
                            // The step drew exactly one 16-bit randn of the sample's shape.
                            assert_eq!(ours_sources.torch, torch_after, "{case}: generator");
                        } else {
                            torch_after = TorchGenerator::manual_seed(seed);
                            assert_eq!(ours_sources.torch, torch_after, "{case}: untouched");
                        }

                        // The buffer and in-place forms give the same bits.
                        let mut out = DdimSchedulerOutput::<H, _>::zeros(IxDyn(&SHAPE));
                        let mut into_sources = Sources::new(z.view(), seed, ucmo);
                        s.step_into(
                            &m,
                            t,
                            &x,
                            into_sources.options(source),
                            &mut out.prev_sample,
                            &mut out.pred_original_sample,
                        )
                        .expect("step_into");
                        assert_same_bits(
                            &format!("step_into, {case}"),
                            &out.prev_sample,
                            &ours.prev_sample,
                        );
                        assert_same_bits(
                            &format!("step_into x0, {case}"),
                            &out.pred_original_sample,
                            &ours.pred_original_sample,
                        );
                        let mut latents = xb.clone();
                        let mut in_place_sources = Sources::new(z.view(), seed, ucmo);
                        let mut view = layout.view_mut(&mut latents);
                        s.step_in_place(&m, t, &mut view, in_place_sources.options(source))
                            .expect("step_in_place");
                        assert_same_bits(
                            &format!("step_in_place, {case}"),
                            &view,
                            &ours.prev_sample,
                        );
                    }
                }
            }
        }
    }
}

/// Step options with the given noise source.
fn options<T>(eta: f64, noise: NoiseSource<'_, T>, ucmo: bool) -> StepOptions<'_, T> {
    StepOptions {
        eta,
        noise,
        use_clipped_model_output: ucmo,
    }
}

/// `step` (eta 0), `inverse_step` and `step_batch` on 16-bit arrays.
fn other_step_calls_are_the_f32_calls_rounded_once<H: Half16>() {
    let mut rng = StdRng::seed_from_u64(17);
    for (label, config) in step_configs() {
        let s = scheduler(config, 10);
        let ts = s.timesteps().to_vec();
        for layout in LAYOUTS {
            let (mb, xb, zb) = (
                layout.random::<H>(&mut rng, 3.0),
                layout.random::<H>(&mut rng, 2.0),
                layout.random::<H>(&mut rng, 1.0),
            );
            let (m, x, z) = (layout.view(&mb), layout.view(&xb), layout.view(&zb));
            let (m32, x32, z32) = (widen(&m), widen(&x), widen(&z));
            let case = format!("{label}, {layout:?}");

            let ours = s.step(&m, ts[3], &x).expect("step");
            let expected = s.step(&m32, ts[3], &x32).expect("f32 step");
            assert_rounded(
                &format!("step, {case}"),
                &ours.prev_sample,
                &expected.prev_sample,
            );

            for &t in &[ts[0], ts[4], ts[9]] {
                let ours = s.inverse_step(&m, t, &x).expect("inverse");
                let expected = s.inverse_step(&m32, t, &x32).expect("f32 inverse");
                let what = format!("inverse at {t}, {case}");
                assert_rounded(&what, &ours.prev_sample, &expected.prev_sample);
                assert_rounded(
                    &what,
                    &ours.pred_original_sample,
                    &expected.pred_original_sample,
                );
            }

            let timesteps = [ts[1], ts[8]];
            for ucmo in [false, true] {
                let given = |noise| options(0.8, noise, ucmo);
                let given32 = |noise| options(0.8, noise, ucmo);
                let ours = s
                    .step_batch(&m, &timesteps, &x, given(NoiseSource::given(&z)))
                    .expect("batch");
                let expected = s
                    .step_batch(&m32, &timesteps, &x32, given32(NoiseSource::given(&z32)))
                    .expect("f32 batch");
                let what = format!("step_batch given, ucmo {ucmo}, {case}");
                assert_rounded(&what, &ours.prev_sample, &expected.prev_sample);
                assert_rounded(
                    &what,
                    &ours.pred_original_sample,
                    &expected.pred_original_sample,
                );

                let (mut r16, mut r32) = (StdRng::seed_from_u64(3), StdRng::seed_from_u64(3));
                let ours = s
                    .step_batch(&m, &timesteps, &x, given(NoiseSource::Rng(&mut r16)))
                    .expect("batch");
                let expected = s
                    .step_batch(&m32, &timesteps, &x32, given32(NoiseSource::Rng(&mut r32)))
                    .expect("f32 batch");
                let what = format!("step_batch rng, ucmo {ucmo}, {case}");
                assert_rounded(&what, &ours.prev_sample, &expected.prev_sample);
                assert_rounded(
                    &what,
                    &ours.pred_original_sample,
                    &expected.pred_original_sample,
                );
            }
        }
    }
}

/// The slice calls and `NoiseSource::given_slice` on 16-bit slices.
fn slice_calls_are_the_f32_calls_rounded_once<H: Half16>() {
    let mut rng = StdRng::seed_from_u64(18);
    let shape = [2, 4, 5, 3];
    let len = 120;
    let to_vec = |a: ArrayD<H>| a.iter().copied().collect::<Vec<H>>();
    let widen_vec = |v: &[H]| v.iter().map(|h| h.to_f64() as f32).collect::<Vec<f32>>();
    for (label, config) in step_configs() {
        let s = scheduler(config, 10);
        let t = s.timesteps()[2];
        let m = to_vec(random(&shape, &mut rng, 3.0));
        let x = to_vec(random(&shape, &mut rng, 2.0));
        let z = to_vec(random(&shape, &mut rng, 1.0));
        let (m32, x32, z32) = (widen_vec(&m), widen_vec(&x), widen_vec(&z));

        let (mut prev, mut x0) = (vec![H::ZERO; len], vec![H::ZERO; len]);
        let noise = NoiseSource::given_slice(&z, &shape).expect("noise");
        let opts = options(0.5, noise, true);
        s.step_slices(&m, t, &x, &shape, opts, &mut prev, &mut x0)
            .expect("step_slices");
        let (mut prev32, mut x032) = (vec![0.0f32; len], vec![0.0f32; len]);
        let noise = NoiseSource::given_slice(&z32, &shape).expect("noise");
        let opts = options(0.5, noise, true);
        s.step_slices(&m32, t, &x32, &shape, opts, &mut prev32, &mut x032)
            .expect("f32 step_slices");
        let as_array = |v: Vec<f32>| ArrayD::from_shape_vec(IxDyn(&shape), v).expect("shape");
        let as_h = |v: Vec<H>| ArrayD::from_shape_vec(IxDyn(&shape), v).expect("shape");
        let (prev, x0) = (as_h(prev), as_h(x0));
        assert_rounded(
            &format!("step_slices, {label}"),
            &prev,
            &as_array(prev32.clone()),
        );
        assert_rounded(&format!("step_slices x0, {label}"), &x0, &as_array(x032));

        let mut latents = x.clone();
        let noise = NoiseSource::given_slice(&z, &shape).expect("noise");
        s.step_slice_in_place(&m, t, &mut latents, &shape, options(0.5, noise, true))
            .expect("step_slice_in_place");
        assert_same_bits(
            &format!("step_slice_in_place, {label}"),
            &as_h(latents),
            &prev,
        );

        let timesteps = [t, s.timesteps()[7]];
        let mut noisy = vec![H::ZERO; len];
        s.add_noise_slices(&x, &z, &timesteps, &shape, &mut noisy)
            .expect("add_noise_slices");
        let mut noisy32 = vec![0.0f32; len];
        s.add_noise_slices(&x32, &z32, &timesteps, &shape, &mut noisy32)
            .expect("f32 add_noise_slices");
        assert_rounded(
            &format!("add_noise_slices, {label}"),
            &as_h(noisy),
            &as_array(noisy32),
        );
    }
}

/// Contiguous arrays of several blocks of the kernel (and a partial one), where 16-bit values
/// are widened and narrowed a block at a time.
fn long_steps_are_the_f32_steps_rounded_once<H: Half16>() {
    let mut rng = StdRng::seed_from_u64(20);
    let shape = [2, 4, 19, 17];
    for (label, config) in step_configs() {
        let s = scheduler(config, 10);
        let t = s.timesteps()[3];
        let (m, x, z) = (
            random::<H>(&shape, &mut rng, 3.0),
            random::<H>(&shape, &mut rng, 2.0),
            random::<H>(&shape, &mut rng, 1.0),
        );
        let (m32, x32) = (widen(&m), widen(&x));
        for source in [Source::None, Source::Given, Source::Rng] {
            let case = format!("{label}, {source:?}, {shape:?}");
            let mut ours_sources = Sources::new(z.view(), 5, true);
            let ours = s
                .step_with(&m, t, &x, ours_sources.options(source))
                .expect("16-bit step");
            let (mut f32_sources, _) = F32Sources::new(&z.view(), 5, true);
            let expected = s
                .step_with(&m32, t, &x32, f32_sources.options(source))
                .expect("f32 step");
            assert_rounded(
                &format!("prev, {case}"),
                &ours.prev_sample,
                &expected.prev_sample,
            );
            assert_rounded(
                &format!("x0, {case}"),
                &ours.pred_original_sample,
                &expected.pred_original_sample,
            );
            let mut latents = x.clone();
            let mut in_place_sources = Sources::new(z.view(), 5, true);
            s.step_in_place(&m, t, &mut latents, in_place_sources.options(source))
                .expect("in place");
            assert_same_bits(&format!("in place, {case}"), &latents, &ours.prev_sample);
        }
    }
}

both_types! {
    long_contiguous_steps_are_the_f32_steps_rounded_once => long_steps_are_the_f32_steps_rounded_once;
    steps_of_16_bit_arrays_are_the_f32_steps_rounded_once => steps_are_the_f32_steps_rounded_once;
    inverse_step_step_and_step_batch_are_the_f32_calls_rounded_once =>
        other_step_calls_are_the_f32_calls_rounded_once;
    slice_calls_of_16_bit_slices_are_the_f32_calls_rounded_once =>
        slice_calls_are_the_f32_calls_rounded_once;
    pipeline_arithmetic_is_the_f32_arithmetic_rounded_once =>
        pipeline_arithmetic_matches_f32;
    torch_randn_into_any_layout_is_randn => randn_into_any_layout_is_randn;
}

// ---------------------------------------------------------------------------------------------
// Noising, guidance, slerp, inpainting
// ---------------------------------------------------------------------------------------------

/// `add_noise`, `get_velocity`, `scale_model_input`, guidance, `slerp` and `blend_inpainting`.
fn pipeline_arithmetic_matches_f32<H: Half16>() {
    let mut rng = StdRng::seed_from_u64(19);
    let s = scheduler(DdimConfig::default(), 10);
    let ts = s.timesteps().to_vec();
    for layout in LAYOUTS {
        let (ab, bb, cb) = (
            layout.random::<H>(&mut rng, 2.0),
            layout.random::<H>(&mut rng, 2.0),
            layout.random::<H>(&mut rng, 2.0),
        );
        let (a, b, c) = (layout.view(&ab), layout.view(&bb), layout.view(&cb));
        let (a32, b32, c32) = (widen(&a), widen(&b), widen(&c));
        let case = format!("{layout:?}");
        let timesteps = [ts[1], ts[6]];

        let ours = s.add_noise(&a, &b, &timesteps).expect("add_noise");
        let expected = s.add_noise(&a32, &b32, &timesteps).expect("f32");
        assert_rounded(&format!("add_noise, {case}"), &ours, &expected);
        let ours = s.get_velocity(&a, &b, &timesteps).expect("get_velocity");
        let expected = s.get_velocity(&a32, &b32, &timesteps).expect("f32");
        assert_rounded(&format!("get_velocity, {case}"), &ours, &expected);
        assert_same_bits("scale_model_input", &s.scale_model_input(&a, ts[0]), &a);

        for (scale, rescale) in [(7.5, 0.0), (7.5, 0.7), (1.0, 1.0), (-2.0, 0.3)] {
            let ours = classifier_free_guidance(&a, &b, scale, rescale).expect("guidance");
            let expected = classifier_free_guidance(&a32, &b32, scale, rescale).expect("f32");
            let what = format!("guidance {scale} rescale {rescale}, {case}");
            assert_rounded(&what, &ours, &expected);
            let mut into = ArrayD::from_elem(IxDyn(&SHAPE), H::ZERO);
            classifier_free_guidance_into(&a, &b, scale, rescale, &mut into).expect("into");
            assert_same_bits(&format!("{what}, into"), &into, &ours);
        }

        for alpha in [0.0, 0.3, 0.5, 1.0] {
            let ours = slerp(&a, &b, alpha).expect("slerp");
            let expected = slerp(&a32, &b32, alpha).expect("f32 slerp");
            assert_rounded(&format!("slerp {alpha}, {case}"), &ours, &expected);
        }

        // A mask of one channel, broadcast over the channels, with values in [0, 1].
        let mask =
            random::<H>(&[2, 1, 6, 5], &mut rng, 1.0).mapv(|v| H::from_f64(v.to_f64().abs()));
        let mask32 = widen(&mask);
        for next in [Some(ts[4]), None] {
            let mut ours_b = cb.clone();
            let mut latents = layout.view_mut(&mut ours_b);
            s.blend_inpainting(&mut latents, &a, &b, &mask, next)
                .expect("blend");
            let mut expected = c32.clone();
            s.blend_inpainting(&mut expected, &a32, &b32, &mask32, next)
                .expect("f32 blend");
            assert_rounded(
                &format!("blend_inpainting {next:?}, {case}"),
                &latents,
                &expected,
            );
        }
    }
}

/// `randn_into` fills arrays of any layout with the values of `randn`.
fn randn_into_any_layout_is_randn<H: Half16>() {
    for (len, seed) in [(7usize, 1u64), (180, 2)] {
        let shape = if len == 180 { SHAPE.to_vec() } else { vec![7] };
        let expected: ArrayD<H> = TorchGenerator::manual_seed(seed).randn(IxDyn(&shape));
        let mut backing = ArrayD::from_elem(IxDyn(&shape), H::ZERO).reversed_axes();
        let mut g = TorchGenerator::manual_seed(seed);
        let mut view = backing.view_mut().reversed_axes();
        g.randn_into(&mut view);
        assert_same_bits(&format!("randn_into of {len}"), &view, &expected);
    }
}

// ---------------------------------------------------------------------------------------------
// torch.randn in float16 and bfloat16, against the fixture
// ---------------------------------------------------------------------------------------------

fn kernel(name: &str) -> TorchCpuKernel {
    match name {
        "avx2" => TorchCpuKernel::Avx2,
        "scalar" => TorchCpuKernel::Scalar,
        other => panic!("unknown kernel {other}"),
    }
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex digit"))
        .collect()
}

/// The 16-bit values of a `{"dtype": "f16" | "bf16", "shape", "hex"}` tensor, as bit patterns.
fn half_bits(value: &Value) -> Vec<u16> {
    hex_bytes(value["hex"].as_str().expect("hex"))
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect()
}

/// A 16-bit fixture tensor.
fn half_tensor<H: Half16>(value: &Value) -> ArrayD<H> {
    assert_eq!(value["dtype"], H::NAME);
    let shape: Vec<usize> = serde_json::from_value(value["shape"].clone()).expect("shape");
    let data = half_bits(value).into_iter().map(H::from_bits).collect();
    ArrayD::from_shape_vec(IxDyn(&shape), data).expect("shape")
}

fn fnv1a64(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The little-endian bytes and the bit patterns widened to u64 of a draw of any element type.
struct Draw {
    bytes: Vec<u8>,
    values: Vec<f64>,
}

fn draw(g: &mut TorchGenerator, shape: &[usize], dtype: &str) -> Draw {
    fn of<T: DdimFloat>(a: ArrayD<T>, le: impl Fn(T) -> Vec<u8>) -> Draw {
        Draw {
            bytes: a.iter().flat_map(|&v| le(v)).collect(),
            values: a.iter().map(|v| v.to_f64()).collect(),
        }
    }
    let shape = IxDyn(shape);
    match dtype {
        "f16" => of(g.randn::<f16, _>(shape), |v| v.to_le_bytes().to_vec()),
        "bf16" => of(g.randn::<bf16, _>(shape), |v| v.to_le_bytes().to_vec()),
        "f32" => of(g.randn::<f32, _>(shape), |v| v.to_le_bytes().to_vec()),
        other => panic!("unknown dtype {other}"),
    }
}

/// The unit in the last place of a value of the fixture's type.
fn ulp_of(dtype: &str, x: f64) -> f64 {
    let (digits, min_exp) = match dtype {
        "f16" => (11, -14),
        "bf16" => (8, -126),
        "f32" => (24, -126),
        other => panic!("unknown dtype {other}"),
    };
    let e = x.abs().max(f64::MIN_POSITIVE).log2().floor() as i32;
    2f64.powi(e.max(min_exp) - (digits - 1))
}

/// Compares a draw with a fixture tensor or digest: bit for bit where the C library is glibc (or
/// the draw does not depend on it), within 4 ulp elsewhere.
fn check_draw(what: &str, ours: &Draw, expected: &Value, exact: bool) {
    let dtype = expected["dtype"].as_str().expect("dtype");
    if expected.get("fnv1a64").is_some() {
        let width = ours.bytes.len() / ours.values.len().max(1);
        let head = &ours.bytes[..16 * width];
        let tail = &ours.bytes[ours.bytes.len() - 16 * width..];
        if exact {
            assert_eq!(fnv1a64(&ours.bytes), expected["fnv1a64"], "{what}: digest");
        }
        check_bytes(
            what,
            dtype,
            head,
            &hex_bytes(expected["head"]["hex"].as_str().expect("hex")),
            exact,
        );
        check_bytes(
            what,
            dtype,
            tail,
            &hex_bytes(expected["tail"]["hex"].as_str().expect("hex")),
            exact,
        );
        return;
    }
    let bytes = hex_bytes(expected["hex"].as_str().expect("hex"));
    check_bytes(what, dtype, &ours.bytes, &bytes, exact);
}

fn check_bytes(what: &str, dtype: &str, ours: &[u8], expected: &[u8], exact: bool) {
    if exact {
        assert!(ours == expected, "{what}: bits differ");
        return;
    }
    assert_eq!(ours.len(), expected.len(), "{what}: length");
    let value = |c: &[u8]| match dtype {
        "f16" => f16::from_le_bytes([c[0], c[1]]).to_f64(),
        "bf16" => bf16::from_le_bytes([c[0], c[1]]).to_f64(),
        _ => f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
    };
    let width = if dtype == "f32" { 4 } else { 2 };
    for (a, b) in ours.chunks_exact(width).zip(expected.chunks_exact(width)) {
        let (a, b) = (value(a), value(b));
        assert!(
            (a - b).abs() <= 4.0 * ulp_of(dtype, b),
            "{what}: {a} vs {b}"
        );
    }
}

/// Whether a draw's bits are pinned on this machine: everything on glibc; elsewhere only what
/// does not go through the C library (the AVX2 kernel's blocks).
fn pinned(kernel: TorchCpuKernel, len: usize) -> bool {
    GLIBC || (kernel == TorchCpuKernel::Avx2 && len >= 16)
}

#[test]
fn torch_randn_in_float16_and_bfloat16_matches_torch() {
    let fixture = golden("torch_half");
    let cases = fixture["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 66);
    let kernels = ["avx2", "scalar"];
    for case in cases {
        let label = name(case);
        let seed = case["seed"].as_u64().expect("seed");
        let shape: Vec<usize> = serde_json::from_value(case["shape"].clone()).expect("shape");
        let len: usize = shape.iter().product();
        let dtype = case["dtype"].as_str().expect("dtype");
        for k in kernels {
            let expected = match case.get("expected_by_kernel") {
                Some(by_kernel) => &by_kernel[k],
                None => &case["expected"],
            };
            let kernel = kernel(k);
            let mut g = TorchGenerator::manual_seed(seed).with_kernel(kernel);
            let ours = draw(&mut g, &shape, dtype);
            check_draw(
                &format!("{label} ({k})"),
                &ours,
                expected,
                pinned(kernel, len),
            );
            // Where torch left its generator: the next float32 draw of 5 (double draws).
            let after = draw(&mut g, &[5], "f32");
            check_draw(
                &format!("{label} ({k}): after"),
                &after,
                &case["after"],
                GLIBC,
            );
        }
    }
}

#[test]
fn consecutive_draws_of_mixed_types_follow_torchs_stream() {
    let fixture = golden("torch_half");
    for sequence in fixture["sequences"].as_array().expect("sequences") {
        let label = name(sequence);
        let seed = sequence["seed"].as_u64().expect("seed");
        let calls = sequence["calls"].as_array().expect("calls");
        for k in ["avx2", "scalar"] {
            let kernel = kernel(k);
            let expected = sequence["expected_by_kernel"][k]
                .as_array()
                .expect("outputs");
            let mut g = TorchGenerator::manual_seed(seed).with_kernel(kernel);
            for (i, (call, expected)) in calls.iter().zip(expected).enumerate() {
                let shape: Vec<usize> =
                    serde_json::from_value(call["shape"].clone()).expect("shape");
                let len = shape.iter().product();
                let dtype = call["dtype"].as_str().expect("dtype");
                let ours = draw(&mut g, &shape, dtype);
                let what = format!("{label} ({k}) call {i}: {dtype} {shape:?}");
                check_draw(&what, &ours, expected, pinned(kernel, len));
            }
            let after = draw(&mut g, &[5], "f32");
            check_draw(
                &format!("{label} ({k}): after"),
                &after,
                &sequence["after"],
                GLIBC,
            );
        }
    }
}

/// The sizes torch treats differently: below 16 elements each value is a double draw rounded
/// to float32 and then to the 16-bit type; from 16 on, blocks of 16 float32 normals rounded once.
#[test]
fn small_draws_round_through_float32_and_blocks_round_once() {
    for seed in [0, 5, 99] {
        let mut g16 = TorchGenerator::manual_seed(seed);
        let mut g64 = TorchGenerator::manual_seed(seed);
        let ours: ArrayD<f16> = g16.randn(IxDyn(&[15]));
        let doubles: ArrayD<f64> = g64.randn(IxDyn(&[15]));
        let expected = doubles.mapv(|d| f16::from_f32(d as f32));
        assert_same_bits(&format!("seed {seed}, 15"), &ours, &expected);

        let kernel = TorchCpuKernel::Avx2;
        let ours: ArrayD<bf16> = TorchGenerator::manual_seed(seed)
            .with_kernel(kernel)
            .randn(IxDyn(&[32]));
        let singles: ArrayD<f32> = TorchGenerator::manual_seed(seed)
            .with_kernel(kernel)
            .randn(IxDyn(&[32]));
        assert_same_bits(
            &format!("seed {seed}, 32"),
            &ours,
            &singles.mapv(bf16::from_f32),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Accuracy against diffusers' 16-bit step
// ---------------------------------------------------------------------------------------------

/// The largest absolute difference and the largest difference in ulps of the 16-bit type at the
/// exact value, over all elements.
fn error(dtype: &str, values: impl Iterator<Item = f64>, exact: &[f64]) -> (f64, f64) {
    values.zip(exact).fold((0.0f64, 0.0f64), |(a, u), (v, &x)| {
        let diff = (v - x).abs();
        (a.max(diff), u.max(diff / ulp_of(dtype, x)))
    })
}

/// How many of the values are the exact values correctly rounded to `H`.
fn correctly_rounded<H: Half16>(values: &ArrayD<H>, exact: &[f64]) -> usize {
    values
        .iter()
        .zip(exact)
        .filter(|(v, &x)| v.bits() == H::from_f64(x).bits())
        .count()
}

/// Runs the fixture's steps in the 16-bit type and measures both results against the exact
/// step: returns, per output, (reference max abs, reference max ulp, ours max abs, ours max
/// ulp, reference correctly rounded, ours correctly rounded, elements) over all cases of the
/// type.
fn accuracy<H: Half16>(fixture: &Value) -> [[f64; 7]; 2] {
    let mut totals = [[0.0f64; 7]; 2];
    let inputs = &fixture["inputs"];
    let steps = fixture["steps"].as_array().expect("steps");
    for case in steps.iter().filter(|c| c["dtype"] == H::NAME) {
        let label = name(case);
        let mut s = DdimScheduler::new(config(case)).expect("config");
        let n = case["num_inference_steps"].as_u64().expect("steps") as usize;
        s.set_timesteps(n).expect("steps");
        let t = case["timestep"].as_u64().expect("timestep") as usize;
        let input = |key: &str| half_tensor::<H>(&inputs[case[key].as_str().expect("key")]);
        let (m, x) = (input("model_output"), input("sample"));
        let noise = case["noise"].as_str().map(|k| half_tensor::<H>(&inputs[k]));
        let source = match &noise {
            Some(z) => NoiseSource::given(z),
            None => NoiseSource::None,
        };
        let eta = case["eta"].as_f64().expect("eta");
        let ucmo = case["use_clipped_model_output"].as_bool().expect("flag");
        let ours = s
            .step_with(&m, t, &x, options(eta, source, ucmo))
            .expect("step");
        for (i, key) in ["prev_sample", "pred_original_sample"]
            .into_iter()
            .enumerate()
        {
            let exact = tensor(&case["exact"][key]).values();
            let reference = half_tensor::<H>(&case["reference"][key]);
            let ours = match key {
                "prev_sample" => &ours.prev_sample,
                _ => &ours.pred_original_sample,
            };
            let (ref_abs, ref_ulp) = error(H::NAME, reference.iter().map(|v| v.to_f64()), &exact);
            let (our_abs, our_ulp) = error(H::NAME, ours.iter().map(|v| v.to_f64()), &exact);
            // The fixture's own measurement of the reference agrees with this one.
            let stored = &case["reference_error"][key];
            let close =
                |a: f64, b: &Value| (a - b.as_f64().expect("number")).abs() <= 1e-9 * a.max(1.0);
            assert!(
                close(ref_abs, &stored["max_abs"]),
                "{label} {key}: stored max_abs"
            );
            assert!(
                close(ref_ulp, &stored["max_ulp"]),
                "{label} {key}: stored max_ulp"
            );
            assert!(
                our_abs <= ref_abs && our_ulp <= ref_ulp,
                "{label} {key}: ours {our_abs:e} ({our_ulp} ulp) vs the reference's {ref_abs:e} \
                 ({ref_ulp} ulp)"
            );
            let (ref_right, our_right) = (
                correctly_rounded(&reference, &exact),
                correctly_rounded(&ours.to_owned().into_dyn(), &exact),
            );
            assert!(
                our_right >= ref_right,
                "{label} {key}: correctly rounded values"
            );
            let row = &mut totals[i];
            for (slot, value) in row.iter_mut().zip([ref_abs, ref_ulp, our_abs, our_ulp]) {
                *slot = slot.max(value);
            }
            row[4] += ref_right as f64;
            row[5] += our_right as f64;
            row[6] += exact.len() as f64;
        }
    }
    totals
}

#[test]
fn our_16_bit_steps_are_at_least_as_close_to_the_exact_step_as_diffusers() {
    let fixture = golden("torch_half");
    assert_eq!(fixture["steps"].as_array().expect("steps").len(), 36);
    for (dtype, totals) in [
        ("f16", accuracy::<f16>(&fixture)),
        ("bf16", accuracy::<bf16>(&fixture)),
    ] {
        for (key, row) in ["prev_sample", "x0"].iter().zip(totals) {
            let [ref_abs, ref_ulp, our_abs, our_ulp, ref_right, our_right, n] = row;
            println!(
                "{dtype} {key}: diffusers max |diff| {ref_abs:.3e} ({ref_ulp:.1} ulp, {:.1}% \
                 correctly rounded), ours {our_abs:.3e} ({our_ulp:.2} ulp, {:.1}%) of {n} values \
                 ({ref_right} and {our_right})",
                100.0 * ref_right / n,
                100.0 * our_right / n,
            );
        }
    }
}
