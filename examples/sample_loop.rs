//! A full DDIM sampling loop driven by a real model's scheduler config.
//!
//! ```text
//! cargo run --release --example sample_loop                 # Stable Diffusion 1.5's config
//! cargo run --release --example sample_loop -- path/to/model  # any diffusers model folder
//! cargo run --release --example sample_loop -- path/to/model 200  # and a number of steps
//! ```
//!
//! There is no network here. The stand-in "model" is the exact denoiser of a known data
//! distribution: every latent element `i` is independently Gaussian, `x0_i ~ N(mu_i, s^2)`, with a
//! fixed pattern `mu` and `s = 0.5`. Then `x_t = sqrt(a) x0 + sqrt(1 - a) eps` (with
//! `a = alpha_bar_t`) is Gaussian too, and the best prediction of the clean latent is
//! `E[x0 | x_t] = mu + sqrt(a) s^2 / (a s^2 + 1 - a) * (x_t - sqrt(a) mu)`, from which the model's
//! output follows in its own parameterisation (epsilon, sample or v). Deterministic DDIM with this
//! model must turn pure noise into a draw from the data distribution: at the end the residual
//! `(x - mu) / s` should have mean 0 and standard deviation 1.

use ddim::ndarray::{Array, Array4};
use ddim::{DdimScheduler, PredictionType};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).unwrap_or_else(|| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/configs/stable-diffusion-v1-5.json"
        )
        .into()
    });
    let mut scheduler = DdimScheduler::from_pretrained(&path)?;
    let config = scheduler.config().clone();
    println!("scheduler config: {path}");
    println!(
        "  {} training timesteps, {} betas from {} to {}, {} prediction, {} spacing, steps_offset {}",
        config.num_train_timesteps,
        config.beta_schedule,
        config.beta_start,
        config.beta_end,
        config.prediction_type,
        config.timestep_spacing,
        config.steps_offset
    );

    let steps = match std::env::args().nth(2) {
        Some(text) => text.parse()?,
        None => 50,
    };
    scheduler.set_timesteps(steps)?;
    let ts = scheduler.timesteps();
    println!(
        "{steps} inference steps: {}, {}, {}, ..., {}",
        ts[0],
        ts[1],
        ts[2],
        ts[steps - 1]
    );

    // A Stable Diffusion 1.5 latent: batch 1, 4 channels, 64 x 64.
    let shape = (1, 4, 64, 64);
    let data = GaussianData {
        mean: Array::from_shape_fn(shape, |(_, c, y, x)| {
            let (fy, fx) = (y as f32 / 64.0, x as f32 / 64.0);
            0.8 * ((c + 1) as f32 * 3.1 * fx).sin() * (2.3 * fy + c as f32).cos()
        }),
        std: 0.5,
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(2020);
    let noise: Array4<f32> = Array::from_shape_simple_fn(shape, || StandardNormal.sample(&mut rng));
    let mut latents = noise * scheduler.init_noise_sigma();

    println!("\n step  timestep  alpha_bar  std of (x - mu) / s");
    for (i, &t) in scheduler.timesteps().iter().enumerate() {
        let input = scheduler.scale_model_input(&latents, t);
        let output = data.exact_model_output(&scheduler, &input, t);
        latents = scheduler.step(&output, t, &latents)?.prev_sample;
        if i % 7 == 0 || i + 1 == steps {
            let alpha_bar = scheduler.alphas_cumprod()[t];
            let (_, std) = data.standardized_moments(&latents);
            println!("{:>5}  {:>8}  {:>9.6}  {:>19.4}", i + 1, t, alpha_bar, std);
        }
    }
    let (mean, std) = data.standardized_moments(&latents);
    println!(
        "\nsampled latents, standardized by the data distribution: mean {mean:+.4}, std {std:.4} \
         (a draw from the data gives 0 and 1; fewer steps give a slightly narrower spread)"
    );
    Ok(())
}

/// Independent Gaussian latents `x0_i ~ N(mean_i, std^2)`.
struct GaussianData {
    mean: Array4<f32>,
    std: f32,
}

impl GaussianData {
    /// The exact model output at `x_t`, in the scheduler's prediction type.
    fn exact_model_output(
        &self,
        scheduler: &DdimScheduler,
        x_t: &Array4<f32>,
        t: usize,
    ) -> Array4<f32> {
        let a = f64::from(scheduler.alphas_cumprod()[t]);
        let var = f64::from(self.std).powi(2);
        let (sa, sb) = (a.sqrt(), (1.0 - a).sqrt());
        let gain = sa * var / (a * var + 1.0 - a);
        let mut out = x_t.clone();
        ddim::ndarray::Zip::from(&mut out)
            .and(x_t)
            .and(&self.mean)
            .for_each(|o, &x, &mu| {
                let (x, mu) = (f64::from(x), f64::from(mu));
                let x0 = mu + gain * (x - sa * mu);
                let eps = (x - sa * x0) / sb;
                *o = match scheduler.config().prediction_type {
                    PredictionType::Sample => x0,
                    PredictionType::VPrediction => sa * eps - sb * x0,
                    _ => eps,
                } as f32;
            });
        out
    }

    /// Mean and standard deviation of `(x - mean) / std` over all elements.
    fn standardized_moments(&self, x: &Array4<f32>) -> (f64, f64) {
        let z = (x - &self.mean) / self.std;
        let n = z.len() as f64;
        let mean = z.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = z
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n;
        (mean, var.sqrt())
    }
}
