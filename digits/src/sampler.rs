//! The sampling loop of diffusers' `DDIMPipeline`, DDIM encoding (inversion) and decoding, with
//! the network and the scheduler timed separately.
//!
//! `DDIMPipeline.__call__(batch_size, generator, eta, num_inference_steps)` does:
//!
//! ```text
//! image = randn_tensor((batch, 1, 8, 8), generator)        # the initial noise
//! scheduler.set_timesteps(num_inference_steps)
//! for t in scheduler.timesteps:
//!     eps = unet(image, t).sample
//!     image = scheduler.step(eps, t, image, eta=eta, generator=generator).prev_sample
//! image = (image / 2 + 0.5).clamp(0, 1)                     # then NCHW -> NHWC
//! ```
//!
//! [`Sampler::generate`] is that call with [`ddim`] and [`OnnxUnet`]: with a
//! [`TorchGenerator`] seeded like the Python one, it returns the same images up to the
//! network's float rounding (`tests/pipeline.rs` checks it against the pipeline's own output).

use std::time::{Duration, Instant};

use ddim::{DdimScheduler, NoiseSource, StepOptions, TorchGenerator};
use ndarray::{Array4, Axis};

use crate::progress::Progress;
use crate::unet::OnnxUnet;
use crate::DigitsError;

/// Time spent in the network and in the scheduler, and how many calls each.
///
/// The scheduler's share covers `scale_model_input`, `step` / `inverse_step` and, with
/// `eta > 0`, the drawing of the step's noise from the [`TorchGenerator`] (which happens inside
/// the step call).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    /// Total time inside [`OnnxUnet::noise_pred`].
    pub network: Duration,
    /// Number of network calls.
    pub network_calls: u64,
    /// Total time inside the scheduler's calls.
    pub scheduler: Duration,
    /// Number of steps taken (one scheduler step per network call).
    pub scheduler_calls: u64,
}

impl Timings {
    /// Adds another set of timings (for example another thread's) to this one.
    pub fn merge(&mut self, other: &Timings) {
        self.network += other.network;
        self.network_calls += other.network_calls;
        self.scheduler += other.scheduler;
        self.scheduler_calls += other.scheduler_calls;
    }

    /// Mean time of one network call, in microseconds (0 without calls).
    pub fn network_us_per_call(&self) -> f64 {
        per_call_us(self.network, self.network_calls)
    }

    /// Mean time of one scheduler step, in microseconds (0 without calls).
    pub fn scheduler_us_per_call(&self) -> f64 {
        per_call_us(self.scheduler, self.scheduler_calls)
    }

    /// The scheduler's share of the loop's time, in percent: `100 * scheduler / (network +
    /// scheduler)` (0 when nothing was timed).
    pub fn scheduler_percent(&self) -> f64 {
        let total = (self.network + self.scheduler).as_secs_f64();
        if total == 0.0 {
            0.0
        } else {
            100.0 * self.scheduler.as_secs_f64() / total
        }
    }
}

fn per_call_us(total: Duration, calls: u64) -> f64 {
    if calls == 0 {
        0.0
    } else {
        total.as_secs_f64() * 1e6 / calls as f64
    }
}

/// What [`Sampler::generate`] returns, in `DDIMPipeline`'s terms.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// The initial noise, `(batch, 1, 8, 8)`: the generator's first draw.
    pub initial_noise: Array4<f32>,
    /// The last step's `prev_sample`, `(batch, 1, 8, 8)`, before the map to images.
    pub latents: Array4<f32>,
    /// The pipeline's output (`output_type="np"`): `clamp(latents / 2 + 0.5, 0, 1)` laid out
    /// `(batch, 8, 8, 1)`.
    pub images: Array4<f32>,
}

/// `DDIMPipeline`'s map from latents `(batch, channels, height, width)` in about `[-1, 1]` to
/// images in `[0, 1]`, `(batch, height, width, channels)`: `clamp(x / 2 + 0.5, 0, 1)`, in
/// `f32` as torch computes it.
///
/// ```
/// let latents = ddim::ndarray::Array4::<f32>::from_elem((2, 1, 8, 8), 1.5);
/// let images = ddim_digits::to_images(&latents);
/// assert_eq!(images.shape(), &[2, 8, 8, 1]);
/// assert!(images.iter().all(|&v| v == 1.0));
/// ```
pub fn to_images(latents: &Array4<f32>) -> Array4<f32> {
    let nhwc = latents.view().permuted_axes([0, 2, 3, 1]);
    nhwc.mapv(|v| (v / 2.0 + 0.5).clamp(0.0, 1.0))
        .as_standard_layout()
        .into_owned()
}

/// Runs the network and the scheduler together: sampling, DDIM encoding and decoding, timing
/// both parts and reporting progress.
///
/// The scheduler is passed to each call with its timesteps already set, so one loaded network
/// serves schedulers of any step count (and threads can share the network; each thread owns
/// its `Sampler`).
///
/// ```no_run
/// use ddim::{DdimScheduler, TorchGenerator};
/// use ddim_digits::{OnnxUnet, Sampler};
///
/// let unet = OnnxUnet::load("digits/model/unet.onnx")?;
/// let mut scheduler = DdimScheduler::from_pretrained("digits/model")?;
/// scheduler.set_timesteps(50)?;
/// let mut sampler = Sampler::new(&unet);
/// // DDIMPipeline(batch_size=16, generator=torch.Generator().manual_seed(0), eta=0.0,
/// //              num_inference_steps=50)
/// let out = sampler.generate(&scheduler, &mut TorchGenerator::manual_seed(0), 16, 0.0)?;
/// assert_eq!(out.images.shape(), &[16, 8, 8, 1]);
/// println!("{:.1} us per network call", sampler.timings().network_us_per_call());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Sampler<'a> {
    unet: &'a OnnxUnet,
    timings: Timings,
    progress: Option<&'a Progress>,
}

