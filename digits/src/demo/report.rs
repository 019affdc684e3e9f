//! From samples to tables and figures.

use std::fmt::Write as _;

use ddim::ndarray::{s, Array2, Array4, ArrayView2, Axis};
use ddim::DdimScheduler;

use super::jobs::generator;
use super::{Samples, ETAS};
use crate::data::{Digits, PIXELS};
use crate::figure::Sheet;
use crate::metrics::{
    class_counts, kernel_distance, mean_ink, rmse, total_variation, GaussianFit, NearestNeighbours,
};
use crate::sampler::{Sampler, Timings};
use crate::table::Table;
use crate::unet::OnnxUnet;
use crate::DigitsError;

/// Random training subsets averaged for the real-against-real floor of the Fréchet distance.
const FLOOR_SUBSETS: u64 = 5;
/// Magnification of the digits in the figures.
const SCALE: usize = 5;

/// The demonstration's results: Markdown text (headings, explanations and tables) and the
/// figures to save.
#[derive(Debug, Clone)]
pub struct Report {
    /// Markdown, ready to print.
    pub text: String,
    /// `(file name, picture)`; the file names start with `digits_` and end with `.png`.
    pub figures: Vec<(String, Sheet)>,
}

/// Measures everything in `samples` against the data and lays it out.
///
/// # Errors
///
/// [`DigitsError::InvalidArgument`] when `samples` lacks a job the tables need (samples from
/// other settings), or when a long run does not start from the noise of the quality run of
/// the same seed.
pub fn report(samples: &Samples, digits: &Digits) -> Result<Report, DigitsError> {
    let reference = Reference::new(digits)?;
    let mut text = String::new();
    let mut figures = Vec::new();
    quality(samples, &reference, &mut text)?;
    consistency(samples, &reference, &mut text, &mut figures)?;
    interpolation(samples, &reference, &mut text, &mut figures)?;
    reconstruction(samples, &mut text, &mut figures)?;
    figures.push((
        "digits_samples.png".to_string(),
        samples_sheet(samples, digits)?,
    ));
    Ok(Report { text, figures })
}

/// The real digits the samples are measured against.
struct Reference {
    held_out: Array2<f32>,
    held_out_fit: GaussianFit,
    held_out_labels: Vec<u8>,
    train: Array2<f32>,
    train_counts: [usize; 10],
    neighbours: NearestNeighbours,
}

impl Reference {
    fn new(digits: &Digits) -> Result<Self, DigitsError> {
        let train = digits.image_space(digits.train());
        let held_out = digits.image_space(digits.held_out());
        let train_labels = digits.labels_of(digits.train());
        Ok(Reference {
            held_out_fit: GaussianFit::of(held_out.view())?,
            held_out,
            held_out_labels: digits.labels_of(digits.held_out()),
            train_counts: class_counts(train_labels.iter().copied()),
            neighbours: NearestNeighbours::new(train.clone(), train_labels)?,
            train,
        })
    }

    /// The Fréchet and kernel distances of `n` real training digits to the held-out ones,
    /// averaged over seeded random subsets: what a perfect model would score with `n`
    /// samples.
    fn floor(&self, n: usize) -> Result<(f64, f64), DigitsError> {
        let (mut frechet, mut kernel) = (0.0, 0.0);
        for seed in 0..FLOOR_SUBSETS {
            let order = shuffled(self.train.nrows(), seed);
            let subset = self.train.select(Axis(0), &order[..n.min(order.len())]);
            frechet += GaussianFit::of(subset.view())?.frechet_distance(&self.held_out_fit)?;
            kernel += kernel_distance(subset.view(), self.held_out.view())?;
        }
        let runs = FLOOR_SUBSETS as f64;
        Ok((frechet / runs, kernel / runs))
    }
}

