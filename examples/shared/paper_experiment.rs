//! The DDIM paper's headline experiment (Song et al. 2020, Table 1), on data whose exact noise
//! prediction is known in closed form, so that the sampler is the only source of error.
//!
//! Shared by `examples/paper_table.rs` and `tests/paper_claim.rs`.
//!
//! # The data and its exact model
//!
//! The data is a mixture of `K = 8` Gaussians in `DIM = 16` dimensions, equally weighted, with
//! means `mu_k` on a circle of radius 2 in the first two coordinates (zero elsewhere) and
//! isotropic standard deviation `s = 0.3`.
//!
//! Diffusing it to timestep `t` (`x_t = sqrt(a) x0 + sqrt(1 - a) eps`, `a = alpha_bar_t`) keeps
//! it a Gaussian mixture: component `k` becomes `N(sqrt(a) mu_k, v I)` with
//! `v = a s^2 + 1 - a`. Its score is therefore exact and cheap:
//!
//! ```text
//! d_k            = x_t - sqrt(a) mu_k
//! r_k            = softmax_k(-|d_k|^2 / (2 v))          (responsibilities)
//! score(x_t)     = -sum_k r_k d_k / v
//! eps_hat(x_t)   = -sqrt(1 - a) * score(x_t)
//! ```
//!
//! and `eps_hat` is the noise prediction an ideally trained network would output.
//!
//! # The measure
//!
//! Sample quality is the sliced Wasserstein-2 distance to fresh data draws over a fixed set of
//! random unit directions: per direction, the root-mean-square difference of the sorted
//! projections, squared and averaged over directions, then the square root. Two independent data
//! draws of the same size are not at distance zero; their distance is the floor of the measure.

#![allow(dead_code)]

use ddim::ndarray::{Array1, Array2, Axis, Zip};
use ddim::{DdimConfig, DdimError, DdimScheduler, NoiseSource, StepOptions};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, StandardNormal};

/// Dimension of the data.
pub const DIM: usize = 16;
/// Number of mixture components.
pub const COMPONENTS: usize = 8;
/// Radius of the circle the means lie on.
pub const RADIUS: f64 = 2.0;
/// Standard deviation of every component.
pub const COMPONENT_STD: f64 = 0.3;

/// The mixture of the experiment.
pub struct Mixture {
    /// One row per component mean.
    means: Array2<f64>,
    std: f64,
}

impl Default for Mixture {
    fn default() -> Self {
        let means = Array2::from_shape_fn((COMPONENTS, DIM), |(k, d)| {
            let angle = 2.0 * std::f64::consts::PI * k as f64 / COMPONENTS as f64;
            match d {
                0 => RADIUS * angle.cos(),
                1 => RADIUS * angle.sin(),
                _ => 0.0,
            }
        });
        Mixture {
            means,
            std: COMPONENT_STD,
        }
    }
}

impl Mixture {
    /// `n` independent draws from the data distribution, one per row.
    pub fn sample(&self, n: usize, rng: &mut SmallRng) -> Array2<f32> {
        let mut x = Array2::zeros((n, DIM));
        for mut row in x.rows_mut() {
            let k = rng.random_range(0..COMPONENTS);
            for (value, &mean) in row.iter_mut().zip(self.means.row(k)) {
                let z: f64 = StandardNormal.sample(rng);
                *value = (mean + self.std * z) as f32;
            }
        }
        x
    }