impl<'a> Sampler<'a> {
    /// A sampler around a loaded network, with zero timings.
    pub fn new(unet: &'a OnnxUnet) -> Self {
        Sampler {
            unet,
            timings: Timings::default(),
            progress: None,
        }
    }

    /// The same sampler, advancing `progress` by the batch size after every network call.
    pub fn with_progress(mut self, progress: &'a Progress) -> Self {
        self.progress = Some(progress);
        self
    }

    /// The time spent so far in the network and in the scheduler.
    pub fn timings(&self) -> &Timings {
        &self.timings
    }

    /// `DDIMPipeline`'s call: draws the initial noise `(batch, 1, 8, 8)` from `generator`
    /// (scaled by `init_noise_sigma`, which is 1 for DDIM), then runs [`sample`](Self::sample)
    /// over the scheduler's timesteps with the same generator for the steps' noise.
    ///
    /// # Errors
    ///
    /// As [`sample`](Self::sample).
    pub fn generate(
        &mut self,
        scheduler: &DdimScheduler,
        generator: &mut TorchGenerator,
        batch: usize,
        eta: f64,
    ) -> Result<Generated, DigitsError> {
        let [c, h, w] = self.unet.sample_shape();
        let initial_noise: Array4<f32> = generator.randn((batch, c, h, w));
        let start = &initial_noise * scheduler.init_noise_sigma();
        let latents = self.sample(scheduler, start, eta, Some(generator))?;
        let images = to_images(&latents);
        Ok(Generated {
            initial_noise,
            latents,
            images,
        })
    }

    /// The DDIM sampling loop from `latents` (the noisy samples at the first timestep) over
    /// the scheduler's timesteps, in order: `eps = unet(x, t)`, then one step (DDIM paper
    /// eq. 12, with `sigma_t` of eq. 16 for `eta > 0`). The step's noise comes from
    /// `generator`, one `randn` of the sample's shape per step, as `DDIMScheduler.step`
    /// draws it; it is not consulted when `eta == 0`.
    ///
    /// # Errors
    ///
    /// [`DigitsError::Scheduler`] before `set_timesteps`, or for a negative eta or
    /// `eta > 0` without a generator; [`DigitsError::Network`] when the network fails.
    pub fn sample(
        &mut self,
        scheduler: &DdimScheduler,
        mut latents: Array4<f32>,
        eta: f64,
        mut generator: Option<&mut TorchGenerator>,
    ) -> Result<Array4<f32>, DigitsError> {
        for &t in scheduler.timesteps() {
            let eps = self.eps(scheduler, &latents, t)?;
            let start = Instant::now();
            let noise = match generator.as_deref_mut() {
                Some(g) if eta > 0.0 => NoiseSource::Torch(g),
                _ => NoiseSource::None,
            };
            let options = StepOptions {
                eta,
                noise,
                ..Default::default()
            };
            scheduler.step_in_place(&eps, t, &mut latents, options)?;
            self.count_step(start);
        }
        Ok(latents)
    }

    /// DDIM encoding (the paper's section 4.3 and 5.4): runs the deterministic ODE backwards,
    /// from clean `images` (`(batch, 1, 8, 8)` in `[-1, 1]`) to the latent noise at the
    /// scheduler's first timestep, visiting its timesteps in ascending order and evaluating
    /// the network at each as diffusers' `DDIMInverseScheduler` loop does.
    ///
    /// # Errors
    ///
    /// As [`sample`](Self::sample).
    pub fn encode(
        &mut self,
        scheduler: &DdimScheduler,
        images: Array4<f32>,
    ) -> Result<Array4<f32>, DigitsError> {
        let mut latents = images;
        for &t in scheduler.timesteps().iter().rev() {
            let eps = self.eps(scheduler, &latents, t)?;
            let start = Instant::now();
            latents = scheduler.inverse_step(&eps, t, &latents)?.prev_sample;
            self.count_step(start);
        }
        Ok(latents)
    }

    /// Decodes latents with deterministic DDIM (eta = 0): [`sample`](Self::sample) without
    /// noise, the inverse of [`encode`](Self::encode) up to the discretisation error.
    ///
    /// # Errors
    ///
    /// As [`sample`](Self::sample).
    pub fn decode(
        &mut self,
        scheduler: &DdimScheduler,
        latents: Array4<f32>,
    ) -> Result<Array4<f32>, DigitsError> {
        self.sample(scheduler, latents, 0.0, None)
    }

    /// The network's noise prediction at `t` for the scaled model input, timed.
    fn eps(
        &mut self,
        scheduler: &DdimScheduler,
        latents: &Array4<f32>,
        t: usize,
    ) -> Result<Array4<f32>, DigitsError> {
        let start = Instant::now();
        let input = scheduler.scale_model_input(latents, t);
        self.timings.scheduler += start.elapsed();

        let start = Instant::now();
        let timestep = i64::try_from(t).map_err(|_| {
            DigitsError::InvalidArgument(format!("timestep {t} does not fit the network's i64"))
        })?;
        let eps = self.unet.noise_pred(input.view(), timestep)?;
        self.timings.network += start.elapsed();
        self.timings.network_calls += 1;
        if let Some(progress) = self.progress {
            progress.advance(latents.len_of(Axis(0)) as u64);
        }
        Ok(eps)
    }

    fn count_step(&mut self, start: Instant) {
        self.timings.scheduler += start.elapsed();
        self.timings.scheduler_calls += 1;
    }
}