/// What the quality table says about one set of images `(n, 64)` in `[0, 1]`.
struct Quality {
    n: usize,
    frechet: f64,
    kernel: f64,
    neighbour_distance: f64,
    imbalance: f64,
    class_range: (f64, f64),
}

fn measure(images: ArrayView2<'_, f32>, reference: &Reference) -> Result<Quality, DigitsError> {
    let n = images.nrows();
    let frechet = GaussianFit::of(images)?.frechet_distance(&reference.held_out_fit)?;
    let found = reference.neighbours.nearest_all(images);
    let neighbour_distance = found.iter().map(|f| f.rms_distance).sum::<f64>() / n as f64;
    let counts = class_counts(found.iter().map(|f| f.label));
    Ok(Quality {
        n,
        frechet,
        kernel: kernel_distance(images, reference.held_out.view())?,
        neighbour_distance,
        imbalance: total_variation(&counts, &reference.train_counts),
        class_range: share_range(&counts),
    })
}

/// `(n, 8, 8, 1)` images as `(n, 64)` rows.
fn flat(images: &Array4<f32>) -> Array2<f32> {
    let n = images.len_of(Axis(0));
    let standard = images.as_standard_layout();
    Array2::from_shape_vec((n, PIXELS), standard.iter().copied().collect())
        .expect("8 x 8 x 1 images have 64 values each")
}

/// The images of `seeds` at `steps` and `eta`, stacked, `(n, 8, 8, 1)`.
fn images_of(
    samples: &Samples,
    seeds: u64,
    steps: usize,
    eta: f64,
) -> Result<Array4<f32>, DigitsError> {
    let parts: Vec<_> = (0..seeds)
        .map(|seed| {
            samples
                .generated(seed, steps, eta)
                .map(|g| g.images.view())
                .ok_or_else(|| missing(&format!("seed {seed}, {steps} steps, eta {eta}")))
        })
        .collect::<Result<_, _>>()?;
    ddim::ndarray::concatenate(Axis(0), &parts)
        .map_err(|e| DigitsError::InvalidArgument(e.to_string()))
}

fn missing(what: &str) -> DigitsError {
    DigitsError::InvalidArgument(format!("the samples lack the run {what}"))
}

