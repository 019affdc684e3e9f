//! Loads the scheduler configs of five public diffusion models (copies are in
//! `tests/fixtures/configs/`), prints the DDIM schedule each one gives, and shows what a broken
//! config gets back.
//!
//! ```text
//! cargo run --example load_config
//! ```

use std::path::Path;

use ddim::{DdimConfig, DdimScheduler};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/configs");
    let mut files: Vec<_> = std::fs::read_dir(&folder)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();

    println!(
        "{:<34} {:>13} {:>9} {:>12} {:>12}",
        "model (scheduler_config.json)", "prediction", "50 steps", "alpha_bar[0]", "alpha_bar[T]"
    );
    for path in &files {
        let mut scheduler = DdimScheduler::from_pretrained(path)?;
        scheduler.set_timesteps(50)?;
        let timesteps = scheduler.timesteps();
        let (Some(first), Some(last)) = (timesteps.first(), timesteps.last()) else {
            return Err("set_timesteps(50) gave no timesteps".into());
        };
        let bars = scheduler.alphas_cumprod();
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy())
            .unwrap_or_default();
        println!(
            "{:<34} {:>13} {:>9} {:>12.6} {:>12.3e}",
            name,
            scheduler.config().prediction_type.to_string(),
            format!("{first}..{last}"),
            bars.first().copied().unwrap_or(f32::NAN),
            bars.last().copied().unwrap_or(f32::NAN),
        );
    }

    println!("\nWhat broken configs get back:");
    for text in [
        r#"{"beta_schedule": "cosine"}"#,
        r#"{"num_train_timesteps": 1000, "clip_sample": "yes"}"#,
        "{\n  \"prediction_type\": \"epsilon\",\n  \"steps_offset\": 1,\n}",
        r#"{"beta_start": 0.5, "beta_end": 1.2}"#,
        r#"{"trained_betas": [0.1, 0.2], "num_train_timesteps": 1000}"#,
    ] {
        match DdimConfig::from_json_str(text) {
            Ok(_) => println!("  {text}\n    accepted"),
            Err(err) => println!("  {}\n    -> {err}", text.replace('\n', " ")),
        }
    }
    let mut scheduler = DdimScheduler::new(DdimConfig {
        steps_offset: 1,
        ..DdimConfig::default()
    })?;
    if let Err(err) = scheduler.set_timesteps(1000) {
        println!("  set_timesteps(1000) with steps_offset 1\n    -> {err}");
    }
    Ok(())
}
