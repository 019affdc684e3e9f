//! The demonstration behind `cargo run --release -p ddim-digits`: the DDIM paper's claims
//! (Song, Meng and Ermon 2020, sections 5.1 to 5.4) measured on the trained digits model, with
//! [`ddim`] driving the ONNX network.
//!
//! [`run`] samples everything the tables need in one batch of independent jobs spread over
//! threads (each job seeds its own [`ddim::TorchGenerator`], so the numbers do not depend on
//! the thread count or on timing), then [`report`] turns the samples into tables and figures.
//!
//! | part | paper | what is measured |
//! |---|---|---|
//! | quality | section 5.1, Table 1 | Fréchet distance in pixel space to the held-out digits, for S steps and eta 0 / 1 |
//! | consistency | section 5.2 | the same initial noise decoded with few and many steps: same class? how far apart? |
//! | interpolation | section 5.3 | decoding spherical interpolations of two noises (and, for contrast, linear ones) |
//! | reconstruction | section 5.4, Table 2 | encode held-out digits with DDIM inversion, decode, error against S |
//! | speed | | time per network call against time per scheduler step |

mod jobs;
mod report;

pub use jobs::{run, Job, Output, Samples};
pub use report::{report, speed, Report};

/// How much to sample: the full demonstration or the quick one (for CI).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Threads sampling at once (each runs the network on one core).
    pub threads: usize,
    /// Images per network call in the quality runs and the reconstructions.
    pub batch: usize,
    /// Seeds 0, 1, ... of the quality runs; each gives `batch` samples at every step count
    /// and eta, from the same initial noise.
    pub quality_seeds: u64,
    /// Step counts of the quality table (besides `long_steps`).
    pub quality_steps: Vec<usize>,
    /// The longest run (1000: every training timestep).
    pub long_steps: usize,
    /// Seeds 0, 1, ... run with `long_steps` steps (at most `quality_seeds`).
    pub long_seeds: u64,
    /// Samples per long-run seed: the first `long_batch` of that seed's quality samples (the
    /// same initial noise).
    pub long_batch: usize,
    /// Held-out digits encoded and decoded with the shipped config.
    pub reconstruction_images: usize,
    /// Held-out digits encoded and decoded with `clip_sample: true`.
    pub clipped_reconstruction_images: usize,
    /// Step counts of the reconstruction table.
    pub reconstruction_steps: Vec<usize>,
    /// Rows (noise pairs) of the interpolation figure.
    pub interpolation_rows: usize,
    /// Columns of the interpolation figure (`alpha = i / (columns - 1)`).
    pub interpolation_columns: usize,
    /// Steps used to decode interpolations and for the speed measurement; the samples figure
    /// shows the quality run of this step count, so it must be one of `quality_steps`.
    pub demo_steps: usize,
    /// Repetitions of the single-threaded speed measurement, per eta.
    pub speed_repeats: usize,
}

impl Settings {
    /// The full demonstration: 256 samples per quality cell (64 at 1000 steps), 64 + 32
    /// reconstructions. About 300 000 network evaluations of one image; about 4 minutes on two
    /// idle cores.
    pub fn full(threads: usize) -> Self {
        Settings {
            threads,
            batch: 32,
            quality_seeds: 8,
            quality_steps: vec![10, 20, 50, 100],
            long_steps: 1000,
            long_seeds: 2,
            long_batch: 32,
            reconstruction_images: 64,
            clipped_reconstruction_images: 32,
            reconstruction_steps: vec![10, 20, 50, 100, 200],
            interpolation_rows: 6,
            interpolation_columns: 9,
            demo_steps: 50,
            speed_repeats: 2,
        }
    }

    /// The quick demonstration: the same tables from fewer samples (64 per quality cell, 4 at
    /// 1000 steps, 8 + 4 reconstructions). About 46 000 network evaluations of one image;
    /// under a minute on two idle cores.
    pub fn quick(threads: usize) -> Self {
        Settings {
            batch: 16,
            quality_seeds: 4,
            long_seeds: 1,
            long_batch: 4,
            reconstruction_images: 8,
            clipped_reconstruction_images: 4,
            speed_repeats: 1,
            ..Settings::full(threads)
        }
    }

    /// Samples per quality cell.
    pub fn quality_samples(&self) -> usize {
        self.quality_seeds as usize * self.batch
    }

    /// Samples per eta at `long_steps`.
    pub fn long_samples(&self) -> usize {
        self.long_seeds as usize * self.long_batch
    }
}

/// The etas compared throughout: deterministic DDIM and the DDPM-like posterior.
pub const ETAS: [f64; 2] = [0.0, 1.0];

/// The seed of the interpolation noises.
pub const INTERPOLATION_SEED: u64 = 2020;