fn quality(samples: &Samples, reference: &Reference, out: &mut String) -> Result<(), DigitsError> {
    let settings = &samples.settings;
    // (steps, seeds, samples per eta)
    let mut columns: Vec<(usize, u64, usize)> = settings
        .quality_steps
        .iter()
        .map(|&s| (s, settings.quality_seeds, settings.quality_samples()))
        .collect();
    columns.push((
        settings.long_steps,
        settings.long_seeds,
        settings.long_samples(),
    ));

    let mut cells = Vec::new(); // (steps, eta, Quality)
    for &(steps, seeds, _) in &columns {
        for eta in ETAS {
            let images = images_of(samples, seeds, steps, eta)?;
            cells.push((steps, eta, measure(flat(&images).view(), reference)?));
        }
    }
    let cell = |steps: usize, eta: f64| {
        cells
            .iter()
            .find(|(s, e, _)| (*s, *e) == (steps, eta))
            .map(|(_, _, q)| q)
    };
    let mut header = vec!["".to_string()];
    header.extend(columns.iter().map(|(s, _, _)| format!("S = {s}")));
    let count_row = || {
        let mut row = vec!["samples".to_string()];
        row.extend(columns.iter().map(|(_, _, n)| n.to_string()));
        row
    };

    let _ = writeln!(
        out,
        "## Sample quality against the number of steps (paper section 5.1, Table 1)\n\n\
         Fréchet distance between Gaussian fits of generated and held-out digits in raw pixel \
         space (64 pixels in [0, 1]; lower is better). `real` is the same distance for as many \
         real training digits as there are samples, averaged over {FLOOR_SUBSETS} random \
         subsets: the floor a perfect model would reach with that many samples (the distance \
         of a finite sample is biased upwards, more so for fewer samples).\n"
    );
    let mut table = Table::new(header.clone());
    for eta in ETAS {
        let mut row = vec![format!("eta = {eta}")];
        for &(steps, _, _) in &columns {
            row.push(cell(steps, eta).map_or(String::new(), |q| format!("{:.3}", q.frechet)));
        }
        table.row(row);
    }
    let mut floor_row = vec!["real".to_string()];
    let mut kernel_floor_row = vec!["real".to_string()];
    for &(_, _, n) in &columns {
        let (frechet, kernel) = reference.floor(n)?;
        floor_row.push(format!("{frechet:.3}"));
        kernel_floor_row.push(format!("{:.2}", 1000.0 * kernel));
    }
    table.row(floor_row);
    table.row(count_row());
    let _ = writeln!(out, "{table}");

    let _ = writeln!(
        out,
        "The same samples by the kernel distance (KID's unbiased squared MMD with a cubic \
         kernel, on pixels; x 1000): 0 on average for samples of the real distribution at any \
         sample size, so `real` shows the noise of the estimate rather than a floor.\n"
    );
    let mut table = Table::new(header);
    for eta in ETAS {
        let mut row = vec![format!("eta = {eta}")];
        for &(steps, _, _) in &columns {
            row.push(
                cell(steps, eta).map_or(String::new(), |q| format!("{:.2}", 1000.0 * q.kernel)),
            );
        }
        table.row(row);
    }
    table.row(kernel_floor_row);
    table.row(count_row());
    let _ = writeln!(out, "{table}");

    let held_found = reference.neighbours.nearest_all(reference.held_out.view());
    let held_n = held_found.len();
    let correct = held_found
        .iter()
        .zip(&reference.held_out_labels)
        .filter(|(f, &l)| f.label == l)
        .count();
    let held_distance = held_found.iter().map(|f| f.rms_distance).sum::<f64>() / held_n as f64;
    let held_counts = class_counts(held_found.iter().map(|f| f.label));
    let all_real =
        GaussianFit::of(reference.train.view())?.frechet_distance(&reference.held_out_fit)?;

    let _ = writeln!(
        out,
        "Recognisability, with the 1-nearest-neighbour classifier of the training digits in \
         pixel space (it labels {correct} of the {held_n} held-out digits correctly, \
         {:.1}%). `nearest` is the mean RMS pixel difference to the nearest training digit: \
         well above the real digits' value would mean blurry or odd samples, well below it \
         memorised ones. `class TV` is the total variation distance between the classes the \
         classifier gives the samples and the training labels' proportions (0 = the same \
         balance; finite samples of the real distribution score above 0 too), then the rarest \
         and commonest class's share. (All {} training digits against the held-out ones: \
         Fréchet distance {all_real:.3}.)\n",
        100.0 * correct as f64 / held_n as f64,
        reference.train.nrows()
    );
    let mut table = Table::new(["S", "eta", "samples", "nearest", "class TV", "class shares"]);
    let percent_range =
        |(low, high): (f64, f64)| format!("{:.1}-{:.1}%", 100.0 * low, 100.0 * high);
    for (steps, eta, q) in &cells {
        table.row([
            steps.to_string(),
            eta.to_string(),
            q.n.to_string(),
            format!("{:.4}", q.neighbour_distance),
            format!("{:.3}", q.imbalance),
            percent_range(q.class_range),
        ]);
    }
    table.row([
        "held-out real".to_string(),
        String::new(),
        held_n.to_string(),
        format!("{held_distance:.4}"),
        format!(
            "{:.3}",
            total_variation(&held_counts, &reference.train_counts)
        ),
        percent_range(share_range(&held_counts)),
    ]);
    let _ = writeln!(out, "{table}");
    Ok(())
}

