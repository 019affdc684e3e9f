//! Golden tests of what diffusers needs two more classes for: inversion against
//! `DDIMInverseScheduler` and per-item timesteps against `DDIMParallelScheduler`
//! (diffusers 0.42.1; fixtures written by `scripts/generate_golden.py`).

use crate::common::{assert_close, case_scheduler, cases, golden, inputs, name, tensor};
use ddim::ndarray::ArrayD;
use ddim::{DdimScheduler, NoiseSource, StepOptions};
use serde_json::Value;

/// Per-element tolerance of one float32 step, as for the forward step.
const STEP: (f64, f64) = (1e-5, 1e-5);
/// After a 50-step loop.
const LOOP: (f64, f64) = (1e-4, 1e-4);

fn widen(a: &ArrayD<f32>) -> Vec<f64> {
    a.iter().map(|&v| f64::from(v)).collect()
}

fn with_steps(case: &Value) -> DdimScheduler {
    let mut s = case_scheduler(case);
    s.set_timesteps(case["num_inference_steps"].as_u64().expect("n") as usize)
        .unwrap_or_else(|e| panic!("{}: {e}", name(case)));
    s
}

#[test]
fn inverse_steps_match_ddim_inverse_scheduler() {
    let fixture = golden("inverse");
    let inputs = inputs(&fixture);
    for case in cases(&fixture) {
        let label = name(case);
        let s = with_steps(case);
        let t = case["timestep"].as_u64().expect("timestep") as usize;
        let m = inputs[case["model_output"].as_str().expect("name")].f32();
        let x = inputs[case["sample"].as_str().expect("name")].f32();
        let out = s
            .inverse_step(m, t, x)
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        let (abs, rel) = STEP;
        let reference = tensor(&case["prev_sample"]).values();
        assert_close(
            &format!("{label}: prev_sample"),
            &widen(&out.prev_sample),
            &reference,
            abs,
            rel,
        );
        let reference = tensor(&case["pred_original_sample"]).values();
        assert_close(
            &format!("{label}: x0"),
            &widen(&out.pred_original_sample),
            &reference,
            abs,
            rel,
        );
    }
    assert!(cases(&fixture).len() > 100);
}

/// The ascending schedule of the inverse scheduler is the forward one reversed (without the
/// spurious -1 of trailing spacing), and whole inversion loops agree.
#[test]
fn inversion_loops_match_ddim_inverse_scheduler() {
    let fixture = golden("inverse");
    let inputs = inputs(&fixture);
    let loops = fixture["loops"].as_array().expect("loops");
    for case in loops {
        let label = name(case);
        let s = with_steps(case);
        let reference: Vec<usize> =
            serde_json::from_value(case["timesteps"].clone()).expect("ints");
        let ours: Vec<usize> = s.timesteps().iter().rev().copied().collect();
        assert_eq!(ours, reference, "{label}: ascending timesteps");
        let base = inputs["base"].f32();
        let mut x = inputs["x_init"].f32().clone();
        let num_train = s.config().num_train_timesteps;
        for &t in &ours {
            // The stand-in model of the forward loop fixtures, op for op.
            let k = (0.6 + 0.3 * t as f64 / num_train as f64) as f32;
            let eps = x.mapv(|v| v * k) - base.mapv(|v| 0.05f32 * v);
            x = s
                .inverse_step(&eps, t, &x)
                .unwrap_or_else(|e| panic!("{label}: {e}"))
                .prev_sample;
        }
        let (abs, rel) = LOOP;
        assert_close(
            label,
            &widen(&x),
            &tensor(&case["final"]).values(),
            abs,
            rel,
        );
    }
    assert_eq!(loops.len(), 3);
}

/// `step_batch` against `batch_step_no_noise`, item by item. Where an item steps past the last
/// timestep with `set_alpha_to_one = false`, the reference uses `alpha_bar_prev = 1` anyway;
/// this crate follows the config, so that item matches a plain `step` instead.
#[test]
fn batch_steps_match_ddim_parallel_scheduler() {
    let fixture = golden("parallel");
    let inputs = inputs(&fixture);
    let mut deviations = 0;
    for case in cases(&fixture) {
        let label = name(case);
        let s = with_steps(case);
        let timesteps: Vec<usize> =
            serde_json::from_value(case["timesteps"].clone()).expect("ints");
        let m = inputs[case["model_output"].as_str().expect("name")].f32();
        let x = inputs[case["sample"].as_str().expect("name")].f32();
        let use_clipped_model_output = case["use_clipped_model_output"] == true;
        // Given noise at eta = 0 is not read (zeros, as the reference has no noise here).
        fn options(noise: NoiseSource<'_, f32>, clipped: bool) -> StepOptions<'_, f32> {
            StepOptions {
                eta: 0.0,
                noise,
                use_clipped_model_output: clipped,
            }
        }
        let zeros = ArrayD::<f32>::zeros(x.raw_dim());
        let out = s
            .step_batch(
                m,
                &timesteps,
                x,
                options(NoiseSource::given(&zeros), use_clipped_model_output),
            )
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        if !use_clipped_model_output {
            assert_eq!(
                s.step_batch(m, &timesteps, x, StepOptions::default())
                    .expect("batch"),
                out,
                "{label}"
            );
        }
        let reference = tensor(&case["prev_sample"]);
        let reference = reference.f32();
        let (abs, rel) = STEP;
        for (i, &t) in timesteps.iter().enumerate() {
            let ours = widen(
                &out.prev_sample
                    .index_axis(ddim::ndarray::Axis(0), i)
                    .to_owned(),
            );
            let theirs = widen(&reference.index_axis(ddim::ndarray::Axis(0), i).to_owned());
            let past_the_end = s.prev_timestep(t).expect("valid").is_none();
            if past_the_end && !s.config().set_alpha_to_one {
                // The documented difference: the item follows the config, like `step` does.
                let item = ddim::ndarray::Slice::from(i..=i);
                let item_zeros = zeros.slice_axis(ddim::ndarray::Axis(0), item);
                let alone = s
                    .step_with(
                        &m.slice_axis(ddim::ndarray::Axis(0), item),
                        t,
                        &x.slice_axis(ddim::ndarray::Axis(0), item),
                        options(NoiseSource::given(&item_zeros), use_clipped_model_output),
                    )
                    .expect("step");
                assert_eq!(
                    widen(&alone.prev_sample),
                    ours,
                    "{label}: item {i} like step"
                );
                assert!(
                    ours.iter().zip(&theirs).any(|(a, b)| a != b),
                    "{label}: differs"
                );
                deviations += 1;
                continue;
            }
            assert_close(
                &format!("{label}: item {i} (t = {t})"),
                &ours,
                &theirs,
                abs,
                rel,
            );
        }
    }
    assert!(deviations > 0);
}
