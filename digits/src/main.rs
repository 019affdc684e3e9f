//! `cargo run --release -p ddim-digits [-- --quick] [--threads N] [--figures DIR]`
//!
//! Measures the DDIM paper's claims on the trained digits model: prints Markdown tables on
//! standard output, a progress line on standard error, and writes the figures
//! `digits_*.png` into the repository's `docs/` folder (full run) or `--figures DIR`.
//! `--quick` gives the same tables from fewer samples, in under a minute, and writes no
//! figures unless `--figures` is given.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use ddim::DdimScheduler;
use ddim_digits::demo::{self, Settings};
use ddim_digits::{Digits, DigitsError, OnnxUnet};

const USAGE: &str = "usage: ddim-digits [--quick] [--threads N] [--figures DIR]

  --quick        the same tables from fewer samples (under a minute); no figures unless
                 --figures is given
  --threads N    sampling threads (default: the number of cores)
  --figures DIR  where to write the figures (default for the full run: the repository's docs/)";

struct Args {
    quick: bool,
    threads: usize,
    figures: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        quick: false,
        threads: std::thread::available_parallelism().map_or(1, usize::from),
        figures: None,
    };
    let mut figures_given = false;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => args.quick = true,
            "--threads" => {
                let value = it.next().ok_or("--threads needs a number")?;
                args.threads = value
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or(format!("--threads {value}: not a positive number"))?;
            }
            "--figures" => {
                args.figures = Some(it.next().ok_or("--figures needs a folder")?.into());
                figures_given = true;
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if !args.quick && !figures_given {
        args.figures = Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs"));
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("ddim-digits: {message}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nddim-digits: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), DigitsError> {
    let start = Instant::now();
    let package = Path::new(env!("CARGO_MANIFEST_DIR"));
    let model = package.join("model");
    let unet = OnnxUnet::load(model.join("unet.onnx"))?;
    let scheduler = DdimScheduler::from_pretrained(&model)?;
    let digits = Digits::load(Digits::default_path())?;
    let settings = if args.quick {
        Settings::quick(args.threads)
    } else {
        Settings::full(args.threads)
    };

    println!(
        "# DDIM on the trained 8x8-digits model ({} run)\n",
        if args.quick { "quick" } else { "full" }
    );
    println!(
        "The diffusers UNet of `digits/model` (ONNX, run by tract) sampled with `ddim` from the \
         model's own `scheduler_config.json` (1000 training steps, linear betas, \
         `clip_sample: false`); {} training and {} held-out digits. Every number below comes \
         from fixed seeds; {} sampling threads.\n",
        digits.train().len(),
        digits.held_out().len(),
        settings.threads
    );

    let samples = demo::run(&unet, &digits, &scheduler, &settings, true)?;
    let report = demo::report(&samples, &digits)?;
    print!("{}", report.text);
    eprintln!("timing the network and the scheduler on one thread...");
    print!("{}", demo::speed(&unet, &scheduler, &samples)?);

    match &args.figures {
        Some(folder) => {
            for (name, sheet) in &report.figures {
                let path = folder.join(name);
                sheet.save(&path)?;
                eprintln!("wrote {}", path.display());
            }
            let names: Vec<&str> = report.figures.iter().map(|(n, _)| n.as_str()).collect();
            println!("Figures: {}.\n", names.join(", "));
        }
        None => println!("Figures: not written (--quick without --figures).\n"),
    }
    println!("Total time: {:.0} s.", start.elapsed().as_secs_f64());
    Ok(())
}