/// The smallest and largest class share of a count.
fn share_range(counts: &[usize; 10]) -> (f64, f64) {
    let n = counts.iter().sum::<usize>().max(1) as f64;
    let min = counts.iter().copied().min().unwrap_or(0) as f64;
    let max = counts.iter().copied().max().unwrap_or(0) as f64;
    (min / n, max / n)
}

fn consistency(
    samples: &Samples,
    reference: &Reference,
    out: &mut String,
    figures: &mut Vec<(String, Sheet)>,
) -> Result<(), DigitsError> {
    let settings = &samples.settings;
    let long = settings.long_steps;
    let _ = writeln!(
        out,
        "## Sample consistency (paper section 5.2)\n\n\
         The same initial noise x_T decoded with S steps and with the longest run (S = {long}, \
         {} samples per eta): the share of samples that the nearest-training-digit classifier \
         puts in the same class as the long run's, and the RMS pixel difference to it (images \
         in [0, 1]). With eta = 0 the image is a deterministic function of x_T (an ODE \
         solved more or less finely); with eta = 1 every step adds fresh noise (the same \
         generator, but S different draws), so x_T decides less of the result.\n",
        settings.long_samples()
    );
    let mut table = Table::new([
        "S",
        "eta 0: same class",
        "eta 0: RMS difference",
        "eta 1: same class",
        "eta 1: RMS difference",
    ]);
    for &steps in &settings.quality_steps {
        let mut row = vec![steps.to_string()];
        for eta in ETAS {
            let (mut agree, mut total, mut squares, mut values) = (0usize, 0usize, 0.0f64, 0usize);
            for seed in 0..settings.long_seeds {
                let long_run = samples
                    .generated(seed, long, eta)
                    .ok_or_else(|| missing(&format!("seed {seed}, {long} steps, eta {eta}")))?;
                let run = samples
                    .generated(seed, steps, eta)
                    .ok_or_else(|| missing(&format!("seed {seed}, {steps} steps, eta {eta}")))?;
                let k = long_run.images.len_of(Axis(0));
                if run.initial_noise.len_of(Axis(0)) < k
                    || run.initial_noise.slice(s![..k, .., .., ..]) != long_run.initial_noise
                {
                    return Err(DigitsError::InvalidArgument(format!(
                        "seed {seed}: the {long}-step run does not start from the noise of the \
                         {steps}-step run"
                    )));
                }
                let a = flat(&run.images.slice(s![..k, .., .., ..]).to_owned());
                let b = flat(&long_run.images);
                let la = reference.neighbours.nearest_all(a.view());
                let lb = reference.neighbours.nearest_all(b.view());
                agree += la
                    .iter()
                    .zip(&lb)
                    .filter(|(x, y)| x.label == y.label)
                    .count();
                total += k;
                squares += (&a - &b).mapv(|d| f64::from(d) * f64::from(d)).sum();
                values += a.len();
            }
            row.push(format!(
                "{:.0}% ({agree}/{total})",
                100.0 * agree as f64 / total.max(1) as f64
            ));
            row.push(format!("{:.4}", (squares / values.max(1) as f64).sqrt()));
        }
        table.row(row);
    }
    let _ = writeln!(out, "{table}");

    // The figure: one block per eta, a row per step count, the first samples of seed 0.
    let mut sheet = Sheet::new(SCALE);
    let columns = settings.long_batch.min(12);
    let mut steps_list = settings.quality_steps.clone();
    steps_list.push(long);
    for (b, eta) in ETAS.into_iter().enumerate() {
        if b > 0 {
            sheet.push_gap();
        }
        for &steps in &steps_list {
            let run = samples
                .generated(0, steps, eta)
                .ok_or_else(|| missing(&format!("seed 0, {steps} steps, eta {eta}")))?;
            sheet.push_row(image_tiles(&run.images, columns));
        }
    }
    figures.push(("digits_steps.png".to_string(), sheet));
    let _ = writeln!(
        out,
        "Figure `digits_steps.png`: the first {columns} samples of seed 0; rows S = {} for \
         eta = 0 (top block) and eta = 1 (bottom block).\n",
        join(&steps_list)
    );
    Ok(())
}

