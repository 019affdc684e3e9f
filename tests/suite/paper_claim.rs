//! The DDIM paper's headline claim, asserted on the experiment of `examples/paper_table.rs`
//! (a Gaussian mixture with its exact noise prediction; see
//! `examples/shared/paper_experiment.rs`), with fewer points so that it runs in seconds.
//!
//! Every random draw is seeded, so the distances, and therefore the test, are deterministic.

use crate::paper_experiment::{
    directions, rng, sample_ddim, scheduler, sliced_wasserstein, Mixture,
};

const POINTS: usize = 2000;

#[test]
fn deterministic_ddim_needs_far_fewer_steps_than_ddpm_like_sampling() {
    let mixture = Mixture::default();
    let dirs = directions(64, &mut rng(1));
    let reference = mixture.sample(POINTS, &mut rng(2));
    let floor = sliced_wasserstein(&mixture.sample(POINTS, &mut rng(3)), &reference, &dirs);
    let mut scheduler = scheduler().expect("valid config");
    let mut distance = |steps: usize, eta: f64, seed: u64| {
        let samples = sample_ddim(&mut scheduler, &mixture, steps, eta, POINTS, &mut rng(seed))
            .expect("sampling");
        sliced_wasserstein(&samples, &reference, &dirs)
    };

    // eta = 0 beats eta = 1 at few steps.
    let mut deterministic = Vec::new();
    for (i, steps) in [10, 20, 50].into_iter().enumerate() {
        let seed = 10 + i as u64;
        let (ddim, ddpm) = (distance(steps, 0.0, seed), distance(steps, 1.0, seed));
        assert!(
            ddim < ddpm,
            "S = {steps}: eta 0 gives {ddim:.4}, eta 1 gives {ddpm:.4}"
        );
        deterministic.push(ddim);
    }

    // 50 deterministic steps come within 1.25x of 1000 stochastic ones (or of the floor, when
    // those are below it: a distance under the floor is sampling noise, not quality).
    let ddpm_1000 = distance(1000, 1.0, 20);
    let ddim_50 = deterministic[2];
    let bound = 1.25 * ddpm_1000.max(floor);
    assert!(
        ddim_50 <= bound,
        "eta 0 at S = 50: {ddim_50:.4}, eta 1 at S = 1000: {ddpm_1000:.4}, floor {floor:.4}"
    );

    // With 1000 steps deterministic DDIM is as good as the measure can tell.
    let ddim_1000 = distance(1000, 0.0, 21);
    assert!(
        ddim_1000 <= 1.5 * floor,
        "eta 0 at S = 1000: {ddim_1000:.4}, floor {floor:.4}"
    );

    eprintln!(
        "floor {floor:.4}; eta 0 at S = 10, 20, 50: {deterministic:.4?}; eta 0 at 1000: \
         {ddim_1000:.4}; eta 1 at 1000: {ddpm_1000:.4}"
    );
    // And quality improves with steps, as the table shows.
    assert!(
        deterministic.windows(2).all(|w| w[1] < w[0]),
        "{deterministic:?}"
    );
}
