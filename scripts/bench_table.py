#!/usr/bin/env python3
"""Print the README's speed table from the results of `cargo bench --bench step`.

Reads criterion's estimates under target/criterion/ (standard library only) and prints, per
configuration and shape, the mean time of `step`, `step_into`, the op-by-op baseline and the
copy floor, with the two ratios the crate is judged by: the share of the copy floor's speed that
`step_into` reaches, and how many times faster `step` is than the op-by-op baseline.

Usage, from the repository root:
    cargo bench --bench step
    python3 scripts/bench_table.py
"""

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "target" / "criterion"
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


if __name__ == "__main__":
    main()