fn interpolation(
    samples: &Samples,
    reference: &Reference,
    out: &mut String,
    figures: &mut Vec<(String, Sheet)>,
) -> Result<(), DigitsError> {
    let settings = &samples.settings;
    let (rows, columns) = (settings.interpolation_rows, settings.interpolation_columns);
    let last = columns.max(2) - 1;
    let _ = writeln!(
        out,
        "## Interpolation (paper section 5.3)\n\n\
         {rows} pairs of initial noises a, b; column i decodes `ddim::slerp(a, b, i/{last})` \
         with {} deterministic steps (eta = 0). For contrast, the same pairs interpolated \
         linearly, `(1 - alpha) a + alpha b`. `norm` is the noise's norm over the mean norm of \
         its two ends; `ink` the decoded digits' mean pixel value in [0, 1] (held-out real \
         digits: {:.3}); `nearest` the mean RMS pixel difference to the nearest training \
         digit (held-out real digits: see the quality table). Means over the {rows} rows.\n",
        settings.demo_steps,
        mean_ink(reference.held_out.view())
    );
    let mut header = vec![String::new()];
    header.extend((0..columns).map(|c| format!("{c}/{last}")));
    let mut table = Table::new(header);
    let mut sheet = Sheet::new(SCALE);
    for (b, spherical) in [true, false].into_iter().enumerate() {
        let name = if spherical { "slerp" } else { "linear" };
        let (noise, latents) = samples
            .interpolated(spherical)
            .ok_or_else(|| missing(&format!("{name} interpolation")))?;
        let images = crate::to_images(latents);
        let found = reference.neighbours.nearest_all(flat(&images).view());
        let norm = |i: usize| {
            noise
                .index_axis(Axis(0), i)
                .iter()
                .map(|v| f64::from(*v).powi(2))
                .sum::<f64>()
                .sqrt()
        };
        let flat_images = flat(&images);
        let mut norm_row = vec![format!("{name}: norm")];
        let mut ink_row = vec![format!("{name}: ink")];
        let mut near_row = vec![format!("{name}: nearest")];
        for c in 0..columns {
            let (mut ratio, mut ink, mut near) = (0.0, 0.0, 0.0);
            for r in 0..rows {
                let i = r * columns + c;
                let ends = 0.5 * (norm(r * columns) + norm(r * columns + last));
                ratio += norm(i) / ends;
                ink += mean_ink(flat_images.slice(s![i..i + 1, ..]));
                near += found[i].rms_distance;
            }
            norm_row.push(format!("{:.3}", ratio / rows as f64));
            ink_row.push(format!("{:.3}", ink / rows as f64));
            near_row.push(format!("{:.3}", near / rows as f64));
        }
        table.row(norm_row);
        table.row(ink_row);
        table.row(near_row);
        if b > 0 {
            sheet.push_gap();
        }
        for r in 0..rows {
            let block = images.slice(s![r * columns..(r + 1) * columns, .., .., ..]);
            sheet.push_row(image_tiles(&block.to_owned(), columns));
        }
    }
    let _ = writeln!(out, "{table}");
    let _ = writeln!(
        out,
        "Figure `digits_interpolation.png`: top block slerp, bottom block linear \
         interpolation; one noise pair per row, alpha from 0 (left) to 1 (right).\n"
    );
    figures.push(("digits_interpolation.png".to_string(), sheet));
    Ok(())
}

