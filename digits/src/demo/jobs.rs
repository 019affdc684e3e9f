//! The sampling jobs of the demonstration and running them on threads.

use std::time::{Duration, Instant};

use ddim::ndarray::{Array4, Axis};
use ddim::{slerp, DdimScheduler, TorchCpuKernel, TorchGenerator};

use super::{Settings, ETAS, INTERPOLATION_SEED};
use crate::data::{Digits, SIDE};
use crate::parallel::map_parallel;
use crate::progress::Progress;
use crate::sampler::{Generated, Sampler, Timings};
use crate::unet::OnnxUnet;
use crate::DigitsError;

/// One independent piece of sampling work.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Job {
    /// `DDIMPipeline(batch_size=batch, generator=manual_seed(seed), eta, num_inference_steps=steps)`.
    Generate {
        /// The generator's seed.
        seed: u64,
        /// Images.
        batch: usize,
        /// Inference steps.
        steps: usize,
        /// DDIM's eta.
        eta: f64,
    },
    /// Held-out digits `first..first + count` encoded with DDIM inversion and decoded with
    /// deterministic DDIM, both over `steps` steps.
    Reconstruct {
        /// With `clip_sample: true` instead of the shipped `false`.
        clip: bool,
        /// Position in the held-out list of the first digit.
        first: usize,
        /// Digits.
        count: usize,
        /// Inference steps each way.
        steps: usize,
    },
    /// The interpolation grid decoded with deterministic DDIM.
    Interpolate {
        /// Spherical (`ddim::slerp`) or, for contrast, linear interpolation of the noises.
        spherical: bool,
    },
}

/// What a [`Job`] produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Of [`Job::Generate`].
    Generated(Generated),
    /// Of [`Job::Reconstruct`]: the digits, their DDIM encodings, their decodings (all
    /// `(count, 1, 8, 8)` in model space).
    Reconstructed {
        /// The held-out digits, in `[-1, 1]`.
        original: Array4<f32>,
        /// Their encodings at the first timestep.
        latents: Array4<f32>,
        /// The decodings of the encodings.
        decoded: Array4<f32>,
    },
    /// Of [`Job::Interpolate`]: `(rows * columns, 1, 8, 8)`, row-major over the grid.
    Interpolated {
        /// The interpolated initial noises.
        noise: Array4<f32>,
        /// Their decodings (latents, before the map to images).
        latents: Array4<f32>,
    },
}

/// Everything sampled, with the jobs that produced it.
#[derive(Debug, Clone)]
pub struct Samples {
    /// The settings the jobs were made from.
    pub settings: Settings,
    /// The jobs, in the order of `outputs`.
    pub jobs: Vec<Job>,
    /// Their outputs.
    pub outputs: Vec<Output>,
    /// Network and scheduler time summed over all jobs (and threads).
    pub timings: Timings,
    /// Wall-clock time of the sampling.
    pub elapsed: Duration,
    /// Network evaluations of one image each, over all jobs.
    pub image_steps: u64,
}

impl Samples {
    /// The output of `Generate { seed, steps, eta, .. }`.
    pub fn generated(&self, seed: u64, steps: usize, eta: f64) -> Option<&Generated> {
        self.jobs
            .iter()
            .zip(&self.outputs)
            .find_map(|(job, out)| match (job, out) {
                (
                    Job::Generate {
                        seed: s,
                        steps: n,
                        eta: e,
                        ..
                    },
                    Output::Generated(g),
                ) if (*s, *n, *e) == (seed, steps, eta) => Some(g),
                _ => None,
            })
    }

