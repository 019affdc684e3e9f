//! The DDIM paper's headline claim, reproduced end to end with this crate:
//! deterministic DDIM (eta = 0) reaches in 10 to 50 steps a sample quality that the stochastic,
//! DDPM-like sampler (eta = 1) needs far more steps for (Song et al. 2020, Table 1).
//!
//! ```text
//! cargo run --release --example paper_table                 # table, and target/paper_table.svg
//! cargo run --release --example paper_table -- picture.svg  # the picture elsewhere
//! ```
//!
//! Without a trained network the claim can still be tested honestly: the data is a Gaussian
//! mixture whose exact noise prediction is known in closed form (derived in
//! `examples/shared/paper_experiment.rs`), so the sampler is the only source of error. Each
//! cell is the sliced Wasserstein-2 distance between 4000 samples and 4000 fresh data draws
//! (lower is better); the floor is the distance between two data draws.

#[path = "shared/paper_experiment.rs"]
mod paper_experiment;

use std::error::Error;
use std::fmt::Write as _;
use std::io::Write as _;
use std::time::Instant;

use ddim::ndarray::Array2;
use ddim::{DdimConfig, DdimError, DdimScheduler, StepOptions, TimestepSpacing};
use paper_experiment::{directions, rng, sample_ddim, scheduler, sliced_wasserstein, Mixture};

const STEPS: [usize; 5] = [10, 20, 50, 100, 1000];
const ETAS: [f64; 3] = [0.0, 0.5, 1.0];
const POINTS: usize = 4000;
const DIRECTIONS: usize = 64;

fn main() -> Result<(), Box<dyn Error>> {
    let svg_path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/target/paper_table.svg").into());
    let started = Instant::now();
    let mixture = Mixture::default();
    let dirs = directions(DIRECTIONS, &mut rng(1));
    let reference = mixture.sample(POINTS, &mut rng(2));
    let floor = sliced_wasserstein(&mixture.sample(POINTS, &mut rng(3)), &reference, &dirs);

    let mut scheduler = scheduler()?;
    let mut table = vec![[0.0; STEPS.len()]; ETAS.len()];
    let mut panels: Vec<(String, Array2<f32>)> = vec![("data".into(), reference.clone())];
    let total = ETAS.len() * STEPS.len();
    for (row, &eta) in ETAS.iter().enumerate() {
        for (col, &steps) in STEPS.iter().enumerate() {
            let done = row * STEPS.len() + col;
            eprint!("\rsampling {POINTS} points: eta = {eta:.1}, S = {steps:<4} ({done}/{total})");
            std::io::stderr().flush()?;
            let seed = 100 + done as u64;
            let samples =
                sample_ddim(&mut scheduler, &mixture, steps, eta, POINTS, &mut rng(seed))?;
            table[row][col] = sliced_wasserstein(&samples, &reference, &dirs);
            if (eta, steps) == (0.0, 10) || (eta, steps) == (1.0, 10) || (eta, steps) == (0.0, 50) {
                panels.push((format!("η = {eta:.0}, S = {steps}"), samples));
            }
        }
    }
    eprintln!(
        "\rsampled {total} configurations in {:.1} s{}",
        started.elapsed().as_secs_f64(),
        " ".repeat(20)
    );

    println!("\nSliced Wasserstein-2 distance to the data (lower is better), {POINTS} samples,");
    println!("8-Gaussian mixture in 16 dimensions with its exact noise prediction:\n");
    print!("{:>10}", "S");
    STEPS.iter().for_each(|s| print!("{s:>9}"));
    println!();
    for (eta, row) in ETAS.iter().zip(&table) {
        print!("{:>10}", format!("eta = {eta:.1}"));
        row.iter().for_each(|d| print!("{d:>9.3}"));
        println!();
    }
    println!("{:>10}{floor:>9.3}  (two independent data draws)", "floor");

    // Which timesteps a loop visits matters as much at few steps: the same deterministic
    // sampler (eta = 0) over other schedules.
    println!("\nThe same at eta = 0 with other timestep choices:\n");
    print!("{:>44}", "S");
    SCHEDULE_STEPS.iter().for_each(|s| print!("{s:>9}"));
    println!();
    for (label, choice) in SCHEDULES {
        print!("{label:>44}");
        for (i, &steps) in SCHEDULE_STEPS.iter().enumerate() {
            let mut scheduler = choice.scheduler(steps)?;
            let seed = 200 + i as u64;
            let samples = sample_on_schedule(&mut scheduler, &mixture, &mut rng(seed))?;
            print!("{:>9.3}", sliced_wasserstein(&samples, &reference, &dirs));
        }
        println!();
    }

    // The panels in the order of the picture: data; eta 0 at 10 steps; eta 1 at 10; eta 0 at 50.
    panels.swap(2, 3);
    std::fs::write(&svg_path, scatter_svg(&panels))?;
    println!("\nscatter plots of the first two coordinates: {svg_path}");
    Ok(())
}

const SCHEDULE_STEPS: [usize; 3] = [10, 20, 50];

/// The timestep choices of the second table.
#[derive(Clone, Copy)]
enum Schedule {
    Spacing(TimestepSpacing, bool),
    UniformLogSnr,
}

