#!/usr/bin/env python3
"""Produce the golden fixtures that the `ddim` crate's tests compare against.

The reference implementation is `DDIMScheduler` from Hugging Face diffusers.
Every value in `tests/fixtures/golden/*.json` comes from calling that class;
nothing here re-implements the scheduler.

Produced with:
    diffusers 0.42.1
    torch     2.15.0 (build string "2.15.0+cu132", used on the CPU only)
    numpy     2.4.6
    Python    3.11.7

How to run (from the repository root):
    python -m venv .venv && . .venv/bin/activate
    pip install diffusers==0.42.1 torch numpy
    python scripts/generate_golden.py

The versions actually used are written into every fixture file under
"versions", and a warning is printed if they differ from the ones above.
All random inputs come from seeded CPU `torch.Generator`s, so running the
script twice gives byte-identical files.

Encoding used in the fixture files:
  * tensor  -> {"dtype": "f32"|"f64", "shape": [...], "hex": "..."}, where
               "hex" is the lowercase hex of the little-endian bytes of the
               C-contiguous data (exact bits, NaN payloads included);
  * scalar  -> plain JSON number with the exact value (f32 widened to f64);
  * config  -> keyword arguments handed to `DDIMScheduler.from_config`
               (only the keys that were set; for real model configs the whole
               file, plus "config_file" naming it);
  * a reference call that raised -> "error": "<ExceptionType>: <message>".
"""

import copy
import json
import platform
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

import diffusers
from diffusers import DDIMScheduler

EXPECTED = {"diffusers": "0.42.1", "torch": "2.15.0", "numpy": "2.4.6", "python": "3.11.7"}

ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = ROOT / "tests" / "fixtures" / "configs"
OUT_DIR = ROOT / "tests" / "fixtures" / "golden"
WRITTEN_DIR = ROOT / "tests" / "fixtures" / "written"
GENERATOR_NAME = "scripts/generate_golden.py"

SCALED_LINEAR = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
BETA_SCHEDULES = {
    "linear": {"beta_schedule": "linear"},
    "scaled_linear": SCALED_LINEAR,
    "squaredcos_cap_v2": {"beta_schedule": "squaredcos_cap_v2"},
}

torch.set_num_threads(1)
diffusers.utils.logging.set_verbosity_error()
warnings.filterwarnings("ignore")


# --------------------------------------------------------------------------
# helpers


