#!/usr/bin/env python3
"""Produce `tests/fixtures/golden/torch_half.json`, the reference values of the `ddim` crate's
16-bit element types (feature `half`), compared by `tests/suite/half.rs`.

Two parts, both from PyTorch's CPU code and diffusers' own `DDIMScheduler`:

  * "cases" and "sequences": `torch.randn(shape, generator=g, dtype=torch.float16)` and
    `dtype=torch.bfloat16` for several seeds and sizes (below 16, not multiples of 16, and a
    (1, 4, 64, 64) latent), each followed by a float32 `torch.randn(5)` from the same generator,
    which pins where the draw left the generator ("after"); and consecutive calls on one
    generator mixing float16, bfloat16 and float32 draws of every size class. For 16 elements
    or more torch computes the 16-bit draws with its float32 block transform, so they depend on
    the CPU kernel exactly as float32 draws do (see `scripts/golden_torch_rng.py`): the script
    computes them in its own process and again under `ATEN_CPU_CAPABILITY=default` (and
    `=avx2` on an AVX-512 machine, asserting that it gives the same numbers), and stores them
    per kernel ("avx2", "scalar") after asserting that everything else is the same under every
    capability.

  * "steps": diffusers' `DDIMScheduler.step` run in float16 and in bfloat16 (torch rounds the
    result of every tensor operation to the 16-bit type), and the same step in float64 on the
    same (exactly widened) inputs, the "exact" step: same float32 schedule scalars, no rounding
    to speak of. The crate computes 16-bit steps in float32 and rounds each output once; the
    test measures both against the exact step. The script prints the reference's own error
    and stores it per case ("reference_error": the largest absolute difference and the largest
    difference in units in the last place of the 16-bit type at the exact value).

Produced with:
    diffusers 0.42.1
    torch     2.15.0 (build string "2.15.0+cu132", used on the CPU only; capability AVX512)
    numpy     2.4.6
    Python    3.11.7

How to run (from the repository root):
    python -m venv .venv && . .venv/bin/activate
    pip install diffusers==0.42.1 torch numpy
    python scripts/golden_torch_half.py

Running it twice gives a byte-identical file. The encoding is that of
`scripts/generate_golden.py` (whose helpers are imported), with two more tensor dtypes: "f16"
and "bf16", the hex of the 2-byte little-endian values. The 4096-element and (1, 4, 64, 64)
draws are stored as digests {"dtype", "shape", "fnv1a64", "head", "tail"}: the 64-bit FNV-1a hash
of the little-endian bytes (lowercase hex) and the first and last 16 elements.
"""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generate_golden as gg  # noqa: E402  (only helpers; it does nothing on import)

from diffusers import DDIMScheduler  # noqa: E402

FILENAME = "torch_half.json"
GENERATOR_NAME = "scripts/golden_torch_half.py"

DTYPES = {"f16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32,
          "f64": torch.float64}
HALF = ("f16", "bf16")
SEEDS = [0, 42, 2**32 + 7]
SIZES = [(1,), (7,), (15,), (16,), (17,), (31,), (48,), (100,), (1000,), (4096,), (1, 4, 64, 64)]
DIGESTED = {(4096,), (1, 4, 64, 64)}

KERNEL_OF_CAPABILITY = {"AVX2": "avx2", "AVX512": "avx2", "DEFAULT": "scalar"}

# Consecutive calls on one generator, each a shape and a dtype.
SEQUENCES = {
    "mixed_seed7": (7, [
        ((5,), "f16"), ((40,), "bf16"), ((3,), "f32"), ((17,), "f16"), ((1,), "bf16"),
        ((16,), "f32"), ((7,), "f16"), ((2, 3), "bf16"), ((100,), "f16"), ((33,), "f32"),
        ((1,), "f16"), ((64,), "bf16"), ((15,), "f16"), ((0,), "f16"),
    ]),
    "half_then_float_seed123": (123, [
        ((16,), "f16"), ((16,), "bf16"), ((16,), "f32"), ((16,), "f16"), ((9,), "f32"),
        ((1, 4, 8, 8), "bf16"), ((1, 4, 8, 8), "f32"), ((1, 4, 8, 8), "f16"),
    ]),
}

SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
      "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}
STEP_SHAPE = (1, 4, 8, 8)
STEP_SEED = 1616
STEPS = 50
# name, config, eta, use_clipped_model_output
STEP_CASES = [
    ("sd_epsilon", SD, 0.0, False),
    ("sd_v_prediction", dict(SD, prediction_type="v_prediction"), 0.0, False),
    ("sample_clip", {"prediction_type": "sample", "clip_sample": True}, 0.0, False),
    ("default_clip_ucmo", {"clip_sample": True, "clip_sample_range": 1.5}, 0.0, True),
    ("thresholding", {"thresholding": True, "dynamic_thresholding_ratio": 0.9,
                      "sample_max_value": 1.8, "clip_sample": False}, 0.0, False),
    ("sd_eta1_given_noise", SD, 1.0, False),
]

torch.set_num_threads(1)


