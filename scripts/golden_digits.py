#!/usr/bin/env python3
"""Reference outputs of the trained digits model, for the `ddim-digits` package's tests.

Everything here is computed by diffusers' own code on the committed model folder `digits/model/`
(written by `scripts/train_digits.py`); nothing re-implements the sampler.

  * `digits/tests/fixtures/pipeline.json`: `DDIMPipeline.from_pretrained("digits/model")` called
    with `generator=torch.Generator().manual_seed(seed)` for seeds 0, 1, 42 and 1234, a batch of 4
    images per call, 10 and 50 inference steps, eta 0 and 1 (16 calls). The pipeline draws the
    initial noise, shape (4, 1, 8, 8), from the generator and, when eta > 0, one more tensor of
    that shape per step from the same generator. For each call the file holds the timesteps, the
    initial noise (what the generator drew first), the final latents (the last `prev_sample`, in
    [-1, 1] roughly, before the pipeline maps them to images) and the pipeline's image output
    (`output_type="np"`: `(latents / 2 + 0.5).clamp(0, 1)` laid out NHWC).
  * `digits/tests/fixtures/unet.json`: the torch UNet's noise prediction (`pipe.unet(sample,
    timestep).sample`, the timestep a 0-d int64 tensor as the pipeline passes it) for seeded
    normal samples of batch 2 at timesteps 999, 500 and 0, of batch 1 at timestep 250 and of
    batch 3 at timestep 37, so that an ONNX engine can be checked against torch on the network
    alone.

Encoding (the same as `scripts/generate_golden.py` uses for the crate's own fixtures):
  * tensor -> {"dtype": "f32", "shape": [...], "hex": "..."}, "hex" being the lowercase hex of the
    little-endian bytes of the C-contiguous float32 data (8 hex digits per value);
  * each file records "versions", the SHA-256 of the model files it was computed from
    ("model_files"), and the generator script.

Produced with
    Python     3.11.7
    diffusers  0.42.1
    torch      2.15.0 (build "2.15.0+cu132", CPU only, one thread)
    numpy      2.4.6

How to run (from the repository root, after `scripts/train_digits.py` or on the committed model;
a few seconds):
    python -m venv .venv && . .venv/bin/activate
    pip install diffusers==0.42.1 torch numpy
    python scripts/golden_digits.py

All randomness comes from seeded CPU generators: a re-run with the same versions gives identical
files.
"""

import hashlib
import json
import platform
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

import diffusers
from diffusers import DDIMPipeline

torch.set_num_threads(1)
diffusers.utils.logging.set_verbosity_error()
diffusers.utils.logging.disable_progress_bar()
warnings.filterwarnings("ignore")

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "digits" / "model"
OUT_DIR = ROOT / "digits" / "tests" / "fixtures"
GENERATOR_NAME = "scripts/golden_digits.py"

SEEDS = (0, 1, 42, 1234)
BATCH = 4
STEPS = (10, 50)
ETAS = (0.0, 1.0)
UNET_SEED = 8088
# (input name, batch, timesteps it is evaluated at)
UNET_INPUTS = (("x2", 2, (999, 500, 0)), ("x1", 1, (250,)), ("x3", 3, (37,)))

EXPECTED = {"python": "3.11.7", "diffusers": "0.42.1", "torch": "2.15.0", "numpy": "2.4.6"}


def versions():
    return {
        "python": platform.python_version(),
        "diffusers": diffusers.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
    }


def check_versions():
    for key, have in versions().items():
        if have.split("+")[0] != EXPECTED[key]:
            print(f"warning: {key} is {have}, the fixtures were produced with {EXPECTED[key]}",
                  file=sys.stderr)


def model_files():
    names = ("unet/diffusion_pytorch_model.safetensors", "unet.onnx")
    return {name: hashlib.sha256((MODEL / name).read_bytes()).hexdigest() for name in names}


def tensor_json(x):
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().contiguous().numpy()
    x = np.ascontiguousarray(x)
    assert x.dtype == np.float32, x.dtype
    return {"dtype": "f32", "shape": [int(d) for d in x.shape], "hex": x.astype("<f4").tobytes().hex()}


