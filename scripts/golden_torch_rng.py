#!/usr/bin/env python3
"""Produce `tests/fixtures/golden/torch_rng.json`, the reference values of the `ddim` crate's
`TorchGenerator` (compared by `tests/torch_rng.rs`).

The reference is PyTorch's CPU generator, `torch.Generator().manual_seed(seed)`, and what
diffusers draws from it:

  * `torch.randn(shape, generator=g, dtype=dtype)` for several seeds, sizes and both float
    types, each from a fresh generator ("cases");
  * several consecutive calls on one generator, mixing sizes below and above 16, float types
    and re-seeding, which pins how the state (and the normal torch keeps for its next small
    draw) carries over from call to call ("sequences");
  * full 20-step loops of diffusers' `DDIMScheduler` with `eta > 0`, driven as its pipelines
    drive it: initial latents from `randn_tensor(shape, generator=g, dtype=dtype)`, then
    `scheduler.step(model_output, t, latents, eta=eta, generator=g)` with a deterministic
    stand-in for the network; after the loop one more `torch.randn(5, dtype=float64)` from the
    generator shows where its state ended ("loops"). One loop runs again through diffusers'
    own `DDIMPipeline` (with the stand-in as its UNet), and the script asserts that the
    pipeline sees the same latents at every step, which pins the order of the draws.

Float32 `randn` of 16 or more elements depends on which of torch's CPU kernels runs (see
`TorchCpuKernel` in the crate): the vectorised one of the "AVX2" and "AVX512" capabilities, or
the C-library one of "DEFAULT". The script computes the draws in its own process and again in
child processes started with `ATEN_CPU_CAPABILITY=default` (and `=avx2` on an AVX-512 machine,
asserting that it gives the AVX-512 numbers), and stores float32 results per kernel ("avx2",
"scalar"), after asserting that everything else is the same under every capability. The loops
come from the script's own process; the fixture names its capability and kernel.

Produced with:
    diffusers 0.42.1
    torch     2.15.0 (build string "2.15.0+cu132", used on the CPU only; capability AVX512)
    numpy     2.4.6
    Python    3.11.7

How to run (from the repository root):
    python -m venv .venv && . .venv/bin/activate
    pip install diffusers==0.42.1 torch numpy
    python scripts/golden_torch_rng.py

Running it twice gives a byte-identical file. The encoding is that of
`scripts/generate_golden.py` (whose helpers are imported): tensors as {"dtype", "shape", "hex"}
with the hex of the little-endian bytes, the versions used under "versions". To keep the file
small, the (1, 4, 64, 64) draws are stored in full for one seed and type; the others as a
digest {"dtype", "shape", "fnv1a64", "head", "tail"}: the 64-bit FNV-1a hash of the
little-endian bytes (lowercase hex) and the first and last 16 elements.
"""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generate_golden as gg  # noqa: E402  (only helpers; it does nothing on import)

from diffusers import DDIMPipeline, DDIMScheduler, ModelMixin  # noqa: E402
from diffusers.configuration_utils import ConfigMixin, register_to_config  # noqa: E402
from diffusers.utils.torch_utils import randn_tensor  # noqa: E402

FILENAME = "torch_rng.json"
GENERATOR_NAME = "scripts/golden_torch_rng.py"

SEEDS = [0, 1, 42, 2**32 + 7, 0xDEADBEEFCAFEBABE]
SHAPES = [(1,), (5,), (15,), (16,), (17,), (1000,), (1, 4, 64, 64)]
DTYPES = {"f32": torch.float32, "f64": torch.float64}
# The (1, 4, 64, 64) draws stored in full (the others as digests).
FULL_LARGE = (42, "f32")
LARGE = (1, 4, 64, 64)

KERNEL_OF_CAPABILITY = {"AVX2": "avx2", "AVX512": "avx2", "DEFAULT": "scalar"}