# --------------------------------------------------------------------------
# encoding


def tensor_json(x):
    """`gg.tensor_json`, plus "f16" and "bf16": the hex of the 2-byte little-endian values."""
    if isinstance(x, torch.Tensor) and x.dtype in (torch.float16, torch.bfloat16):
        tag = "f16" if x.dtype == torch.float16 else "bf16"
        bits = x.detach().cpu().contiguous().view(torch.int16).numpy().astype("<i2")
        return {"dtype": tag, "shape": [int(d) for d in x.shape], "hex": bits.tobytes().hex()}
    return gg.tensor_json(x)


def width(tag):
    return {"f16": 2, "bf16": 2, "f32": 4, "f64": 8}[tag]


def fnv1a64(data):
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def digest(t):
    """The digest form of an encoded tensor."""
    data = bytes.fromhex(t["hex"])
    w = width(t["dtype"])
    head, tail = data[:16 * w], data[-16 * w:]
    return {"dtype": t["dtype"], "shape": t["shape"], "fnv1a64": fnv1a64(data),
            "head": {"dtype": t["dtype"], "shape": [16], "hex": head.hex()},
            "tail": {"dtype": t["dtype"], "shape": [16], "hex": tail.hex()}}


def numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def kernel_dependent(tag, shape):
    """Whether torch's CPU kernel decides the draw: float32-computed blocks of 16 or more."""
    return tag in ("f32", "f16", "bf16") and numel(shape) >= 16


# --------------------------------------------------------------------------
# draws (run under each CPU capability)


def case_name(seed, shape, tag):
    return f"seed{seed}_{tag}_{'x'.join(str(d) for d in shape)}"


def draws():
    """Every `randn` of "cases" and "sequences", under this process's capability."""
    cases = []
    for seed in SEEDS:
        for shape in SIZES:
            for tag in HALF:
                g = torch.Generator().manual_seed(seed)
                x = torch.randn(shape, generator=g, dtype=DTYPES[tag])
                after = torch.randn(5, generator=g, dtype=torch.float32)
                cases.append({"name": case_name(seed, shape, tag), "seed": seed,
                              "shape": list(shape), "dtype": tag, "x": tensor_json(x),
                              "after": tensor_json(after)})
    sequences = []
    for name, (seed, calls) in SEQUENCES.items():
        g = torch.Generator().manual_seed(seed)
        outputs = [tensor_json(torch.randn(shape, generator=g, dtype=DTYPES[tag]))
                   for shape, tag in calls]
        after = tensor_json(torch.randn(5, generator=g, dtype=torch.float32))
        sequences.append({"name": name, "outputs": outputs, "after": after})
    return {"capability": torch.backends.cpu.get_cpu_capability(), "cases": cases,
            "sequences": sequences}


def draws_under(capability):
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
    out = subprocess.run([sys.executable, __file__, "--draws"], env=env, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout)


def stored(t, shape):
    return digest(t) if tuple(shape) in DIGESTED else t


def gen_draws(by_kernel, native_kernel):
    """Merges the per-kernel draws, asserting that kernel-independent values agree."""
    kernels = list(by_kernel)
    cases = []
    for i, case in enumerate(by_kernel[native_kernel]["cases"]):
        out = {k: case[k] for k in ("name", "seed", "shape", "dtype")}
        values = {k: by_kernel[k]["cases"][i]["x"] for k in kernels}
        afters = {k: by_kernel[k]["cases"][i]["after"] for k in kernels}
        # Where the draw leaves the generator does not depend on the kernel.
        assert all(a == afters[native_kernel] for a in afters.values()), case["name"]
        if kernel_dependent(case["dtype"], case["shape"]):
            out["expected_by_kernel"] = {k: stored(v, case["shape"]) for k, v in values.items()}
        else:
            assert all(v == values[native_kernel] for v in values.values()), case["name"]
            out["expected"] = stored(values[native_kernel], case["shape"])
        out["after"] = afters[native_kernel]
        cases.append(out)

    sequences = []
    for i, (name, (seed, calls)) in enumerate(SEQUENCES.items()):
        encoded = [{"shape": list(shape), "dtype": tag} for shape, tag in calls]
        outputs = {k: by_kernel[k]["sequences"][i]["outputs"] for k in kernels}
        afters = {k: by_kernel[k]["sequences"][i]["after"] for k in kernels}
        assert all(a == afters[native_kernel] for a in afters.values()), name
        for j, call in enumerate(encoded):
            if not kernel_dependent(call["dtype"], call["shape"]):
                assert all(o[j] == outputs[native_kernel][j] for o in outputs.values()), (name, j)
        sequences.append({"name": name, "seed": seed, "calls": encoded,
                          "expected_by_kernel": outputs, "after": afters[native_kernel]})
    return cases, sequences


# --------------------------------------------------------------------------
# steps


def ulp(exact, tag):
    """The unit in the last place of the 16-bit type at each exact (float64) value."""
    digits, min_exp = (11, -14) if tag == "f16" else (8, -126)
    e = np.floor(np.log2(np.maximum(np.abs(exact), np.finfo(np.float64).tiny)))
    return np.exp2(np.maximum(e, min_exp) - (digits - 1))