fn reconstruction(
    samples: &Samples,
    out: &mut String,
    figures: &mut Vec<(String, Sheet)>,
) -> Result<(), DigitsError> {
    let settings = &samples.settings;
    let steps_list = &settings.reconstruction_steps;
    let (all, clipped_n) = (
        settings.reconstruction_images,
        settings.clipped_reconstruction_images,
    );
    let get = |clip: bool, steps: usize| {
        samples
            .reconstructed(clip, steps)
            .ok_or_else(|| missing(&format!("reconstruction clip {clip}, {steps} steps")))
    };
    let _ = writeln!(
        out,
        "## Reconstruction from the DDIM encoding (paper section 5.4, Table 2)\n\n\
         Held-out digits x_0 in [-1, 1] encoded to x_T with S steps of DDIM inversion \
         (`inverse_step`, timesteps ascending) and decoded with S deterministic steps \
         (`step`, eta = 0); RMS error of the decoded digits in [-1, 1]. The shipped config \
         has `clip_sample: false`; the `clip_sample: true` rows load the same config with \
         that key switched on, which clamps every predicted x_0 to [-1, 1] in both \
         directions. The paper's Table 2 reports the per-pixel squared error of [0, 1] \
         images, given here too for the shipped config.\n"
    );
    let mut header = vec![String::new()];
    header.extend(steps_list.iter().map(|s| format!("S = {s}")));
    let mut table = Table::new(header);
    let mut rows: Vec<(String, bool, usize, bool)> = vec![
        (
            format!("clip_sample: false, {all} digits"),
            false,
            all,
            false,
        ),
        (
            format!("same, squared error in [0, 1] ({all} digits)"),
            false,
            all,
            true,
        ),
    ];
    if clipped_n < all {
        rows.push((
            format!("clip_sample: false, first {clipped_n}"),
            false,
            clipped_n,
            false,
        ));
    }
    rows.push((
        format!("clip_sample: true, first {clipped_n}"),
        true,
        clipped_n,
        false,
    ));
    for (label, clip, n, paper_unit) in rows {
        let mut row = vec![label];
        for &steps in steps_list {
            let [original, _, decoded] = get(clip, steps)?;
            let (o, d) = (
                original.slice(s![..n, .., .., ..]),
                decoded.slice(s![..n, .., .., ..]),
            );
            let e = rmse(d.into_dyn(), o.into_dyn())?;
            row.push(if paper_unit {
                format!("{:.5}", (e / 2.0).powi(2))
            } else {
                format!("{e:.4}")
            });
        }
        table.row(row);
    }
    let _ = writeln!(out, "{table}");

    let columns = clipped_n.min(12);
    let mut sheet = Sheet::new(SCALE);
    for (b, clip) in [false, true].into_iter().enumerate() {
        if b > 0 {
            sheet.push_gap();
        }
        let first = steps_list.first().copied().unwrap_or(10);
        let [original, _, _] = get(clip, first)?;
        sheet.push_row(model_tiles(&original, columns));
        for &steps in steps_list {
            let [_, _, decoded] = get(clip, steps)?;
            sheet.push_row(model_tiles(&decoded, columns));
        }
    }
    figures.push(("digits_reconstruction.png".to_string(), sheet));
    let _ = writeln!(
        out,
        "Figure `digits_reconstruction.png`: the first {columns} held-out digits (first row \
         of each block) and their reconstructions with S = {} (rows below); top block \
         `clip_sample: false`, bottom block `clip_sample: true`.\n",
        join(steps_list)
    );
    Ok(())
}

/// Generated digits (eta 0, the demonstration's step count) beside real held-out ones.
fn samples_sheet(samples: &Samples, digits: &Digits) -> Result<Sheet, DigitsError> {
    let settings = &samples.settings;
    let generated = images_of(samples, settings.quality_seeds, settings.demo_steps, 0.0)?;
    let generated = flat(&generated);
    let real = digits.image_space(digits.held_out());
    let (rows, columns) = (8, 8);
    let mut sheet = Sheet::new(SCALE);
    for r in 0..rows {
        let mut tiles = Vec::new();
        for (set, blank) in [(&generated, true), (&real, false)] {
            for c in 0..columns {
                tiles.push(
                    set.outer_iter()
                        .nth(r * columns + c)
                        .map(|row| tile(row.to_owned())),
                );
            }
            if blank {
                tiles.push(None);
            }
        }
        sheet.push_row(tiles);
    }
    Ok(sheet)
}