# Consecutive calls on one generator: a shape and a type, or {"reseed": s} for g.manual_seed(s).
SEQUENCES = {
    "mixed_seed7": (7, [
        ((3,), "f64"), ((20,), "f32"), ((1,), "f32"), ((5,), "f64"), ((2, 3), "f32"),
        ((16,), "f64"), ((1, 4, 8, 8), "f32"), ((7,), "f32"), ((0,), "f32"), ((2, 0, 3), "f64"),
        ((33,), "f64"), ((1,), "f64"), ((15,), "f32"), ((31,), "f32"), ((1,), "f32"),
    ]),
    "reseed_seed2pow32p7": (2**32 + 7, [
        ((1,), "f32"), ((1,), "f32"), ((1,), "f32"), ({"reseed": 11}), ((1,), "f64"),
        ((17,), "f32"), ((15,), "f64"), ({"reseed": 11}), ((2,), "f64"), ((1,), "f32"),
        ((64,), "f32"),
    ]),
    "odd_small_seed42": (42, [((n,), "f32" if n % 2 else "f64") for n in range(1, 16)]),
}

SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
      "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}
STEPS = 20
BASE_SEED = 2024


# --------------------------------------------------------------------------
# draws (run under each CPU capability)


def draws():
    """Every `randn` of "cases" and "sequences", full tensors, under this process's capability."""
    cases = []
    for seed in SEEDS:
        for shape in SHAPES:
            for tag, dtype in DTYPES.items():
                g = torch.Generator().manual_seed(seed)
                x = torch.randn(shape, generator=g, dtype=dtype)
                cases.append({"name": case_name(seed, shape, tag), "seed": seed,
                              "shape": list(shape), "dtype": tag, "x": gg.tensor_json(x)})
    sequences = []
    for name, (seed, calls) in SEQUENCES.items():
        g = torch.Generator().manual_seed(seed)
        outputs = []
        for call in calls:
            if isinstance(call, dict):
                g.manual_seed(call["reseed"])
                outputs.append(None)
            else:
                shape, tag = call
                outputs.append(gg.tensor_json(torch.randn(shape, generator=g, dtype=DTYPES[tag])))
        sequences.append({"name": name, "outputs": outputs})
    return {"capability": torch.backends.cpu.get_cpu_capability(), "cases": cases,
            "sequences": sequences}


def case_name(seed, shape, tag):
    return f"seed{seed}_{tag}_{'x'.join(str(d) for d in shape)}"


def draws_under(capability):
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
    out = subprocess.run([sys.executable, __file__, "--draws"], env=env, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout)


def fnv1a64(data):
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def digest(t):
    """The digest form of an encoded tensor."""
    data = bytes.fromhex(t["hex"])
    width = 4 if t["dtype"] == "f32" else 8
    head, tail = data[:16 * width], data[-16 * width:]
    return {"dtype": t["dtype"], "shape": t["shape"], "fnv1a64": fnv1a64(data),
            "head": {"dtype": t["dtype"], "shape": [16], "hex": head.hex()},
            "tail": {"dtype": t["dtype"], "shape": [16], "hex": tail.hex()}}


def kernel_dependent(dtype, shape):
    n = 1
    for d in shape:
        n *= d
    return dtype == "f32" and n >= 16