    /// The reconstructions with this clipping and step count, concatenated in held-out order:
    /// `(original, latents, decoded)`.
    pub fn reconstructed(&self, clip: bool, steps: usize) -> Option<[Array4<f32>; 3]> {
        let mut parts: Vec<(usize, &Output)> = self
            .jobs
            .iter()
            .zip(&self.outputs)
            .filter_map(|(job, out)| match job {
                Job::Reconstruct {
                    clip: c,
                    first,
                    steps: n,
                    ..
                } if (*c, *n) == (clip, steps) => Some((*first, out)),
                _ => None,
            })
            .collect();
        parts.sort_by_key(|(first, _)| *first);
        let mut views = [Vec::new(), Vec::new(), Vec::new()];
        for (_, out) in &parts {
            if let Output::Reconstructed {
                original,
                latents,
                decoded,
            } = out
            {
                views[0].push(original.view());
                views[1].push(latents.view());
                views[2].push(decoded.view());
            }
        }
        let join =
            |v: &[ddim::ndarray::ArrayView4<f32>]| ddim::ndarray::concatenate(Axis(0), v).ok();
        Some([join(&views[0])?, join(&views[1])?, join(&views[2])?])
    }

    /// The interpolation output: `(noise, latents)`.
    pub fn interpolated(&self, spherical: bool) -> Option<(&Array4<f32>, &Array4<f32>)> {
        self.jobs
            .iter()
            .zip(&self.outputs)
            .find_map(|(job, out)| match (job, out) {
                (Job::Interpolate { spherical: s }, Output::Interpolated { noise, latents })
                    if *s == spherical =>
                {
                    Some((noise, latents))
                }
                _ => None,
            })
    }
}

/// The generator of the demonstration's seed `seed`: PyTorch's, following its x86-64 AVX2
/// float32 kernel on every machine, so that the noise (and the tables) are the same everywhere.
pub(crate) fn generator(seed: u64) -> TorchGenerator {
    TorchGenerator::manual_seed(seed).with_kernel(TorchCpuKernel::Avx2)
}

impl Job {
    /// Network evaluations of one image that the job makes.
    pub fn image_steps(&self, settings: &Settings) -> u64 {
        let n = match *self {
            Job::Generate { batch, steps, .. } => batch * steps,
            Job::Reconstruct { count, steps, .. } => 2 * count * steps,
            Job::Interpolate { .. } => {
                settings.interpolation_rows * settings.interpolation_columns * settings.demo_steps
            }
        };
        n as u64
    }

    /// The jobs of the demonstration, longest first.
    pub fn plan(settings: &Settings) -> Vec<Job> {
        let mut jobs = Vec::new();
        for seed in 0..settings.long_seeds.min(settings.quality_seeds) {
            for eta in ETAS {
                jobs.push(Job::Generate {
                    seed,
                    batch: settings.long_batch.min(settings.batch),
                    steps: settings.long_steps,
                    eta,
                });
            }
        }
        for seed in 0..settings.quality_seeds {
            for &steps in &settings.quality_steps {
                for eta in ETAS {
                    let batch = settings.batch;
                    jobs.push(Job::Generate {
                        seed,
                        batch,
                        steps,
                        eta,
                    });
                }
            }
        }
        for (clip, images) in [
            (false, settings.reconstruction_images),
            (true, settings.clipped_reconstruction_images),
        ] {
            for &steps in &settings.reconstruction_steps {
                for first in (0..images).step_by(settings.batch.max(1)) {
                    let count = settings.batch.min(images - first);
                    jobs.push(Job::Reconstruct {
                        clip,
                        first,
                        count,
                        steps,
                    });
                }
            }
        }
        jobs.push(Job::Interpolate { spherical: true });
        jobs.push(Job::Interpolate { spherical: false });
        jobs.sort_by_key(|job| std::cmp::Reverse(job.image_steps(settings)));
        jobs
    }
}

/// What every job needs.
struct Context<'a> {
    unet: &'a OnnxUnet,
    digits: &'a Digits,
    shipped: &'a DdimScheduler,
    clipped: DdimScheduler,
    settings: &'a Settings,
    progress: &'a Progress,
}

