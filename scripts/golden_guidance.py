#!/usr/bin/env python3
"""Produce `tests/fixtures/golden/guidance.json`, the reference values of the `ddim` crate's
`classifier_free_guidance` (compared by `tests/guidance.rs`).

The reference is what Hugging Face diffusers' pipelines do between the network and the
scheduler step (`StableDiffusionPipeline.__call__`, "perform guidance"):

    noise_pred = noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)
    if guidance_rescale > 0.0:
        noise_pred = rescale_noise_cfg(noise_pred, noise_pred_text, guidance_rescale=guidance_rescale)

The first line is the pipeline's guidance formula, evaluated the same way; `rescale_noise_cfg` is
imported from diffusers, not re-implemented. It is imported from `diffusers.guiders.guider_utils`
(where the guiders use it) because `pipeline_stable_diffusion` imports `transformers`, which the
install below does not bring; `check_same_function` asserts, from the source text, that the two
definitions are the same code.

Produced with:
    diffusers 0.42.1
    torch     2.15.0 (build string "2.15.0+cu132", used on the CPU only)
    numpy     2.4.6
    Python    3.11.7

How to run (from the repository root):
    python -m venv .venv && . .venv/bin/activate
    pip install diffusers==0.42.1 torch numpy
    python scripts/golden_guidance.py

All inputs come from seeded CPU `torch.Generator`s, so running the script twice gives a
byte-identical file. The encoding is that of `scripts/generate_golden.py` (whose helpers are
imported): tensors as {"dtype", "shape", "hex"} with the hex of the little-endian bytes, the
versions used under "versions". Each case names its two inputs (`uncond`, `text`, keys of
"inputs"), `guidance_scale`, `guidance_rescale` and the reference's result `expected`.
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generate_golden as gg  # noqa: E402  (only helpers; it does nothing on import)

import diffusers  # noqa: E402
from diffusers.guiders.guider_utils import rescale_noise_cfg  # noqa: E402

FILENAME = "guidance.json"
GENERATOR_NAME = "scripts/golden_guidance.py"

SCALES = [1.0, 7.5, 0.0, -1.0]
RESCALES = [0.0, 0.7, 1.0]


def reference(noise_pred_uncond, noise_pred_text, guidance_scale, guidance_rescale):
    """The pipeline's guidance, as in `StableDiffusionPipeline.__call__`."""
    noise_pred = noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)
    if guidance_rescale > 0.0:
        noise_pred = rescale_noise_cfg(noise_pred, noise_pred_text, guidance_rescale=guidance_rescale)
    return noise_pred


def check_same_function():
    """Asserts that the pipeline's `rescale_noise_cfg` is the guiders' one (docstrings aside),
    by parsing both source files (the pipeline module itself is not imported)."""
    import ast

    def body(relative):
        path = Path(diffusers.__file__).parent / relative
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name == "rescale_noise_cfg":
                statements = node.body
                if isinstance(statements[0], ast.Expr) and isinstance(statements[0].value, ast.Constant):
                    statements = statements[1:]  # the docstring
                return [ast.dump(s) for s in statements], ast.dump(node.args)
        raise LookupError(f"no rescale_noise_cfg in {path}")

    pipeline = body("pipelines/stable_diffusion/pipeline_stable_diffusion.py")
    guiders = body("guiders/guider_utils.py")
    assert pipeline == guiders, "the pipeline's rescale_noise_cfg differs from the guiders'"


def randn(shape, seed, dtype, scale=1.0, offset=0.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * scale + offset
    return x.to(dtype)


def main():
    gg.check_versions()
    check_same_function()
    gg.GENERATOR_NAME = GENERATOR_NAME  # write_fixture records it as the file's generator
    inputs = {}
    cases = []

    def add_inputs(prefix, uncond, text):
        inputs[f"{prefix}_uncond"] = gg.tensor_json(uncond)
        inputs[f"{prefix}_text"] = gg.tensor_json(text)
        return uncond, text

    def run(prefix, uncond, text, scales, rescales, note=None):
        for s in scales:
            for r in rescales:
                expected = reference(uncond, text, s, r)
                case = {
                    "name": f"{prefix}_s{s:g}_r{r:g}",
                    "uncond": f"{prefix}_uncond",
                    "text": f"{prefix}_text",
                    "guidance_scale": s,
                    "guidance_rescale": r,
                    "expected": gg.tensor_json(expected),
                }
                if note:
                    case["note"] = note
                cases.append(case)

    # The conditional prediction is the unconditional one plus a smaller, correlated difference,
    # as with a real network, with its own mean so that the means matter.
    def pair(prefix, shape, seed, dtype, scale=1.0):
        uncond = randn(shape, seed, dtype, scale)
        text = (uncond.double() + randn(shape, seed + 1, torch.float64, 0.3 * scale, 0.05 * scale)).to(dtype)
        return add_inputs(prefix, uncond, text)

    # float32: the latent shape of a small SD batch, a 2-D batch, a one-item batch.
    for prefix, shape, seed in [
        ("latent", (2, 4, 8, 8), 100),
        ("flat", (3, 5), 200),
        ("single", (1, 4, 16, 16), 300),
    ]:
        u, t = pair(prefix, shape, seed, torch.float32)
        run(prefix, u, t, SCALES, RESCALES)

    # float64.
    u, t = pair("flat64", (3, 5), 400, torch.float64)
    run("flat64", u, t, SCALES, RESCALES)
    u, t = pair("latent64", (2, 4, 8, 8), 500, torch.float64)
    run("latent64", u, t, [7.5], RESCALES)

    # Magnitudes far from 1.
    for prefix, scale, seed in [("tiny", 1e-3, 600), ("huge", 1e3, 700)]:
        u, t = pair(prefix, (2, 4, 8, 8), seed, torch.float32, scale)
        run(prefix, u, t, [7.5], [0.7, 1.0])

    # Scalars that float32 cannot hold: both are rounded to float32 by torch, and
    # `1 - guidance_rescale` is computed in double first.
    u, t = pair("odd", (2, 3, 7), 800, torch.float32)
    run("odd", u, t, [4.3, 1.7], [0.35, 0.9])

    # Items of one element: torch's unbiased std is NaN (degrees of freedom 0).
    u, t = pair("one", (3, 1), 900, torch.float32)
    run("one", u, t, [7.5], [0.0, 0.7], note="one element per item: std is NaN")

    # A constant guided prediction (scale 0 gives uncond; item 0 constant 0.5, item 1 zero):
    # std_cfg is 0, so the ratio is infinite and the results are infinities, or NaN where the
    # guided value is 0.
    uc = torch.tensor([[0.5] * 6, [0.0] * 6], dtype=torch.float32)
    tc = randn((2, 6), 1000, torch.float32)
    add_inputs("flatline", uc, tc)
    run("flatline", uc, tc, [0.0], [0.7, 1.0], note="zero std of the guided prediction")

    gg.write_fixture(FILENAME, {"inputs": inputs, "cases": cases})
    size = (gg.OUT_DIR / FILENAME).stat().st_size
    print(f"{FILENAME}: {len(cases)} cases, {len(inputs)} inputs, {size} bytes")


if __name__ == "__main__":
    main()
