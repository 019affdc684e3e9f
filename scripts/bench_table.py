#!/usr/bin/env python3
"""Print the README's speed table from the results of `cargo bench --bench step`.

Reads criterion's estimates under target/criterion/ (or $CARGO_TARGET_DIR/criterion; standard
library only) and prints, per configuration and shape, the mean time of `step`, `step_into`, the
op-by-op baseline and the copy floor, with the two ratios the crate is judged by: the share of the
copy floor's speed that `step_into` reaches, and how many times faster `step` is than the op-by-op
baseline.

With the argument `randn`, it prints instead the table of `cargo bench --bench randn`: per shape
and element type, `TorchGenerator::randn_into` (the code chosen at run time) and its portable
baseline against `torch.randn` with a seeded generator, as `scripts/time_reference.py` timed it
(`bench/reference_timings.jsonl`; its mean over rounds, as criterion's figures are means). With `eta1_torch`, the table of the `eta1_torch`
group of `--bench step` (a step with `eta = 1` and PyTorch's generator as its noise source)
against diffusers' `DDIMScheduler.step(..., eta=1.0, generator=g)` from the same file.

Usage, from the repository root:
    cargo bench --bench step
    python3 scripts/bench_table.py
    cargo bench -p ddim-bench --bench randn
    python3 scripts/bench_table.py randn
    python3 scripts/bench_table.py eta1_torch
"""

import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ROOT = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "criterion"
REFERENCE = REPO / "bench" / "reference_timings.jsonl"
CASES = ["epsilon", "v_prediction_clip", "thresholding", "eta1_rng"]
SHAPES = ["1x4x64x64", "1x4x128x128", "8x4x128x128", "16x3x256x256"]
FUNCTIONS = ["step", "step_into", "op_by_op", "copy_floor"]


def mean_ns(case, function, shape):
    path = ROOT / case / function / shape / "new" / "estimates.json"
    return json.loads(path.read_text())["mean"]["point_estimate"]


def fmt(ns):
    return f"{ns / 1e3:,.1f} µs" if ns < 1e6 else f"{ns / 1e6:,.2f} ms"


def main():
    print("| config | shape | `step` | `step_into` | op-by-op | copy floor "
          "| `step_into` / floor speed | `step` vs op-by-op |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for case in CASES:
        for shape in SHAPES:
            t = {f: mean_ns(case, f, shape) for f in FUNCTIONS}
            share = t["copy_floor"] / t["step_into"] * 100
            speedup = t["op_by_op"] / t["step"]
            print(f"| {case} | {shape.replace('x', '×')} | {fmt(t['step'])} | "
                  f"{fmt(t['step_into'])} | {fmt(t['op_by_op'])} | {fmt(t['copy_floor'])} | "
                  f"{share:.0f}% | {speedup:.1f}× |")


def reference_ns():
    """torch's times from `bench/reference_timings.jsonl`: {(what, shape, dtype): ns}."""
    times = {}
    for line in REFERENCE.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            times[(r["what"], r["shape"], r["dtype"])] = r["mean_us"] * 1e3
    return times


def randn_table():
    torch = reference_ns()
    print("| type | shape | `randn_into` | portable code | `torch.randn` "
          "| vs portable | vs torch |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for dtype in ["f32", "f64"]:
        for shape in SHAPES:
            ours = mean_ns(f"randn_{dtype}", "randn_into", shape)
            portable = mean_ns(f"randn_{dtype}", "portable", shape)
            reference = torch[("randn", shape, dtype)]
            print(f"| {dtype} | {shape.replace('x', '×')} | {fmt(ours)} | {fmt(portable)} | "
                  f"{fmt(reference)} | {portable / ours:.1f}× faster | "
                  f"{reference / ours:.1f}× faster |")


def eta1_torch_table():
    torch = reference_ns()
    print("| shape | `step_into`, torch noise | `randn_into` then `step_into` "
          "| diffusers `step(eta=1, generator)` | vs diffusers |")
    print("|---|---:|---:|---:|---:|")
    for shape in SHAPES:
        fused = mean_ns("eta1_torch", "step_into", shape)
        two_pass = mean_ns("eta1_torch", "randn_then_step_into", shape)
        reference = torch[("step_eta1", shape, "f32")]
        print(f"| {shape.replace('x', '×')} | {fmt(fused)} | {fmt(two_pass)} | "
              f"{fmt(reference)} | {reference / fused:.1f}× faster |")


if __name__ == "__main__":
    {"randn": randn_table, "eta1_torch": eta1_torch_table}.get(
        sys.argv[1] if len(sys.argv) > 1 else "", main)()
