#!/usr/bin/env python3
"""Time the reference on this machine, for comparison with the crate's criterion benchmarks:
writes JSON lines (one per measurement) to standard output.

What it times, each for the four shapes of the benchmarks (1x4x64x64, 1x4x128x128,
8x4x128x128, 16x3x256x256):

  * "randn": `torch.randn(shape, generator=g, dtype=dtype)` with a seeded CPU
    `torch.Generator`, float32 and float64 (compare with `cargo bench -p ddim-bench --bench
    randn`);
  * "step_eta1": diffusers' `DDIMScheduler.step(model_output, t, sample, eta=1.0,
    generator=g)`, float32, which draws its noise with `randn_tensor` from the generator
    (compare with the `eta1_torch` case of `--bench step`);
  * "step_epsilon": the deterministic step, `DDIMScheduler.step(model_output, t, sample)`,
    float32, for scale (the `epsilon` case of `--bench step`).

The scheduler is configured as in `bench/benches/step.rs` (Stable Diffusion's scaled_linear
betas 0.00085 to 0.012, clip_sample false, set_alpha_to_one false, steps_offset 1), with 50
inference steps, stepping from the 11th timestep.

The script calls `torch.set_num_threads(1)`: the crate's step runs on one thread (without its
`parallel` feature), and so does every figure here. Each measurement is the time per call of
the best of several `timeit` rounds (each round long enough to average out timer resolution);
"mean_us" is the mean over all rounds. Numbers depend on the machine and its load.

Produced with:
    diffusers 0.42.1
    torch     2.15.0 (build string "2.15.0+cu132", used on the CPU only; capability AVX512)
    numpy     2.4.6
    Python    3.11.7

How to run (from the repository root):
    python -m venv .venv && . .venv/bin/activate
    pip install diffusers==0.42.1 torch numpy
    python scripts/time_reference.py > bench/reference_timings.jsonl
"""

import json
import platform
import timeit

import diffusers
import torch
from diffusers import DDIMScheduler

SHAPES = [(1, 4, 64, 64), (1, 4, 128, 128), (8, 4, 128, 128), (16, 3, 256, 256)]
DTYPES = {"f32": torch.float32, "f64": torch.float64}
# Rounds per measurement, and the least time one round should take.
ROUNDS = 7
ROUND_SECONDS = 0.2


def label(shape):
    return "x".join(str(n) for n in shape)


def measure(fn):
    """Seconds per call: (best round, mean of the rounds), each round of `number` calls."""
    timer = timeit.Timer(fn)
    number, elapsed = timer.autorange()
    number = max(1, int(number * ROUND_SECONDS / max(elapsed, 1e-9)))
    rounds = [t / number for t in timer.repeat(repeat=ROUNDS, number=number)]
    return min(rounds), sum(rounds) / len(rounds), number


def emit(what, shape, dtype, fn):
    best, mean, number = measure(fn)
    print(json.dumps({
        "what": what,
        "shape": label(shape),
        "dtype": dtype,
        "best_us": round(best * 1e6, 2),
        "mean_us": round(mean * 1e6, 2),
        "calls_per_round": number,
        "rounds": ROUNDS,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "machine": platform.machine(),
    }), flush=True)


def scheduler():
    s = DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    s.set_timesteps(50)
    return s


def main():
    torch.set_num_threads(1)
    for shape in SHAPES:
        for name, dtype in DTYPES.items():
            g = torch.Generator().manual_seed(0)
            emit("randn", shape, name,
                 lambda: torch.randn(shape, generator=g, dtype=dtype))

    s = scheduler()
    t = s.timesteps[10]
    for shape in SHAPES:
        inputs = torch.Generator().manual_seed(1)
        model_output = torch.randn(shape, generator=inputs) * 1.5
        sample = torch.randn(shape, generator=inputs)
        g = torch.Generator().manual_seed(0)
        emit("step_eta1", shape, "f32",
             lambda: s.step(model_output, t, sample, eta=1.0, generator=g))
        emit("step_epsilon", shape, "f32",
             lambda: s.step(model_output, t, sample))


if __name__ == "__main__":
    main()