def gen_draws(by_kernel, native_kernel):
    """Merges the per-kernel draws, asserting that kernel-independent ones agree."""
    kernels = list(by_kernel)
    cases = []
    for i, case in enumerate(by_kernel[native_kernel]["cases"]):
        out = {k: case[k] for k in ("name", "seed", "shape", "dtype")}
        values = {k: by_kernel[k]["cases"][i]["x"] for k in kernels}
        large = tuple(case["shape"]) == LARGE
        full = (case["seed"], case["dtype"]) == FULL_LARGE
        if kernel_dependent(case["dtype"], case["shape"]):
            out["expected_by_kernel"] = {
                k: v if not large or (full and k == native_kernel) else digest(v)
                for k, v in values.items()}
        else:
            assert all(v == values[native_kernel] for v in values.values()), case["name"]
            v = values[native_kernel]
            out["expected"] = digest(v) if large else v
        cases.append(out)

    sequences = []
    for i, (name, (seed, calls)) in enumerate(SEQUENCES.items()):
        encoded = []
        for call in calls:
            if isinstance(call, dict):
                encoded.append(call)
            else:
                shape, tag = call
                encoded.append({"shape": list(shape), "dtype": tag})
        outputs = {k: by_kernel[k]["sequences"][i]["outputs"] for k in kernels}
        for j, call in enumerate(encoded):
            if "dtype" in call and not kernel_dependent(call["dtype"], call["shape"]):
                assert all(o[j] == outputs[native_kernel][j] for o in outputs.values()), (name, j)
        sequences.append({"name": name, "seed": seed, "calls": encoded,
                          "expected_by_kernel": outputs})
    return cases, sequences


# --------------------------------------------------------------------------
# loops


def stand_in_model(sample, t, T, base):
    """The loop fixtures' network, as in `generate_golden.py`: `sample * k - 0.05 * base`."""
    k = torch.tensor(0.6 + 0.3 * t / T, dtype=torch.float32)
    c = torch.tensor(0.05, dtype=torch.float32)
    return sample * k - c * base


def generator_of(seeds):
    """A generator, or diffusers' list of per-item generators."""
    if isinstance(seeds, list):
        return [torch.Generator().manual_seed(s) for s in seeds]
    return torch.Generator().manual_seed(seeds)


def run_loop(config, seeds, shape, dtype, eta, ucmo, base, record=None):
    """The loop of diffusers' DDIMPipeline with the stand-in model. Returns the initial latents,
    the final sample and pred_original_sample, and the generator(s)."""
    sch = DDIMScheduler.from_config(copy.deepcopy(config))
    sch.set_timesteps(STEPS)
    T = sch.config.num_train_timesteps
    g = generator_of(seeds)
    latents = randn_tensor(shape, generator=g, device=torch.device("cpu"), dtype=dtype)
    initial = latents.clone()
    latents = latents * sch.init_noise_sigma
    pred = None
    for t in sch.timesteps:
        if record is not None:
            record.append(latents.clone())
        model_output = stand_in_model(sch.scale_model_input(latents, t), int(t), T, base)
        out = sch.step(model_output, t, latents, eta=eta, use_clipped_model_output=ucmo,
                       generator=g)
        latents, pred = out.prev_sample, out.pred_original_sample
    return sch, initial, latents, pred, g


class StandInUNet(ModelMixin, ConfigMixin):
    """`stand_in_model` as a UNet for `DDIMPipeline`, recording the samples it is given."""

    @register_to_config
    def __init__(self, sample_size=8, in_channels=4, num_train_timesteps=1000):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the model a dtype and device
        self.base = None
        self.seen = []

    def forward(self, sample, t):
        self.seen.append(sample.clone())
        return SimpleNamespace(sample=stand_in_model(sample, int(t), self.config.num_train_timesteps,
                                                     self.base))


def check_against_pipeline(config, seed, base, eta):
    """Runs `DDIMPipeline` and asserts it sees, step by step, the latents of `run_loop`."""
    record = []
    _, _, final, _, _ = run_loop(config, seed, (1, 4, 8, 8), torch.float32, eta, False, base,
                                 record)
    unet = StandInUNet(sample_size=8, in_channels=4)
    unet.base = base
    pipe = DDIMPipeline(unet=unet, scheduler=DDIMScheduler.from_config(copy.deepcopy(config)))
    pipe.set_progress_bar_config(disable=True)
    (image,) = pipe(batch_size=1, generator=torch.Generator().manual_seed(seed), eta=eta,
                    num_inference_steps=STEPS, output_type="pt", return_dict=False)
    assert len(unet.seen) == len(record) == STEPS
    for i, (a, b) in enumerate(zip(unet.seen, record)):
        assert torch.equal(a, b), f"DDIMPipeline differs from the loop at step {i}"
    assert torch.equal(image, (final / 2 + 0.5).clamp(0, 1)), "DDIMPipeline's final image"