def versions():
    return {
        "diffusers": diffusers.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def check_versions():
    found = versions()
    for key, want in EXPECTED.items():
        have = found[key]
        if have.split("+")[0] != want:
            print(f"warning: {key} is {have}, fixtures were produced with {want}", file=sys.stderr)


def tensor_json(x):
    """Exact-bit encoding of a float32 / float64 tensor or numpy array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().contiguous().numpy()
    x = np.ascontiguousarray(x)
    if x.dtype == np.float32:
        tag, le = "f32", "<f4"
    elif x.dtype == np.float64:
        tag, le = "f64", "<f8"
    else:
        raise TypeError(f"unsupported dtype {x.dtype}")
    return {"dtype": tag, "shape": [int(d) for d in x.shape], "hex": x.astype(le).tobytes().hex()}


def error_text(exc):
    return f"{type(exc).__name__}: {exc}"


def load_real_configs():
    found = []
    for path in sorted(CONFIG_DIR.glob("*.json")):
        with open(path) as fh:
            found.append((path.stem, path.name, json.load(fh)))
    return found


def build(config):
    return DDIMScheduler.from_config(copy.deepcopy(config))


def with_config(case, config, config_file=None):
    case["config"] = config
    if config_file is not None:
        case["config_file"] = config_file
    return case


def three_timesteps(timesteps):
    """First, middle and last entry of a schedule, without repeats."""
    picks = []
    for idx in (0, len(timesteps) // 2, len(timesteps) - 1):
        t = int(timesteps[idx])
        if t not in picks:
            picks.append(t)
    return picks


def fmt_eta(eta):
    return ("%g" % eta).replace(".", "p")


def write_fixture(filename, payload):
    """One JSON document; each top-level entry and each element of a top-level
    list/dict on its own line, so that diffs stay readable."""
    doc = {"generator": GENERATOR_NAME, "versions": versions()}
    doc.update(payload)

    def dump(v):
        return json.dumps(v, separators=(",", ":"), allow_nan=False)

    parts = []
    for key, value in doc.items():
        head = json.dumps(key) + ":"
        if isinstance(value, list) and value:
            body = "[\n" + ",\n".join(dump(v) for v in value) + "\n]"
        elif isinstance(value, dict) and value and key != "versions":
            body = "{\n" + ",\n".join(json.dumps(k) + ":" + dump(v) for k, v in value.items()) + "\n}"
        else:
            body = dump(value)
        parts.append(head + body)
    text = "{\n" + ",\n".join(parts) + "\n}\n"
    json.loads(text)  # sanity: the result parses
    names = [c["name"] for c in doc.get("cases", [])]
    assert len(names) == len(set(names)), f"duplicate case names in {filename}"
    (OUT_DIR / filename).write_text(text)
    return doc


# --------------------------------------------------------------------------
# 1. schedules


def gen_schedules(real):
    cases = []

    def add(name, config, config_file=None):
        case = with_config({"name": name}, config, config_file)
        try:
            sch = build(config)
            case["betas"] = tensor_json(sch.betas)
            case["alphas_cumprod"] = tensor_json(sch.alphas_cumprod)
            case["final_alpha_cumprod"] = float(sch.final_alpha_cumprod)
        except Exception as exc:  # noqa: BLE001
            case["error"] = error_text(exc)
        cases.append(case)

    for sname, sconf in BETA_SCHEDULES.items():
        for T in (1000, 777):
            for rescale in (False, True):
                cfg = dict(sconf, num_train_timesteps=T, rescale_betas_zero_snr=rescale)
                add(f"{sname}_T{T}_{'zsnr' if rescale else 'plain'}", cfg)

    betas = (np.linspace(1e-4, 0.05, 64) ** 1.1).tolist()
    add("trained_betas_T64", {"trained_betas": betas, "num_train_timesteps": 64})
    add("scaled_linear_T1000_alpha_not_one",
        dict(SCALED_LINEAR, num_train_timesteps=1000, set_alpha_to_one=False))
    add("linear_T1", {"beta_schedule": "linear", "num_train_timesteps": 1})
    add("linear_T2", {"beta_schedule": "linear", "num_train_timesteps": 2})
    for stem, fname, cfg in real:
        add(f"real_{stem}", cfg, fname)
    return cases


# --------------------------------------------------------------------------
# 2. timesteps


def raw_timesteps(config, n):
    sch = build(config)
    sch.set_timesteps(n)
    return [int(v) for v in sch.timesteps.tolist()]


def gen_timesteps():
    cases, prints = [], []
    for spacing in ("leading", "trailing", "linspace"):
        for T in (1000, 777):
            for offset in (0, 1):
                cfg = {"timestep_spacing": spacing, "num_train_timesteps": T, "steps_offset": offset}
                ns = []
                for n in (1, 7, 10, 13, 29, 50, 61, 999, 1000, T):
                    if n not in ns:
                        ns.append(n)
                for n in ns:
                    case = {"name": f"{spacing}_T{T}_off{offset}_n{n}", "config": cfg,
                            "num_inference_steps": n}
                    try:
                        case["timesteps"] = raw_timesteps(cfg, n)
                    except Exception as exc:  # noqa: BLE001
                        case["error"] = error_text(exc)
                    cases.append(case)

                rows = []
                sch = build(cfg)
                for n in range(1, T + 1):
                    sch.set_timesteps(n)
                    t = [int(v) for v in sch.timesteps.tolist()]
                    wsum = sum((i + 1) * v for i, v in enumerate(t))
                    rows.append([n, len(t), t[0], t[-1], sum(t), wsum])
                prints.append({"name": f"{spacing}_T{T}_off{offset}", "config": cfg,
                               "num_train_timesteps": T, "rows": rows})
    return cases, prints


# --------------------------------------------------------------------------
# 3. single steps


def step_scalars(sch, t, eta):
    """The float32 scalars the reference's `step` computes at timestep `t`, evaluated with the
    same 0-dimensional tensor operations (so with torch's own square root), each written as the
    hex of its float32 bits (NaN included)."""
    prev_t = t - sch.config.num_train_timesteps // sch.num_inference_steps
    alpha = sch.alphas_cumprod[t]
    alpha_prev = sch.alphas_cumprod[prev_t] if prev_t >= 0 else sch.final_alpha_cumprod
    beta = 1 - alpha
    sigma = eta * sch._get_variance(t, prev_t) ** 0.5
    values = {
        "alpha_bar": alpha,
        "alpha_bar_prev": alpha_prev,
        "sqrt_alpha_bar": alpha ** 0.5,
        "sqrt_one_minus_alpha_bar": beta ** 0.5,
        "sqrt_alpha_bar_prev": alpha_prev ** 0.5,
        "sigma": sigma,
        "direction": (1 - alpha_prev - sigma ** 2) ** 0.5,
    }
    bits = lambda v: v.to(torch.float32).reshape(1).numpy().view(np.uint32)[0]
    return {name: f"{bits(v):08x}" for name, v in values.items()}


def gen_quadratic():
    """The quadratic spacing of the original DDIM code (ermongroup/ddim, `skip_type == "quad"`):
    `int(s)` for `s` in `np.linspace(0, np.sqrt(0.8 T), n) ** 2`, listed here in descending order
    with repeats removed, as the crate runs them. diffusers has no such spacing."""
    rows = []
    for T in (1000, 777, 4000):
        for n in (1, 2, 7, 10, 20, 29, 30, 50, 100, 500):
            if n > T:
                continue
            seq = [int(s) for s in list(np.linspace(0, np.sqrt(T * 0.8), n) ** 2)]
            rows.append({"num_train_timesteps": T, "num_inference_steps": n,
                         "timesteps": sorted(set(seq), reverse=True)})
    return rows


def gen_steps(real):
    g = torch.Generator().manual_seed(20240611)
    shape = (2, 3, 4, 4)
    inputs = {}
    inputs["m0"] = torch.randn(shape, generator=g, dtype=torch.float32)
    inputs["s0"] = torch.randn(shape, generator=g, dtype=torch.float32)
    inputs["n0"] = torch.randn(shape, generator=g, dtype=torch.float32)
    inputs["m1"] = torch.randn(shape, generator=g, dtype=torch.float32) * 3
    inputs["m0_f64"] = torch.randn(shape, generator=g, dtype=torch.float64)
    inputs["s0_f64"] = torch.randn(shape, generator=g, dtype=torch.float64)
    inputs["n0_f64"] = torch.randn(shape, generator=g, dtype=torch.float64)

    cases = []
    quirks = []
    skipped = []

    def run(prefix, config, n, eta, ucmo, model, sample, noise, config_file=None, which=None,
            quirk=False):
        sch = build(config)
        sch.set_timesteps(n)
        ts = [int(v) for v in sch.timesteps.tolist()]
        picks = three_timesteps(ts) if which is None else which(ts)
        T = sch.config.num_train_timesteps
        for t in picks:
            name = f"{prefix}_t{t}"
            if not quirk and not 0 <= t < T:
                skipped.append(f"{name}: timestep {t} outside [0, {T})")
                continue
            case = with_config({"name": name}, config, config_file)
            use_noise = noise if eta > 0 else None
            case.update({"num_inference_steps": n, "timestep": t, "eta": float(eta),
                         "use_clipped_model_output": ucmo, "model_output": model,
                         "sample": sample, "noise": use_noise})
            try:
                out = sch.step(inputs[model], t, inputs[sample], eta=float(eta),
                               use_clipped_model_output=ucmo,
                               variance_noise=inputs[use_noise] if use_noise else None)
                case["prev_sample"] = tensor_json(out.prev_sample)
                case["pred_original_sample"] = tensor_json(out.pred_original_sample)
                case["scalars"] = step_scalars(sch, t, float(eta))
            except Exception as exc:  # noqa: BLE001
                case["error"] = error_text(exc)
            (quirks if quirk else cases).append(case)

    # (a) prediction type x clipping mode x use_clipped_model_output x eta
    clip_modes = {
        "noclip": {"clip_sample": False},
        "clip1": {"clip_sample": True, "clip_sample_range": 1.0},
        "clip1p7": {"clip_sample": True, "clip_sample_range": 1.7},
        "thresh": {"clip_sample": False, "thresholding": True,
                   "dynamic_thresholding_ratio": 0.9, "sample_max_value": 2.5},
    }
    for pred in ("epsilon", "sample", "v_prediction"):
        for mode, mconf in clip_modes.items():
            for ucmo in (False, True):
                for eta in (0.0, 0.6):
                    cfg = dict({"beta_schedule": "linear", "num_train_timesteps": 1000,
                                "prediction_type": pred}, **mconf)
                    run(f"grid_{pred}_{mode}_{'ucmo' if ucmo else 'raw'}_eta{fmt_eta(eta)}",
                        cfg, 50, eta, ucmo, "m1", "s0", "n0")

    # (b) schedule x zero-SNR x set_alpha_to_one x spacing
    for sname, sconf in BETA_SCHEDULES.items():
        for rescale in (False, True):
            for one in (False, True):
                for spacing in ("leading", "trailing", "linspace"):
                    cfg = dict(sconf, rescale_betas_zero_snr=rescale, set_alpha_to_one=one,
                               timestep_spacing=spacing, clip_sample=False,
                               prediction_type="v_prediction" if rescale else "epsilon")
                    for eta in (0.0, 1.0):
                        run(f"sched_{sname}_{'zsnr' if rescale else 'plain'}_"
                            f"{'one' if one else 'a0'}_{spacing}_eta{fmt_eta(eta)}",
                            cfg, 20, eta, False, "m0", "s0", "n0")

    # (c) 777 training steps with steps_offset 1
    for spacing, ns in (("leading", (1, 13, 777)), ("trailing", (13,)), ("linspace", (13,))):
        for n in ns:
            cfg = {"num_train_timesteps": 777, "steps_offset": 1, "timestep_spacing": spacing,
                   "clip_sample": False}
            for eta in (0.0, 0.5):
                run(f"T777_off1_{spacing}_n{n}_eta{fmt_eta(eta)}", cfg, n, eta, False,
                    "m0", "s0", "n0")

    # (d) dynamic thresholding edge settings
    for ratio in (0.0, 0.5, 1.0):
        for smax in (0.5, 10.0):
            cfg = {"clip_sample": False, "thresholding": True,
                   "dynamic_thresholding_ratio": ratio, "sample_max_value": smax}
            run(f"thresh_r{fmt_eta(ratio)}_max{fmt_eta(smax)}", cfg, 50, 0.0, False,
                "m1", "s0", None)
    # thresholding takes precedence over clip_sample (left at its default True)
    run("thresh_over_clip", {"thresholding": True, "dynamic_thresholding_ratio": 0.9,
                             "sample_max_value": 2.5}, 50, 0.0, False, "m1", "s0", None)

    # (e) zero-SNR + trailing + v_prediction with eta > 0 at the ends of the schedule
    for sname, sconf in BETA_SCHEDULES.items():
        for one in (True, False):
            cfg = dict(sconf, rescale_betas_zero_snr=True, timestep_spacing="trailing",
                       prediction_type="v_prediction", clip_sample=False, set_alpha_to_one=one)
            for eta in (0.25, 1.0):
                run(f"zsnr_eta_{sname}_{'one' if one else 'a0'}_eta{fmt_eta(eta)}", cfg, 50,
                    eta, False, "m0", "s0", "n0", which=lambda ts: [ts[0], ts[-1]])

    # (f) float64 inputs
    f64 = {
        "epsilon": ({"clip_sample": False}, 0.0, False),
        "vpred_clip": ({"prediction_type": "v_prediction", "clip_sample": True}, 0.0, False),
        "thresh": ({"clip_sample": False, "thresholding": True,
                    "dynamic_thresholding_ratio": 0.9, "sample_max_value": 2.5}, 0.0, False),
        "eta0p5": ({"clip_sample": False}, 0.5, False),
        "vpred_clip_ucmo_eta0p5": ({"prediction_type": "v_prediction", "clip_sample": True},
                                   0.5, True),
    }
    for label, (cfg, eta, ucmo) in f64.items():
        run(f"f64_{label}", cfg, 50, eta, ucmo, "m0_f64", "s0_f64", "n0_f64")

    # (g) real model configs
    for stem, fname, cfg in real:
        for eta in (0.0, 0.5):
            run(f"real_{stem}_eta{fmt_eta(eta)}", cfg, 50, eta, False, "m0", "s0", "n0",
                config_file=fname)

    # (h) quirks, kept apart from "cases": steps at timesteps outside [0, T) that
    # the reference schedules themselves produce.
    #   * trailing spacing with T=1000, n=61 ends on timestep -1; the reference
    #     then reads alphas_cumprod[-1] (Python indexing from the end).
    #   * leading spacing with T=777, steps_offset=1, n=777 starts on 777.
    trailing61 = {"timestep_spacing": "trailing", "clip_sample": False}
    for eta in (0.0, 0.5):
        run(f"quirk_trailing_T1000_n61_eta{fmt_eta(eta)}", trailing61, 61, eta, False,
            "m0", "s0", "n0", which=lambda ts: [ts[-1]], quirk=True)
    run("quirk_T777_off1_leading_n777_eta0",
        {"num_train_timesteps": 777, "steps_offset": 1, "timestep_spacing": "leading",
         "clip_sample": False}, 777, 0.0, False, "m0", "s0", "n0",
        which=lambda ts: [ts[0]], quirk=True)

    return {k: tensor_json(v) for k, v in inputs.items()}, cases, quirks, skipped


# --------------------------------------------------------------------------
# 4. add_noise / get_velocity


def gen_noising(real):
    g = torch.Generator().manual_seed(777001)
    shape = (4, 3, 4, 4)
    inputs = {
        "x0": torch.randn(shape, generator=g, dtype=torch.float32),
        "e0": torch.randn(shape, generator=g, dtype=torch.float32),
        "x0_f64": torch.randn(shape, generator=g, dtype=torch.float64),
        "e0_f64": torch.randn(shape, generator=g, dtype=torch.float64),
    }
    ts_lists = {"a": [0, 1, 500, 999], "b": [999, 250, 10, 0]}
    cases = []

    def run(prefix, config, config_file=None):
        for suffix in ("", "_f64"):
            for op in ("add_noise", "get_velocity"):
                for tname, ts in ts_lists.items():
                    sch = build(config)
                    case = with_config({"name": f"{prefix}{suffix or '_f32'}_{op}_{tname}"},
                                       config, config_file)
                    case.update({"op": op, "sample": "x0" + suffix, "noise": "e0" + suffix,
                                 "timesteps": ts})
                    tt = torch.tensor(ts, dtype=torch.long)
                    try:
                        fn = sch.add_noise if op == "add_noise" else sch.get_velocity
                        case["result"] = tensor_json(fn(inputs["x0" + suffix],
                                                        inputs["e0" + suffix], tt))
                    except Exception as exc:  # noqa: BLE001
                        case["error"] = error_text(exc)
                    cases.append(case)

    for sname, sconf in BETA_SCHEDULES.items():
        for rescale in (False, True):
            run(f"{sname}_{'zsnr' if rescale else 'plain'}",
                dict(sconf, rescale_betas_zero_snr=rescale))
    for stem, fname, cfg in real:
        run(f"real_{stem}", cfg, fname)
    return {k: tensor_json(v) for k, v in inputs.items()}, cases


# --------------------------------------------------------------------------
# 5. full sampling loops


def stand_in_model(sample, t, T, base):
    k = torch.tensor(0.6 + 0.3 * t / T, dtype=torch.float32)
    c = torch.tensor(0.05, dtype=torch.float32)
    return sample * k - c * base


def gen_loops(real):
    g = torch.Generator().manual_seed(4242)
    shape = (1, 4, 8, 8)
    steps = 50
    inputs = {
        "x_init": torch.randn(shape, generator=g, dtype=torch.float32),
        "base": torch.randn(shape, generator=g, dtype=torch.float32),
    }
    noise_names = [f"noise_{i}" for i in range(steps)]
    for name in noise_names:
        inputs[name] = torch.randn(shape, generator=g, dtype=torch.float32)

    cases = []

    def run(name, config, eta, ucmo=False, config_file=None):
        case = with_config({"name": name}, config, config_file)
        case.update({"num_inference_steps": steps, "eta": float(eta),
                     "use_clipped_model_output": ucmo, "initial": "x_init", "base": "base",
                     "noise": noise_names if eta > 0 else None})
        try:
            sch = build(config)
            sch.set_timesteps(steps)
            T = sch.config.num_train_timesteps
            ts = [int(v) for v in sch.timesteps.tolist()]
            case["timesteps"] = ts
            x = inputs["x_init"] * sch.init_noise_sigma
            pred_x0 = None
            for i, t in enumerate(ts):
                out = sch.step(stand_in_model(x, t, T, inputs["base"]), t, x, eta=float(eta),
                               use_clipped_model_output=ucmo,
                               variance_noise=inputs[noise_names[i]] if eta > 0 else None)
                x, pred_x0 = out.prev_sample, out.pred_original_sample
            case["final"] = tensor_json(x)
            case["pred_original_final"] = tensor_json(pred_x0)
        except Exception as exc:  # noqa: BLE001
            case["error"] = error_text(exc)
        cases.append(case)

    for stem, fname, cfg in real:
        run(f"real_{stem}_eta0", cfg, 0.0, config_file=fname)
    for stem, fname, cfg in real:
        run(f"real_{stem}_eta1", cfg, 1.0, config_file=fname)
    run("linear_vpred_clip",
        {"prediction_type": "v_prediction", "clip_sample": True, "clip_sample_range": 1.0}, 0.0)
    run("thresh_r0p9_max1p5", {"clip_sample": False, "thresholding": True,
                               "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5}, 0.0)
    zsnr = dict(SCALED_LINEAR, rescale_betas_zero_snr=True, timestep_spacing="trailing",
                prediction_type="v_prediction", clip_sample=False)
    run("zsnr_trailing_vpred_eta0", zsnr, 0.0)
    run("zsnr_trailing_vpred_eta1", zsnr, 1.0)
    run("zsnr_trailing_vpred_linear_eta1",
        {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing",
         "prediction_type": "v_prediction", "clip_sample": False}, 1.0)
    run("linspace", {"timestep_spacing": "linspace", "clip_sample": False}, 0.0)
    run("clip_ucmo", {"clip_sample": True, "clip_sample_range": 1.0}, 0.0, ucmo=True)
    run("clip_ucmo_eta1", {"clip_sample": True, "clip_sample_range": 1.0}, 1.0, ucmo=True)
    return {k: tensor_json(v) for k, v in inputs.items()}, cases


# --------------------------------------------------------------------------


# --------------------------------------------------------------------------
# 6. inversion (DDIMInverseScheduler) and per-item timesteps (DDIMParallelScheduler)


def gen_inverse():
    """Single inversion steps at the first, a middle and the last timestep of the ascending
    schedule, and 50-step inversion loops driven by the stand-in model."""
    from diffusers import DDIMInverseScheduler

    g = torch.Generator().manual_seed(31337)
    shape = (2, 3, 4, 4)
    inputs = {
        "m0": torch.randn(shape, generator=g, dtype=torch.float32),
        "s0": torch.randn(shape, generator=g, dtype=torch.float32),
        "m1": torch.randn(shape, generator=g, dtype=torch.float32) * 3,
    }
    cases = []
    for spacing in ("leading", "trailing"):
        for one in (True, False):
            for pred in ("epsilon", "sample", "v_prediction"):
                for clip in (False, True):
                    for n in (10, 61):
                        config = {"timestep_spacing": spacing, "set_alpha_to_one": one,
                                  "prediction_type": pred, "clip_sample": clip,
                                  "steps_offset": 1 if spacing == "leading" else 0}
                        sch = DDIMInverseScheduler.from_config(copy.deepcopy(config))
                        sch.set_timesteps(n)
                        ts = [int(v) for v in sch.timesteps.tolist() if int(v) >= 0]
                        for t in dict.fromkeys((ts[0], ts[len(ts) // 2], ts[-1])):
                            model = "m1" if clip else "m0"
                            out = sch.step(inputs[model], t, inputs["s0"])
                            cases.append({
                                "name": f"inv_{spacing}_{'one' if one else 'a0'}_{pred}_"
                                        f"{'clip' if clip else 'noclip'}_n{n}_t{t}",
                                "config": config, "num_inference_steps": n, "timestep": t,
                                "model_output": model, "sample": "s0",
                                "prev_sample": tensor_json(out.prev_sample),
                                "pred_original_sample": tensor_json(out.pred_original_sample),
                            })
    # Whole inversion loops: x is lifted from the data level to the noisiest timestep.
    g = torch.Generator().manual_seed(4243)
    inputs["x_init"] = torch.randn((1, 4, 8, 8), generator=g, dtype=torch.float32)
    inputs["base"] = torch.randn((1, 4, 8, 8), generator=g, dtype=torch.float32)
    loops = []
    for name, config in (
        ("leading_eps", {"clip_sample": False}),
        ("trailing_v_a0", {"timestep_spacing": "trailing", "prediction_type": "v_prediction",
                           "set_alpha_to_one": False, "clip_sample": False}),
        ("sd15", dict(SCALED_LINEAR, clip_sample=False, set_alpha_to_one=False, steps_offset=1)),
    ):
        sch = DDIMInverseScheduler.from_config(copy.deepcopy(config))
        sch.set_timesteps(50)
        T = sch.config.num_train_timesteps
        x = inputs["x_init"].clone()
        ts = [int(v) for v in sch.timesteps.tolist()]
        for t in ts:
            x = sch.step(stand_in_model(x, t, T, inputs["base"]), t, x).prev_sample
        loops.append({"name": f"inv_loop_{name}", "config": config, "num_inference_steps": 50,
                      "timesteps": ts, "initial": "x_init", "base": "base",
                      "final": tensor_json(x)})
    return {k: tensor_json(v) for k, v in inputs.items()}, cases, loops


def gen_parallel():
    """`batch_step_no_noise` with one timestep per batch item, including an item past the last
    step (where the reference takes alpha_bar_prev = 1 whatever set_alpha_to_one says)."""
    from diffusers import DDIMParallelScheduler

    g = torch.Generator().manual_seed(2718)
    shape = (4, 3, 4, 4)
    inputs = {
        "m0": torch.randn(shape, generator=g, dtype=torch.float32),
        "s0": torch.randn(shape, generator=g, dtype=torch.float32),
        "m1": torch.randn(shape, generator=g, dtype=torch.float32) * 3,
    }
    cases = []
    modes = {
        "noclip": {"clip_sample": False},
        "clip": {"clip_sample": True},
        "thresh": {"clip_sample": False, "thresholding": True, "dynamic_thresholding_ratio": 0.9,
                   "sample_max_value": 2.0},
    }
    for pred in ("epsilon", "sample", "v_prediction"):
        for mode, mconf in modes.items():
            for one in (True, False):
                for ucmo in (False, True):
                    config = dict({"prediction_type": pred, "set_alpha_to_one": one}, **mconf)
                    sch = DDIMParallelScheduler.from_config(copy.deepcopy(config))
                    sch.set_timesteps(50)
                    timesteps = [980, 500, 20, 0]
                    model = "m0" if mode == "noclip" else "m1"
                    out = sch.batch_step_no_noise(inputs[model], torch.tensor(timesteps),
                                                  inputs["s0"], use_clipped_model_output=ucmo)
                    cases.append({
                        "name": f"par_{pred}_{mode}_{'one' if one else 'a0'}_"
                                f"{'ucmo' if ucmo else 'raw'}",
                        "config": config, "num_inference_steps": 50, "timesteps": timesteps,
                        "use_clipped_model_output": ucmo, "model_output": model, "sample": "s0",
                        "prev_sample": tensor_json(out),
                    })
    return {k: tensor_json(v) for k, v in inputs.items()}, cases


# --------------------------------------------------------------------------
# 7. configs written by the crate, loaded back by diffusers

CONFIG_KEYS = (
    "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
    "clip_sample", "set_alpha_to_one", "steps_offset", "prediction_type", "thresholding",
    "dynamic_thresholding_ratio", "clip_sample_range", "sample_max_value", "timestep_spacing",
    "rescale_betas_zero_snr",
)


def gen_reference_loads():
    """Load each `tests/fixtures/written/*.json` (written by the crate's `to_json_string`) the
    way a pipeline does, from a model folder's `scheduler/` subfolder, and record what diffusers
    read: the class the file names and the value of every DDIM key."""
    cases = []
    for path in sorted(WRITTEN_DIR.glob("*.json")):
        with tempfile.TemporaryDirectory() as model:
            folder = Path(model) / "scheduler"
            folder.mkdir()
            shutil.copy(path, folder / "scheduler_config.json")
            class_name = DDIMScheduler.load_config(model, subfolder="scheduler")["_class_name"]
            scheduler = DDIMScheduler.from_pretrained(model, subfolder="scheduler")
        config = {}
        for key in CONFIG_KEYS:
            value = scheduler.config[key]
            config[key] = list(value) if isinstance(value, (list, tuple)) else value
        cases.append({"name": path.stem, "class": class_name, "config": config})
    return cases


def main():
    check_versions()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    real = load_real_configs()

    write_fixture("schedules.json", {"cases": gen_schedules(real)})

    cases, prints = gen_timesteps()
    write_fixture("timesteps.json", {"cases": cases, "fingerprints": prints,
                                     "quadratic": gen_quadratic()})

    inputs, cases, quirks, skipped = gen_steps(real)
    write_fixture("steps.json", {"inputs": inputs, "cases": cases, "quirks": quirks})
    for line in skipped:
        print(f"steps.json: skipped {line}")

    inputs, cases = gen_noising(real)
    write_fixture("noising.json", {"inputs": inputs, "cases": cases})

    inputs, cases = gen_loops(real)
    write_fixture("loops.json", {"inputs": inputs, "cases": cases})

    write_fixture("reference_loads.json", {"cases": gen_reference_loads()})

    inputs, cases, loops = gen_inverse()
    write_fixture("inverse.json", {"inputs": inputs, "cases": cases, "loops": loops})

    inputs, cases = gen_parallel()
    write_fixture("parallel.json", {"inputs": inputs, "cases": cases})

    for fname in ("schedules.json", "timesteps.json", "steps.json", "noising.json", "loops.json",
                  "reference_loads.json", "inverse.json", "parallel.json"):
        doc = json.loads((OUT_DIR / fname).read_text())
        n_err = sum(1 for c in doc["cases"] if "error" in c)
        extra = f", {len(doc['fingerprints'])} fingerprints" if "fingerprints" in doc else ""
        if "quirks" in doc:
            extra += f", {len(doc['quirks'])} quirks"
        print(f"{fname}: {len(doc['cases'])} cases ({n_err} with error){extra}")


if __name__ == "__main__":
    main()