def error(values, exact, tag):
    """(largest absolute difference, largest difference in ulps) of a 16-bit result."""
    v = values.double().numpy()
    x = exact.numpy()
    diff = np.abs(v - x)
    return float(diff.max()), float((diff / ulp(x, tag)).max())


def gen_steps():
    g = torch.Generator().manual_seed(STEP_SEED)
    base = {
        "model_output": torch.randn(STEP_SHAPE, generator=g, dtype=torch.float64) * 1.2,
        "sample": torch.randn(STEP_SHAPE, generator=g, dtype=torch.float64) * 1.1,
        "noise": torch.randn(STEP_SHAPE, generator=g, dtype=torch.float64),
    }
    inputs = {}
    for tag in HALF:
        for key, value in base.items():
            inputs[f"{key}_{tag}"] = value.to(DTYPES[tag])
    steps = []
    for name, config, eta, ucmo in STEP_CASES:
        sch = gg.build(config)
        sch.set_timesteps(STEPS)
        for t in gg.three_timesteps(sch.timesteps):
            for tag in HALF:
                m, s, z = (inputs[f"{k}_{tag}"] for k in ("model_output", "sample", "noise"))
                kwargs = {"eta": eta, "use_clipped_model_output": ucmo}
                half = sch.step(m, t, s, variance_noise=z if eta > 0 else None, **kwargs)
                exact = sch.step(m.double(), t, s.double(),
                                 variance_noise=z.double() if eta > 0 else None, **kwargs)
                assert half.prev_sample.dtype == DTYPES[tag]
                assert exact.prev_sample.dtype == torch.float64
                ref_error = {
                    "prev_sample": error(half.prev_sample, exact.prev_sample, tag),
                    "pred_original_sample": error(half.pred_original_sample,
                                                  exact.pred_original_sample, tag),
                }
                print(f"{name} t={t} {tag}: reference max |diff| "
                      f"prev {ref_error['prev_sample'][0]:.3g} "
                      f"({ref_error['prev_sample'][1]:.2f} ulp), "
                      f"x0 {ref_error['pred_original_sample'][0]:.3g} "
                      f"({ref_error['pred_original_sample'][1]:.2f} ulp)")
                steps.append({
                    "name": f"{name}_t{t}_{tag}", "config": config, "num_inference_steps": STEPS,
                    "timestep": t, "eta": float(eta), "use_clipped_model_output": ucmo,
                    "dtype": tag, "model_output": f"model_output_{tag}",
                    "sample": f"sample_{tag}", "noise": f"noise_{tag}" if eta > 0 else None,
                    "reference": {"prev_sample": tensor_json(half.prev_sample),
                                  "pred_original_sample": tensor_json(half.pred_original_sample)},
                    "exact": {"prev_sample": tensor_json(exact.prev_sample),
                              "pred_original_sample": tensor_json(exact.pred_original_sample)},
                    "reference_error": {k: {"max_abs": a, "max_ulp": u}
                                        for k, (a, u) in ref_error.items()},
                })
    return {k: tensor_json(v) for k, v in inputs.items()}, steps


# --------------------------------------------------------------------------


def main():
    gg.check_versions()
    gg.GENERATOR_NAME = GENERATOR_NAME  # write_fixture records it as the file's generator
    native = draws()
    capability = native["capability"]
    if capability not in KERNEL_OF_CAPABILITY:
        sys.exit(f"torch's CPU capability {capability} has a float32 randn this crate does not follow")
    native_kernel = KERNEL_OF_CAPABILITY[capability]
    by_kernel = {native_kernel: native}
    if native_kernel == "avx2":
        if capability != "AVX2":
            avx2 = draws_under("avx2")
            assert avx2["capability"] == "AVX2"
            assert avx2["cases"] == native["cases"] and avx2["sequences"] == native["sequences"], \
                f"{capability} draws differently from AVX2"
        default = draws_under("default")
        assert default["capability"] == "DEFAULT"
        by_kernel["scalar"] = default

    cases, sequences = gen_draws(by_kernel, native_kernel)
    inputs, steps = gen_steps()
    names = [c["name"] for c in sequences + steps]
    assert len(names) == len(set(names)), "duplicate names"
    gg.write_fixture(FILENAME, {
        "native_capability": capability,
        "native_kernel": native_kernel,
        "kernels": list(by_kernel),
        "inputs": inputs,
        "cases": cases,
        "sequences": sequences,
        "steps": steps,
    })
    size = (gg.OUT_DIR / FILENAME).stat().st_size
    print(f"{FILENAME}: {len(cases)} randn cases, {len(sequences)} sequences, {len(steps)} steps, "
          f"kernels {list(by_kernel)} (native {capability}), {size} bytes")


if __name__ == "__main__":
    if sys.argv[1:] == ["--draws"]:
        json.dump(draws(), sys.stdout)
    else:
        main()