def gen_loops(native_kernel):
    inputs, loops = {}, []
    g = torch.Generator().manual_seed(BASE_SEED)
    bases = {}

    def base_for(shape, tag):
        name = f"base_{tag}_{'x'.join(str(d) for d in shape)}"
        if name not in bases:
            bases[name] = torch.randn(shape, generator=g, dtype=torch.float64).to(DTYPES[tag])
            inputs[name] = gg.tensor_json(bases[name])
        return name

    def run(name, config, seeds, shape, tag, eta, ucmo=False):
        base = base_for(shape, tag)
        sch, initial, final, pred, gen = run_loop(config, seeds, shape, DTYPES[tag], eta, ucmo,
                                                  bases[base])
        gens = gen if isinstance(gen, list) else [gen]
        after = [gg.tensor_json(torch.randn(5, generator=x, dtype=torch.float64)) for x in gens]
        loops.append({
            "name": name, "config": config, "seeds": seeds if isinstance(seeds, list) else [seeds],
            "per_item_generators": isinstance(seeds, list), "shape": list(shape), "dtype": tag,
            "eta": float(eta), "use_clipped_model_output": ucmo, "num_inference_steps": STEPS,
            "timesteps": [int(t) for t in sch.timesteps], "base": base, "kernel": native_kernel,
            "initial": gg.tensor_json(initial), "final": gg.tensor_json(final),
            "pred_original_final": gg.tensor_json(pred), "after": after,
        })

    run("sd_eta1_seed0", SD, 0, (1, 4, 8, 8), "f32", 1.0)
    run("sd_eta0p5_seed42", SD, 42, (1, 4, 8, 8), "f32", 0.5)
    run("default_eta1_2x3x5_seed1", {}, 1, (2, 3, 5), "f32", 1.0)
    run("sd_eta1_3x5_seed7", SD, 7, (3, 5), "f32", 1.0)
    run("sd_eta1_f64_seed2pow32p7", SD, 2**32 + 7, (1, 4, 8, 8), "f64", 1.0)
    run("sd_eta0_seed5", SD, 5, (1, 4, 8, 8), "f32", 0.0)
    run("default_ucmo_eta0p5_seed3", {}, 3, (1, 4, 8, 8), "f32", 0.5, ucmo=True)
    run("sd_eta1_generators_10_11", SD, [10, 11], (2, 4, 4, 4), "f32", 1.0)
    run("sd_eta0p5_f64_3x5_seed9", SD, 9, (3, 5), "f64", 0.5)

    for seed, eta in ((0, 1.0), (42, 0.5)):
        check_against_pipeline(SD, seed, bases["base_f32_1x4x8x8"], eta)
    return inputs, loops


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
    inputs, loops = gen_loops(native_kernel)
    names = [c["name"] for c in sequences + loops]
    assert len(names) == len(set(names)), "duplicate names"
    gg.write_fixture(FILENAME, {
        "native_capability": capability,
        "native_kernel": native_kernel,
        "kernels": list(by_kernel),
        "inputs": inputs,
        "cases": cases,
        "sequences": sequences,
        "loops": loops,
    })
    size = (gg.OUT_DIR / FILENAME).stat().st_size
    print(f"{FILENAME}: {len(cases)} randn cases, {len(sequences)} sequences, {len(loops)} loops, "
          f"kernels {list(by_kernel)} (native {capability}), {size} bytes")


if __name__ == "__main__":
    if sys.argv[1:] == ["--draws"]:
        json.dump(draws(), sys.stdout)
    else:
        main()