/// The single-threaded speed measurement and the demonstration's totals, as Markdown.
///
/// Runs `settings.speed_repeats` pipelines of `settings.batch` images and
/// `settings.demo_steps` steps for each eta on this thread alone, timing every network call
/// and every scheduler step, then adds the totals of the threaded run in `demo`.
///
/// # Errors
///
/// As [`Sampler::generate`].
pub fn speed(
    unet: &OnnxUnet,
    scheduler: &DdimScheduler,
    demo: &Samples,
) -> Result<String, DigitsError> {
    let settings = &demo.settings;
    let mut scheduler = scheduler.clone();
    scheduler.set_timesteps(settings.demo_steps)?;
    let mut table = Table::new([
        "loop",
        "network, µs per call",
        "scheduler, µs per step",
        "scheduler share",
    ]);
    let row = |label: String, t: &Timings| {
        [
            label,
            format!("{:.0}", t.network_us_per_call()),
            format!("{:.2}", t.scheduler_us_per_call()),
            format!("{:.4}%", t.scheduler_percent()),
        ]
    };
    for eta in ETAS {
        let mut sampler = Sampler::new(unet);
        for repeat in 0..settings.speed_repeats as u64 {
            let mut g = generator(repeat);
            sampler.generate(&scheduler, &mut g, settings.batch, eta)?;
        }
        let what = if eta == 0.0 {
            "eta 0"
        } else {
            "eta 1 (the step draws its noise)"
        };
        table.row(row(
            format!(
                "{what}, batch {}, {} steps, one thread",
                settings.batch, settings.demo_steps
            ),
            sampler.timings(),
        ));
    }
    table.row(row(
        format!("whole demonstration, {} threads", settings.threads),
        &demo.timings,
    ));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Speed: the network against the scheduler\n\n\
         Mean wall-clock time of one `OnnxUnet::noise_pred` call and of one scheduler step \
         (`scale_model_input` plus `step_in_place` or `inverse_step`, including the \
         TorchGenerator draw when eta > 0), and the scheduler's share of the loop's time.\n"
    );
    let _ = writeln!(out, "{table}");
    let _ = writeln!(
        out,
        "The demonstration evaluated the network on {} images x steps in {:.1} s of \
         wall-clock time ({} network calls).\n",
        demo.image_steps,
        demo.elapsed.as_secs_f64(),
        demo.timings.network_calls
    );
    Ok(out)
}

/// An 8x8 tile from 64 values in `[0, 1]`.
fn tile(values: ddim::ndarray::Array1<f32>) -> Array2<f32> {
    values
        .into_shape_with_order((8, 8))
        .expect("64 values make an 8 x 8 tile")
}

/// The first `n` of `(batch, 8, 8, 1)` images as tiles.
fn image_tiles(images: &Array4<f32>, n: usize) -> Vec<Option<Array2<f32>>> {
    images
        .outer_iter()
        .take(n)
        .map(|image| Some(image.index_axis(Axis(2), 0).to_owned()))
        .collect()
}

/// The first `n` of `(batch, 1, 8, 8)` model-space samples as tiles (`x / 2 + 0.5`).
fn model_tiles(x: &Array4<f32>, n: usize) -> Vec<Option<Array2<f32>>> {
    x.outer_iter()
        .take(n)
        .map(|item| Some(item.index_axis(Axis(0), 0).mapv(|v| v / 2.0 + 0.5)))
        .collect()
}

fn join(values: &[usize]) -> String {
    values
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `0..n` in a seeded random order (Fisher-Yates driven by SplitMix64).
fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut state = seed.wrapping_add(0x5EED);
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}