/// Runs every job of [`Job::plan`] on `settings.threads` threads with a progress line on
/// standard error (unless `show_progress` is false).
///
/// `scheduler` is the model's own (`DdimScheduler::from_pretrained` on the model folder); the
/// clipped reconstructions use its config with `clip_sample` switched on.
///
/// # Errors
///
/// The first job's error, if any failed.
pub fn run(
    unet: &OnnxUnet,
    digits: &Digits,
    scheduler: &DdimScheduler,
    settings: &Settings,
    show_progress: bool,
) -> Result<Samples, DigitsError> {
    let jobs = Job::plan(settings);
    let image_steps = jobs.iter().map(|j| j.image_steps(settings)).sum();
    let progress = if show_progress {
        Progress::new("sampling", image_steps)
    } else {
        Progress::hidden(image_steps)
    };
    let mut clipped_config = scheduler.config().clone();
    clipped_config.clip_sample = true;
    let context = Context {
        unet,
        digits,
        shipped: scheduler,
        clipped: DdimScheduler::new(clipped_config)?,
        settings,
        progress: &progress,
    };
    let start = Instant::now();
    let results = map_parallel(&jobs, settings.threads, |job| context.run(job));
    let elapsed = start.elapsed();
    progress.finish();
    let mut outputs = Vec::with_capacity(jobs.len());
    let mut timings = Timings::default();
    for result in results {
        let (output, job_timings) = result?;
        timings.merge(&job_timings);
        outputs.push(output);
    }
    Ok(Samples {
        settings: settings.clone(),
        jobs,
        outputs,
        timings,
        elapsed,
        image_steps,
    })
}

impl Context<'_> {
    fn run(&self, job: &Job) -> Result<(Output, Timings), DigitsError> {
        let mut sampler = Sampler::new(self.unet).with_progress(self.progress);
        let output = match *job {
            Job::Generate {
                seed,
                batch,
                steps,
                eta,
            } => {
                let scheduler = with_steps(self.shipped, steps)?;
                let mut g = generator(seed);
                Output::Generated(sampler.generate(&scheduler, &mut g, batch, eta)?)
            }
            Job::Reconstruct {
                clip,
                first,
                count,
                steps,
            } => {
                let base = if clip { &self.clipped } else { self.shipped };
                let scheduler = with_steps(base, steps)?;
                let indices = self
                    .digits
                    .held_out()
                    .get(first..first + count)
                    .ok_or_else(|| {
                        DigitsError::InvalidArgument(format!(
                            "held-out digits {first}..{} asked, {} exist",
                            first + count,
                            self.digits.held_out().len()
                        ))
                    })?;
                let original = self.digits.model_space(indices);
                let latents = sampler.encode(&scheduler, original.clone())?;
                let decoded = sampler.decode(&scheduler, latents.clone())?;
                Output::Reconstructed {
                    original,
                    latents,
                    decoded,
                }
            }
            Job::Interpolate { spherical } => {
                let noise = self.interpolation_noise(spherical)?;
                let scheduler = with_steps(self.shipped, self.settings.demo_steps)?;
                let latents = sampler.decode(&scheduler, noise.clone())?;
                Output::Interpolated { noise, latents }
            }
        };
        Ok((output, *sampler.timings()))
    }

    /// Rows of noise pairs `a`, `b` (one seeded generator, `a` drawn first) and the points
    /// `alpha = i / (columns - 1)` between them, row-major.
    fn interpolation_noise(&self, spherical: bool) -> Result<Array4<f32>, DigitsError> {
        let (rows, columns) = (
            self.settings.interpolation_rows,
            self.settings.interpolation_columns,
        );
        let mut g = generator(INTERPOLATION_SEED);
        let a: Array4<f32> = g.randn((rows, 1, SIDE, SIDE));
        let b: Array4<f32> = g.randn((rows, 1, SIDE, SIDE));
        let mut grid = Array4::zeros((rows * columns, 1, SIDE, SIDE));
        for c in 0..columns {
            let alpha = c as f64 / (columns.max(2) - 1) as f64;
            let column = if spherical {
                slerp(&a, &b, alpha)?
            } else {
                let w = alpha as f32;
                &a * (1.0 - w) + &b * w
            };
            for r in 0..rows {
                grid.index_axis_mut(Axis(0), r * columns + c)
                    .assign(&column.index_axis(Axis(0), r));
            }
        }
        Ok(grid)
    }
}

fn with_steps(base: &DdimScheduler, steps: usize) -> Result<DdimScheduler, DigitsError> {
    let mut scheduler = base.clone();
    scheduler.set_timesteps(steps)?;
    Ok(scheduler)
}
