//! The demonstration's whole path (sampling jobs, tables, figures) on a tiny setting, so that
//! `cargo test` covers what `cargo run -p ddim-digits` does without its run time.

mod common;

use common::package_dir;
use ddim::DdimScheduler;
use ddim_digits::demo::{self, Job, Settings};
use ddim_digits::{Digits, OnnxUnet};

fn tiny() -> Settings {
    Settings {
        threads: 2,
        batch: 2,
        quality_seeds: 2,
        quality_steps: vec![2, 3],
        long_steps: 6,
        long_seeds: 1,
        long_batch: 2,
        reconstruction_images: 3,
        clipped_reconstruction_images: 2,
        reconstruction_steps: vec![2, 4],
        interpolation_rows: 2,
        interpolation_columns: 3,
        demo_steps: 2,
        speed_repeats: 1,
    }
}

#[test]
fn the_plans_cost_what_their_documentation_says() {
    let cost = |s: &Settings| -> u64 { Job::plan(s).iter().map(|j| j.image_steps(s)).sum() };
    assert_eq!(cost(&Settings::full(2)), 298_520);
    assert_eq!(cost(&Settings::quick(2)), 45_560);
    // Longest jobs first, so that threads finish together.
    let jobs = Job::plan(&Settings::full(2));
    let settings = Settings::full(2);
    assert!(jobs
        .windows(2)
        .all(|w| w[0].image_steps(&settings) >= w[1].image_steps(&settings)));
}

#[test]
fn a_tiny_demonstration_gives_every_table_and_figure_whatever_the_thread_count() {
    let unet = OnnxUnet::load(package_dir().join("model").join("unet.onnx"))
        .unwrap_or_else(|e| panic!("{e}"));
    let scheduler = DdimScheduler::from_pretrained(package_dir().join("model"))
        .unwrap_or_else(|e| panic!("{e}"));
    let digits = Digits::load(Digits::default_path()).unwrap_or_else(|e| panic!("{e}"));

    let settings = tiny();
    let samples =
        demo::run(&unet, &digits, &scheduler, &settings, false).unwrap_or_else(|e| panic!("{e}"));
    let report = demo::report(&samples, &digits).unwrap_or_else(|e| panic!("{e}"));
    for heading in [
        "Sample quality",
        "Sample consistency",
        "Interpolation",
        "Reconstruction",
    ] {
        assert!(report.text.contains(heading), "{heading} missing");
    }
    let speed = demo::speed(&unet, &scheduler, &samples).unwrap_or_else(|e| panic!("{e}"));
    assert!(speed.contains("scheduler share"));

    // The numbers depend on the seeds only, not on how many threads sampled.
    let one_thread = Settings {
        threads: 1,
        ..tiny()
    };
    let again =
        demo::run(&unet, &digits, &scheduler, &one_thread, false).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again.outputs, samples.outputs);

    let folder = std::env::temp_dir().join(format!("ddim-digits-test-{}", std::process::id()));
    let mut names = Vec::new();
    for (name, sheet) in &report.figures {
        let path = folder.join(name);
        sheet.save(&path).unwrap_or_else(|e| panic!("{e}"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
            "{name} is not a PNG"
        );
        names.push(name.clone());
    }
    let _ = std::fs::remove_dir_all(&folder);
    names.sort();
    assert_eq!(
        names,
        [
            "digits_interpolation.png",
            "digits_reconstruction.png",
            "digits_samples.png",
            "digits_steps.png"
        ]
    );
}