    /// The exact noise prediction `eps_hat(x_t)` at noise level `alpha_bar` (module docs).
    pub fn exact_epsilon(&self, x_t: &Array2<f32>, alpha_bar: f64) -> Array2<f32> {
        let sa = alpha_bar.sqrt();
        let var = alpha_bar * self.std * self.std + 1.0 - alpha_bar;
        let scale = (1.0 - alpha_bar).sqrt() / var;
        let mut eps = Array2::zeros(x_t.raw_dim());
        let mut d = Array2::<f64>::zeros((COMPONENTS, DIM));
        let mut logits = Array1::<f64>::zeros(COMPONENTS);
        for (x, mut out) in x_t.rows().into_iter().zip(eps.rows_mut()) {
            for ((mut d_k, mean), logit) in d
                .rows_mut()
                .into_iter()
                .zip(self.means.rows())
                .zip(&mut logits)
            {
                Zip::from(&mut d_k)
                    .and(&x)
                    .and(&mean)
                    .for_each(|d, &x, &m| *d = f64::from(x) - sa * m);
                *logit = -d_k.dot(&d_k) / (2.0 * var);
            }
            let max = logits.fold(f64::NEG_INFINITY, |a, &b| a.max(b));
            let weights = logits.mapv(|l| (l - max).exp());
            let total = weights.sum();
            let mixed = weights.dot(&d) / total;
            Zip::from(&mut out)
                .and(&mixed)
                .for_each(|o, &m| *o = (scale * m) as f32);
        }
        eps
    }
}

/// The scheduler of the experiment: diffusers' defaults (linear betas from 1e-4 to 0.02 over 1000
/// steps) without clipping, since the data are not bounded.
pub fn scheduler() -> Result<DdimScheduler, DdimError> {
    DdimScheduler::new(DdimConfig {
        clip_sample: false,
        ..DdimConfig::default()
    })
}

/// Draws `n` samples with `steps` DDIM steps and the given `eta`, driving the scheduler with the
/// exact model; noise (initial and, for `eta > 0`, per step) comes from `rng`.
pub fn sample_ddim(
    scheduler: &mut DdimScheduler,
    mixture: &Mixture,
    steps: usize,
    eta: f64,
    n: usize,
    rng: &mut SmallRng,
) -> Result<Array2<f32>, DdimError> {
    scheduler.set_timesteps(steps)?;
    let mut x = Array2::from_shape_simple_fn((n, DIM), || StandardNormal.sample(&mut *rng));
    x *= scheduler.init_noise_sigma();
    for &t in scheduler.timesteps() {
        let input = scheduler.scale_model_input(&x, t);
        let eps = mixture.exact_epsilon(&input, f64::from(scheduler.alphas_cumprod()[t]));
        let options = StepOptions {
            eta,
            noise: NoiseSource::Rng(&mut *rng),
            ..StepOptions::default()
        };
        scheduler.step_in_place(&eps, t, &mut x, options)?;
    }
    Ok(x)
}

/// `count` random unit directions in `DIM` dimensions, one per row.
pub fn directions(count: usize, rng: &mut SmallRng) -> Array2<f64> {
    let mut d: Array2<f64> =
        Array2::from_shape_simple_fn((count, DIM), || StandardNormal.sample(&mut *rng));
    for mut row in d.rows_mut() {
        let norm = row.dot(&row).sqrt();
        row /= norm;
    }
    d
}

/// The sliced Wasserstein-2 distance between two equally sized point sets (module docs).
pub fn sliced_wasserstein(a: &Array2<f32>, b: &Array2<f32>, directions: &Array2<f64>) -> f64 {
    let project = |points: &Array2<f32>, dir: ddim::ndarray::ArrayView1<f64>| {
        let mut p: Vec<f64> = points
            .rows()
            .into_iter()
            .map(|row| row.iter().zip(dir).map(|(&x, &d)| f64::from(x) * d).sum())
            .collect();
        p.sort_by(f64::total_cmp);
        p
    };
    let total: f64 = directions
        .axis_iter(Axis(0))
        .map(|dir| {
            let (pa, pb) = (project(a, dir), project(b, dir));
            pa.iter()
                .zip(&pb)
                .map(|(x, y)| (x - y).powi(2))
                .sum::<f64>()
                / pa.len() as f64
        })
        .sum();
    (total / directions.nrows() as f64).sqrt()
}

/// A generator seeded from a label, so that every part of the experiment has its own stream.
pub fn rng(seed: u64) -> SmallRng {
    SmallRng::seed_from_u64(seed)
}