def write_fixture(filename, payload):
    """One JSON document; each element of a top-level list or dict on its own line."""
    doc = {"generator": GENERATOR_NAME, "versions": versions(), "model_files": model_files()}
    doc.update(payload)
    dump = lambda v: json.dumps(v, separators=(",", ":"), allow_nan=False)
    parts = []
    for key, value in doc.items():
        head = json.dumps(key) + ":"
        if isinstance(value, list) and value:
            body = "[\n" + ",\n".join(dump(v) for v in value) + "\n]"
        elif isinstance(value, dict) and value and key not in ("versions", "model_files"):
            body = "{\n" + ",\n".join(json.dumps(k) + ":" + dump(v) for k, v in value.items()) + "\n}"
        else:
            body = dump(value)
        parts.append(head + body)
    text = "{\n" + ",\n".join(parts) + "\n}\n"
    json.loads(text)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / filename).write_text(text)
    print(f"{filename}: {len(text)} bytes")


class StepRecorder:
    """Wraps the pipeline scheduler's `step` to keep what it was given and what it returned;
    the scheduler still does all the work."""

    def __init__(self, scheduler):
        self.inner = scheduler.step
        self.calls = []

    def __call__(self, model_output, timestep, sample, *args, **kwargs):
        out = self.inner(model_output, timestep, sample, *args, **kwargs)
        self.calls.append((int(timestep), sample.clone(), out.prev_sample.clone()))
        return out


def gen_pipeline(pipe):
    cases = []
    for seed in SEEDS:
        for steps in STEPS:
            for eta in ETAS:
                recorder = StepRecorder(pipe.scheduler)
                pipe.scheduler.step = recorder
                try:
                    with torch.no_grad():
                        image = pipe(batch_size=BATCH, generator=torch.Generator().manual_seed(seed),
                                     eta=eta, num_inference_steps=steps, output_type="np").images
                finally:
                    del pipe.scheduler.step
                timesteps = [t for t, _, _ in recorder.calls]
                assert timesteps == [int(t) for t in pipe.scheduler.timesteps], timesteps
                initial = recorder.calls[0][1]
                latents = recorder.calls[-1][2]
                # The image is the pipeline's own output; check it is the latents mapped as stated.
                mapped = (latents / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
                assert np.array_equal(mapped, image), "image is not clamp(latents / 2 + 0.5)"
                cases.append({
                    "name": f"seed{seed}_n{steps}_eta{int(eta)}",
                    "seed": seed, "batch": BATCH, "num_inference_steps": steps, "eta": eta,
                    "timesteps": timesteps,
                    "initial_noise": tensor_json(initial),
                    "latents": tensor_json(latents),
                    "image": tensor_json(image),
                })
                print(f"  {cases[-1]['name']}: image mean {float(image.mean()):.4f}")
    return cases


def gen_unet(pipe):
    g = torch.Generator().manual_seed(UNET_SEED)
    inputs, cases = {}, []
    for name, batch, timesteps in UNET_INPUTS:
        sample = torch.randn((batch, 1, 8, 8), generator=g, dtype=torch.float32)
        inputs[name] = tensor_json(sample)
        for t in timesteps:
            with torch.no_grad():
                pred = pipe.unet(sample, torch.tensor(t, dtype=torch.int64)).sample
            cases.append({"name": f"{name}_t{t}", "sample": name, "timestep": t,
                          "noise_pred": tensor_json(pred)})
    return inputs, cases


def main():
    check_versions()
    pipe = DDIMPipeline.from_pretrained(str(MODEL))
    pipe.set_progress_bar_config(disable=True)
    pipe.unet.eval()
    print("pipeline.json:")
    write_fixture("pipeline.json", {
        "description": "DDIMPipeline(batch_size, generator=torch.Generator().manual_seed(seed), "
                       "eta, num_inference_steps, output_type='np') on digits/model; "
                       "initial_noise and latents are NCHW, image is NHWC in [0, 1]",
        "cases": gen_pipeline(pipe),
    })
    inputs, cases = gen_unet(pipe)
    write_fixture("unet.json", {
        "description": "pipe.unet(inputs[sample], torch.tensor(timestep)).sample, NCHW",
        "inputs": inputs,
        "cases": cases,
    })


if __name__ == "__main__":
    main()