const SCHEDULES: [(&str, Schedule); 5] = [
    (
        "leading (diffusers' default)",
        Schedule::Spacing(TimestepSpacing::Leading, false),
    ),
    (
        "linspace, T / n back (diffusers' rule)",
        Schedule::Spacing(TimestepSpacing::Linspace, false),
    ),
    (
        "linspace, along the schedule",
        Schedule::Spacing(TimestepSpacing::Linspace, true),
    ),
    (
        "quadratic (original DDIM code)",
        Schedule::Spacing(TimestepSpacing::Quadratic, true),
    ),
    ("custom: uniform in log-SNR", Schedule::UniformLogSnr),
];

impl Schedule {
    /// A scheduler of the experiment with this choice of `steps` timesteps.
    fn scheduler(self, steps: usize) -> Result<DdimScheduler, DdimError> {
        let mut config = DdimConfig {
            clip_sample: false,
            ..DdimConfig::default()
        };
        if let Schedule::Spacing(spacing, along) = self {
            config.timestep_spacing = spacing;
            config.step_along_schedule = along;
        }
        let mut scheduler = DdimScheduler::new(config)?;
        match self {
            Schedule::Spacing(..) => scheduler.set_timesteps(steps)?,
            Schedule::UniformLogSnr => {
                let timesteps = uniform_log_snr(scheduler.alphas_cumprod(), steps);
                scheduler.set_custom_timesteps(&timesteps)?;
            }
        }
        Ok(scheduler)
    }
}

/// `steps` timesteps, from the last training timestep down, evenly spaced in
/// `log(alpha_bar / (1 - alpha_bar))`: for each target level, the first timestep at or below it.
fn uniform_log_snr(alphas_cumprod: &[f32], steps: usize) -> Vec<usize> {
    let log_snr = |t: usize| {
        let a = f64::from(alphas_cumprod[t]);
        (a / (1.0 - a)).ln()
    };
    let last = alphas_cumprod.len() - 1;
    let (high, low) = (log_snr(last), log_snr(0));
    let mut timesteps: Vec<usize> = (0..steps)
        .map(|i| {
            let target = high + (low - high) * i as f64 / (steps - 1).max(1) as f64;
            (0..=last)
                .rev()
                .find(|&t| log_snr(t) >= target)
                .unwrap_or(0)
        })
        .collect();
    timesteps.dedup();
    timesteps
}

/// Deterministic sampling along whatever schedule `scheduler` holds.
fn sample_on_schedule(
    scheduler: &mut DdimScheduler,
    mixture: &Mixture,
    rng: &mut rand::rngs::SmallRng,
) -> Result<Array2<f32>, DdimError> {
    use rand_distr::{Distribution, StandardNormal};
    let mut x = Array2::from_shape_simple_fn((POINTS, paper_experiment::DIM), || {
        StandardNormal.sample(&mut *rng)
    });
    for &t in scheduler.timesteps() {
        let eps = mixture.exact_epsilon(&x, f64::from(scheduler.alphas_cumprod()[t]));
        scheduler.step_in_place(&eps, t, &mut x, StepOptions::default())?;
    }
    Ok(x)
}

/// Side-by-side scatter plots of the first two coordinates, as a self-contained SVG.
fn scatter_svg(panels: &[(String, Array2<f32>)]) -> String {
    const SIZE: f64 = 240.0;
    const MARGIN: f64 = 12.0;
    const TITLE: f64 = 26.0;
    const EXTENT: f64 = 3.4;
    const SHOWN: usize = 1500;
    let width = panels.len() as f64 * (SIZE + MARGIN) + MARGIN;
    let height = SIZE + TITLE + 2.0 * MARGIN;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="14">"#
    );
    let _ = writeln!(
        svg,
        r##"<rect width="100%" height="100%" fill="#ffffff"/>"##
    );
    for (i, (title, points)) in panels.iter().enumerate() {
        let left = MARGIN + i as f64 * (SIZE + MARGIN);
        let top = MARGIN + TITLE;
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#222222">{title}</text>"##,
            left + SIZE / 2.0,
            MARGIN + 16.0
        );
        let _ = writeln!(
            svg,
            r##"<rect x="{left:.1}" y="{top:.1}" width="{SIZE}" height="{SIZE}" fill="#f7f7f7" stroke="#cccccc"/>"##
        );
        let _ = write!(svg, r##"<g fill="#1f5fa8" fill-opacity="0.35">"##);
        for row in points.rows().into_iter().take(SHOWN) {
            let (x, y) = (f64::from(row[0]), f64::from(row[1]));
            if x.abs() > EXTENT || y.abs() > EXTENT {
                continue;
            }
            let px = left + (x + EXTENT) / (2.0 * EXTENT) * SIZE;
            let py = top + (EXTENT - y) / (2.0 * EXTENT) * SIZE;
            let _ = write!(svg, r#"<circle cx="{px:.1}" cy="{py:.1}" r="1.3"/>"#);
        }
        let _ = writeln!(svg, "</g>");
    }
    svg.push_str("</svg>\n");
    svg
}
