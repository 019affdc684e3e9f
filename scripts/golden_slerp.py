#!/usr/bin/env python3
"""Produce `tests/fixtures/golden/slerp.json`, the reference values of the `ddim` crate's `slerp`
(compared by `tests/suite/slerp.rs`).

The reference is the spherical interpolation of two initial noises that the DDIM authors' code
uses for its interpolation figures (Song, Meng and Ermon 2020, section 5.3): for two noise
tensors z1, z2 and a weight alpha,

    theta = acos(sum(z1 * z2) / (norm(z1) * norm(z2)))
    slerp = sin((1 - alpha) * theta) / sin(theta) * z1 + sin(alpha * theta) / sin(theta) * z2

evaluated in torch, in the tensors' dtype, once per batch item (the crate interpolates each item
of axis 0 on its own). The formula is written out below from the paper's description; no
diffusers code is involved. Parallel items (where the formula divides by zero) are not part of
the fixture: the crate falls back to linear interpolation there, which its unit tests pin.

Produced with:
    torch     2.15.0 (build string "2.15.0+cu132", used on the CPU only)
    numpy     2.4.6
    Python    3.11.7
(diffusers 0.42.1 is installed alongside, and recorded, because the shared fixture helpers check
the versions of every golden file.)

How to run (from the repository root):
    python -m venv .venv && . .venv/bin/activate
    pip install diffusers==0.42.1 torch numpy
    python scripts/golden_slerp.py

All inputs come from seeded CPU `torch.Generator`s, so running the script twice gives a
byte-identical file. Encoding as in `scripts/generate_golden.py`: tensors are
{"dtype", "shape", "hex"}; each case names its inputs `a` and `b` (keys of "inputs"), `alpha`
(a JSON number and its float.hex() spelling, `alpha_hex`) and the reference's result `expected`.
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generate_golden as gg  # noqa: E402  (only helpers; it does nothing on import)

FILENAME = "slerp.json"
GENERATOR_NAME = "scripts/golden_slerp.py"

ALPHAS = [0.0, 0.1, 0.2, 0.25, 0.3, 1.0 / 3.0, 0.5, 0.7, 0.9, 0.999, 1.0]


def slerp_item(z1, z2, alpha):
    """The DDIM authors' spherical interpolation of one item, in the tensors' dtype."""
    theta = torch.acos(torch.sum(z1 * z2) / (torch.norm(z1) * torch.norm(z2)))
    return torch.sin((1 - alpha) * theta) / torch.sin(theta) * z1 + torch.sin(alpha * theta) / torch.sin(theta) * z2


def slerp(a, b, alpha):
    return torch.stack([slerp_item(a[i], b[i], alpha) for i in range(a.shape[0])])


def main():
    torch.set_num_threads(1)
    gg.check_versions()
    gg.GENERATOR_NAME = GENERATOR_NAME
    inputs = {}
    cases = []
    specs = [
        ("digits", (4, 1, 8, 8), torch.float32, 11),
        ("latents", (2, 4, 16, 16), torch.float32, 22),
        ("flat", (3, 7), torch.float64, 33),
    ]
    for prefix, shape, dtype, seed in specs:
        g = torch.Generator().manual_seed(seed)
        a = torch.randn(shape, generator=g, dtype=dtype)
        b = torch.randn(shape, generator=g, dtype=dtype)
        if prefix == "flat":
            # An obtuse pair (b leaning against a) and a nearly parallel one.
            b[1] = -0.8 * a[1] + 0.3 * b[1]
            b[2] = a[2] + 1e-3 * b[2]
        inputs[f"{prefix}_a"] = gg.tensor_json(a)
        inputs[f"{prefix}_b"] = gg.tensor_json(b)
        for alpha in ALPHAS:
            cases.append(
                {
                    "name": f"{prefix}_alpha{alpha:.4f}",
                    "a": f"{prefix}_a",
                    "b": f"{prefix}_b",
                    "alpha": alpha,
                    "alpha_hex": float(alpha).hex(),
                    "expected": gg.tensor_json(slerp(a, b, alpha)),
                }
            )
    gg.write_fixture(FILENAME, {"inputs": inputs, "cases": cases})
    size = (gg.OUT_DIR / FILENAME).stat().st_size
    print(f"{FILENAME}: {len(cases)} cases, {len(inputs)} inputs, {size} bytes")


if __name__ == "__main__":
    main()
