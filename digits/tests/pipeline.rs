//! `ddim` + the ONNX network reproduce diffusers' own `DDIMPipeline` on the trained model.
//!
//! `tests/fixtures/pipeline.json` holds the outputs of
//! `DDIMPipeline.from_pretrained("digits/model")(batch_size=4,
//! generator=torch.Generator().manual_seed(seed), eta=eta, num_inference_steps=n,
//! output_type="np")` for seeds 0, 1, 42 and 1234, n = 10 and 50, eta = 0 and 1
//! (`scripts/golden_digits.py`, diffusers 0.42.1, torch 2.15.0 on an x86-64 CPU with AVX2;
//! regenerate from the repository root with `python scripts/golden_digits.py`).
//!
//! Here the same calls are made with `DdimScheduler::from_pretrained`, `TorchGenerator` and
//! `OnnxUnet` (`Sampler::generate`). The initial noise must be identical bit for bit; the
//! latents and images may differ by the network's float rounding (tract and torch sum in
//! different orders), which must stay below 1e-4. Run with
//! `cargo test -p ddim-digits --release -- --nocapture` to see the measured differences.

mod common;

use common::{fixture, max_abs_diff, mean_abs_diff, package_dir, tensor4};
use ddim::{DdimScheduler, TorchCpuKernel, TorchGenerator};
use ddim_digits::{Digits, OnnxUnet, Sampler};
use ndarray::{s, Array4};

const TOLERANCE: f32 = 1e-4;

fn load_unet() -> OnnxUnet {
    OnnxUnet::load(package_dir().join("model").join("unet.onnx")).unwrap_or_else(|e| panic!("{e}"))
}

fn load_scheduler() -> DdimScheduler {
    DdimScheduler::from_pretrained(package_dir().join("model")).unwrap_or_else(|e| panic!("{e}"))
}

/// Pixels whose 8-bit value (`round(255 * v)`, as diffusers' `numpy_to_pil` converts) differs.
fn differing_8bit_pixels(a: &Array4<f32>, b: &Array4<f32>) -> usize {
    let byte = |v: f32| (v * 255.0).round() as u8;
    a.iter()
        .zip(b)
        .filter(|(x, y)| byte(**x) != byte(**y))
        .count()
}

#[test]
fn every_pipeline_case_is_reproduced() {
    let unet = load_unet();
    let golden = fixture("pipeline.json");
    let cases = golden["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 16);
    let (mut worst_latents, mut worst_images) = (0.0f32, 0.0f32);
    let (mut pixels, mut differing) = (0usize, 0usize);
    println!(
        "{:<20} {:>13} {:>13} {:>13} {:>13} {:>9}",
        "case", "latents max", "latents mean", "images max", "images mean", "8-bit"
    );
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let seed = case["seed"].as_u64().expect("seed");
        let batch = case["batch"].as_u64().expect("batch") as usize;
        let steps = case["num_inference_steps"].as_u64().expect("steps") as usize;
        let eta = case["eta"].as_f64().expect("eta");
        let timesteps: Vec<usize> = case["timesteps"]
            .as_array()
            .expect("timesteps")
            .iter()
            .map(|t| t.as_u64().expect("timestep") as usize)
            .collect();

        let mut scheduler = load_scheduler();
        scheduler.set_timesteps(steps).expect("set_timesteps");
        assert_eq!(scheduler.timesteps(), timesteps, "{name}: timesteps");

        // The reference ran on x86-64 with AVX2: follow that float32 kernel on any machine.
        let mut generator = TorchGenerator::manual_seed(seed).with_kernel(TorchCpuKernel::Avx2);
        let out = Sampler::new(&unet)
            .generate(&scheduler, &mut generator, batch, eta)
            .unwrap_or_else(|e| panic!("{name}: {e}"));

        assert_eq!(
            out.initial_noise,
            tensor4(&case["initial_noise"]),
            "{name}: the initial noise is torch's bit for bit"
        );
        let (want_latents, want_images) = (tensor4(&case["latents"]), tensor4(&case["image"]));
        let latents_max = max_abs_diff(out.latents.view(), want_latents.view());
        let images_max = max_abs_diff(out.images.view(), want_images.view());
        let bytes = differing_8bit_pixels(&out.images, &want_images);
        println!(
            "{name:<20} {latents_max:>13.3e} {:>13.3e} {images_max:>13.3e} {:>13.3e} {bytes:>5}/{}",
            mean_abs_diff(out.latents.view(), want_latents.view()),
            mean_abs_diff(out.images.view(), want_images.view()),
            want_images.len()
        );
        assert!(
            latents_max < TOLERANCE && images_max < TOLERANCE,
            "{name}: latents differ by {latents_max}, images by {images_max}"
        );
        worst_latents = worst_latents.max(latents_max);
        worst_images = worst_images.max(images_max);
        pixels += want_images.len();
        differing += bytes;
    }
    println!(
        "all {} cases: max |latents - diffusers| = {worst_latents:.3e}, max |images - diffusers| \
         = {worst_images:.3e}; {differing} of {pixels} 8-bit pixels differ",
        cases.len()
    );
}

#[test]
fn eta_zero_generation_is_deterministic_and_eta_one_follows_the_generator() {
    let unet = load_unet();
    let mut scheduler = load_scheduler();
    scheduler.set_timesteps(10).expect("set_timesteps");
    let run = |seed: u64, eta: f64| {
        let mut generator = TorchGenerator::manual_seed(seed).with_kernel(TorchCpuKernel::Avx2);
        Sampler::new(&unet)
            .generate(&scheduler, &mut generator, 2, eta)
            .unwrap_or_else(|e| panic!("{e}"))
    };
    assert_eq!(run(7, 0.0), run(7, 0.0));
    assert_eq!(run(7, 1.0), run(7, 1.0));
    assert_ne!(run(7, 1.0).images, run(7, 0.0).images);
}

#[test]
fn ddim_encoding_then_decoding_reconstructs_held_out_digits_better_with_more_steps() {
    // The paper's section 5.4 on four held-out digits: the error of encode + decode shrinks as
    // the number of steps grows (the demonstration measures it on more digits and steps).
    let unet = load_unet();
    let digits = Digits::load(Digits::default_path()).unwrap_or_else(|e| panic!("{e}"));
    let original = digits.model_space(&digits.held_out()[..4]);
    let mut errors = Vec::new();
    for steps in [10, 50] {
        let mut scheduler = load_scheduler();
        scheduler.set_timesteps(steps).expect("set_timesteps");
        let mut sampler = Sampler::new(&unet);
        let latents = sampler
            .encode(&scheduler, original.clone())
            .unwrap_or_else(|e| panic!("{e}"));
        let decoded = sampler
            .decode(&scheduler, latents)
            .unwrap_or_else(|e| panic!("{e}"));
        let rmse = ddim_digits::rmse(decoded.view().into_dyn(), original.view().into_dyn())
            .unwrap_or_else(|e| panic!("{e}"));
        println!("{steps} steps: reconstruction RMSE {rmse:.4} (in [-1, 1])");
        assert_eq!(sampler.timings().network_calls, 2 * steps as u64);
        errors.push(rmse);
    }
    assert!(errors[1] < errors[0] && errors[1] < 0.1, "{errors:?}");
    let _ = original.slice(s![0, 0, .., ..]);
}
