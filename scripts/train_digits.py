#!/usr/bin/env python3
"""Train the small diffusers UNet that the `ddim-digits` demonstration samples from.

What it does
  * loads scikit-learn's bundled copy of the 8x8 handwritten digits (1797 images, integer pixel
    values 0..16), holds out a seeded random 297 of them and trains on the other 1500;
  * trains a diffusers `UNet2DModel` (1 channel, 8x8, block widths 32/64/64, one ResNet layer per
    block, no attention anywhere, 8 normalisation groups: about 1.05M parameters) to predict the
    noise added by the DDPM forward process (1000 steps, linear betas 1e-4..0.02), with an MSE
    loss, Adam, a linear warm-up then cosine decay of the learning rate, batches of 128, for 1500
    iterations, and keeps an exponential moving average (EMA) of the weights;
  * saves the EMA network as a standard diffusers `DDIMPipeline` folder in `digits/model/`
    (`model_index.json`, `unet/` with config and safetensors weights, `scheduler/` with a
    `DDIMScheduler` config: linear betas 1e-4..0.02 over 1000 steps, epsilon prediction,
    `clip_sample` false);
  * exports the same network to ONNX, `digits/model/unet.onnx` (TorchScript exporter, opset 17,
    dynamic batch): input `sample` float32 (B, 1, 8, 8), input `timestep` int64 with no dimension
    (exactly what `DDIMPipeline` hands the UNet), output `noise_pred` float32 (B, 1, 8, 8); the
    file is checked with `onnx.checker` and, when the `onnx` package's reference evaluator is
    present, its output is compared with torch's on two batch sizes;
  * writes `digits/data/digits.json`: every image as 64 integers 0..16 (row-major 8x8), its label,
    and the indices of the training and held-out images, so that Rust code can compute metrics
    without scikit-learn.

Data and licence
  The images are the UCI Machine Learning Repository's "Optical Recognition of Handwritten Digits"
  data set (E. Alpaydin and C. Kaynak, 1998,
  https://archive.ics.uci.edu/ml/datasets/Optical+Recognition+of+Handwritten+Digits), its test
  part (1797 images), as bundled with scikit-learn as `sklearn.datasets.load_digits`. It is licensed under Creative Commons
  Attribution 4.0 International (CC BY 4.0, https://creativecommons.org/licenses/by/4.0/).
  `digits/data/digits.json` is a re-encoding of it (no other change) and carries the same licence.
  The trained weights are derived from it.

Produced with
    Python        3.11.7
    diffusers     0.42.1
    torch         2.15.0 (build "2.15.0+cu132", used on the CPU only, one thread)
    numpy         2.4.6
    scikit-learn  1.9.1
    onnx          1.23.2
  seed 20251111 for everything (the split, the initial weights, batches, timesteps and noise).
  The versions found at run time are printed and written to `digits/model/training.json`.

How to run (from the repository root; about 4 minutes on an idle CPU core judging by the time per
iteration, 7.5-9 minutes measured while Rust builds shared the machine):
    python -m venv .venv && . .venv/bin/activate
    pip install diffusers==0.42.1 torch numpy scikit-learn onnx
    python scripts/train_digits.py

The committed run: training loss 0.0758 (mean of the last 100 iterations), loss of the EMA network
on the held-out images 0.0800; a second run reproduced every file it writes byte for byte.

Training runs on the CPU with one thread and fixed seeds, so two runs on the same machine with the
same versions give the same weights bit for bit; another CPU or library version may differ in the
last bits, which then grow over the 1500 iterations into a different (equally good) network.
"""

import argparse
import copy
import json
import math
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import diffusers
import onnx
import sklearn
from diffusers import DDIMPipeline, DDIMScheduler, DDPMScheduler, UNet2DModel
from sklearn.datasets import load_digits

torch.set_num_threads(1)
diffusers.utils.logging.set_verbosity_error()
warnings.filterwarnings("ignore")

ROOT = Path(__file__).resolve().parent.parent
SEED = 20251111
HELD_OUT = 297
ITERATIONS = 1500
BATCH = 128
PEAK_LR = 2e-3
WARMUP = 100
EMA_DECAY = 0.995
TRAIN_STEPS = 1000
BETA_START, BETA_END = 1e-4, 0.02
ONNX_OPSET = 17

EXPECTED = {"python": "3.11.7", "diffusers": "0.42.1", "torch": "2.15.0", "numpy": "2.4.6",
            "scikit-learn": "1.9.1", "onnx": "1.23.2"}

LICENSE_NOTE = (
    "UCI Machine Learning Repository, 'Optical Recognition of Handwritten Digits' "
    "(E. Alpaydin and C. Kaynak, 1998, "
    "https://archive.ics.uci.edu/ml/datasets/Optical+Recognition+of+Handwritten+Digits), "
    "test part, as bundled with scikit-learn (sklearn.datasets.load_digits). Licensed under CC BY 4.0 "
    "(https://creativecommons.org/licenses/by/4.0/). Re-encoded without change."
)


def versions():
    return {
        "python": platform.python_version(),
        "diffusers": diffusers.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "onnx": onnx.__version__,
    }


def check_versions():
    for key, have in versions().items():
        if have.split("+")[0] != EXPECTED[key]:
            print(f"warning: {key} is {have}; the committed model was made with {EXPECTED[key]}",
                  file=sys.stderr)


def build_unet():
    return UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "UpBlock2D"),
        add_attention=False,
        norm_num_groups=8,
    )


def ddim_scheduler():
    return DDIMScheduler(
        num_train_timesteps=TRAIN_STEPS,
        beta_start=BETA_START,
        beta_end=BETA_END,
        beta_schedule="linear",
        prediction_type="epsilon",
        clip_sample=False,
    )


def learning_rate(iteration, total):
    """Linear warm-up over WARMUP iterations, then half a cosine down to zero."""
    if iteration < WARMUP:
        return PEAK_LR * (iteration + 1) / WARMUP
    progress = (iteration - WARMUP) / max(1, total - WARMUP)
    return PEAK_LR * 0.5 * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def ema_update(ema, model, iteration):
    # A short-memory average early on (so the first random weights fade quickly), EMA_DECAY later.
    decay = min(EMA_DECAY, (1 + iteration) / (10 + iteration))
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def split_indices(n):
    perm = np.random.default_rng(SEED).permutation(n)
    held_out = np.sort(perm[:HELD_OUT])
    train = np.sort(perm[HELD_OUT:])
    return train, held_out


def write_digits(path, pixels, labels, train, held_out):
    """One JSON document, one image per line: {"pixels": [64 ints 0..16], "label": int}."""
    head = {
        "description": "scikit-learn's 8x8 handwritten digits: pixel values 0..16, row-major 8x8 "
                       "per image; 'train' and 'held_out' are image indices (0-based) of the "
                       "split used by scripts/train_digits.py",
        "license": "CC BY 4.0",
        "attribution": LICENSE_NOTE,
        "generator": "scripts/train_digits.py",
        "versions": versions(),
        "seed": SEED,
        "count": int(pixels.shape[0]),
        "height": 8,
        "width": 8,
        "max_value": 16,
        "train": [int(i) for i in train],
        "held_out": [int(i) for i in held_out],
    }
    dump = lambda v: json.dumps(v, separators=(",", ":"))
    lines = [json.dumps(k) + ":" + dump(v) for k, v in head.items()]
    images = ",\n".join(
        dump({"label": int(lab), "pixels": [int(v) for v in img]})
        for img, lab in zip(pixels, labels)
    )
    lines.append('"images":[\n' + images + "\n]")
    text = "{\n" + ",\n".join(lines) + "\n}\n"
    json.loads(text)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


class NoisePrediction(torch.nn.Module):
    """The UNet with a plain tensor output, for the ONNX export."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep):
        return self.unet(sample, timestep).sample


def export_onnx(unet, path):
    wrapper = NoisePrediction(unet).eval()
    sample = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(SEED))
    timestep = torch.tensor(500, dtype=torch.int64)
    torch.onnx.export(
        wrapper,
        (sample, timestep),
        str(path),
        dynamo=False,
        opset_version=ONNX_OPSET,
        input_names=["sample", "timestep"],
        output_names=["noise_pred"],
        dynamic_axes={"sample": {0: "batch"}, "noise_pred": {0: "batch"}},
    )
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    print(f"onnx: {path.name} passes onnx.checker "
          f"({path.stat().st_size} bytes, opset {ONNX_OPSET})")
    try:
        from onnx.reference import ReferenceEvaluator
    except ImportError:
        print("onnx: no reference evaluator in this onnx version; output comparison skipped")
        return
    evaluator = ReferenceEvaluator(model)
    g = torch.Generator().manual_seed(SEED + 1)
    worst = 0.0
    for batch, t in ((1, 999), (3, 0), (2, 500)):
        x = torch.randn(batch, 1, 8, 8, generator=g)
        tt = torch.tensor(t, dtype=torch.int64)
        with torch.no_grad():
            want = wrapper(x, tt).numpy()
        (got,) = evaluator.run(None, {"sample": x.numpy(), "timestep": tt.numpy()})
        assert got.shape == want.shape, (got.shape, want.shape)
        worst = max(worst, float(np.abs(got - want).max()))
    print(f"onnx: reference evaluator vs torch, batch 1/2/3: max |diff| = {worst:.3g}")
    assert worst < 1e-3, worst


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=ITERATIONS,
                        help="training iterations (the committed model: %(default)s)")
    parser.add_argument("--out", type=Path, default=ROOT / "digits",
                        help="package folder receiving model/ and data/ (default: digits/)")
    args = parser.parse_args()
    check_versions()
    print("versions:", versions())
    start = time.time()

    digits = load_digits()
    pixels = digits.images.reshape(len(digits.images), 64).astype(np.int64)
    assert pixels.shape == (1797, 64) and pixels.min() == 0 and pixels.max() == 16
    assert np.array_equal(pixels, digits.images.reshape(-1, 64))
    labels = digits.target.astype(np.int64)
    train, held_out = split_indices(len(pixels))
    write_digits(args.out / "data" / "digits.json", pixels, labels, train, held_out)

    data = torch.from_numpy(pixels[train].astype(np.float32) / 8.0 - 1.0).reshape(-1, 1, 8, 8)

    torch.manual_seed(SEED)
    unet = build_unet()
    ema = copy.deepcopy(unet).requires_grad_(False)
    n_params = sum(p.numel() for p in unet.parameters())
    print(f"UNet2DModel: {n_params} parameters; {len(train)} training images, "
          f"{len(held_out)} held out")

    noising = DDPMScheduler(num_train_timesteps=TRAIN_STEPS, beta_start=BETA_START,
                            beta_end=BETA_END, beta_schedule="linear")
    optimizer = torch.optim.Adam(unet.parameters(), lr=PEAK_LR)
    g = torch.Generator().manual_seed(SEED)
    order = torch.randperm(len(data), generator=g)
    cursor = 0
    running, losses = None, []
    unet.train()
    for it in range(args.iterations):
        if cursor + BATCH > len(order):
            order = torch.randperm(len(data), generator=g)
            cursor = 0
        x0 = data[order[cursor:cursor + BATCH]]
        cursor += BATCH
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, TRAIN_STEPS, (x0.shape[0],), generator=g)
        xt = noising.add_noise(x0, noise, t)
        loss = torch.nn.functional.mse_loss(unet(xt, t).sample, noise)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(it, args.iterations)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        ema_update(ema, unet, it)
        value = float(loss)
        losses.append(value)
        running = value if running is None else 0.98 * running + 0.02 * value
        if (it + 1) % 100 == 0 or it == 0:
            print(f"iteration {it + 1:5d}  loss {value:.4f}  smoothed {running:.4f}  "
                  f"lr {learning_rate(it, args.iterations):.2e}  {time.time() - start:.0f}s",
                  flush=True)
    train_time = time.time() - start

    # Loss of the EMA network on the held-out images, with seeded noise and timesteps.
    ema.eval()
    with torch.no_grad():
        gh = torch.Generator().manual_seed(SEED + 2)
        x0 = torch.from_numpy(pixels[held_out].astype(np.float32) / 8.0 - 1.0).reshape(-1, 1, 8, 8)
        held = []
        for _ in range(4):
            noise = torch.randn(x0.shape, generator=gh)
            t = torch.randint(0, TRAIN_STEPS, (x0.shape[0],), generator=gh)
            held.append(float(torch.nn.functional.mse_loss(
                ema(noising.add_noise(x0, noise, t), t).sample, noise)))
    held_loss = float(np.mean(held))
    last = float(np.mean(losses[-100:]))
    print(f"training loss (mean of the last 100 iterations): {last:.4f}; "
          f"EMA network on the held-out images: {held_loss:.4f}")

    model_dir = args.out / "model"
    pipe = DDIMPipeline(unet=ema, scheduler=ddim_scheduler())
    pipe.save_pretrained(str(model_dir), safe_serialization=True)
    export_onnx(ema, model_dir / "unet.onnx")
    record = {
        "generator": "scripts/train_digits.py",
        "versions": versions(),
        "seed": SEED,
        "parameters": n_params,
        "iterations": args.iterations,
        "batch": BATCH,
        "peak_learning_rate": PEAK_LR,
        "warmup_iterations": WARMUP,
        "ema_decay": EMA_DECAY,
        "train_images": len(train),
        "held_out_images": len(held_out),
        "final_training_loss_mean_last_100": round(last, 6),
        "held_out_loss_ema": round(held_loss, 6),
        "onnx": {"file": "unet.onnx", "opset": ONNX_OPSET, "exporter": "torchscript",
                 "inputs": {"sample": "float32 [batch, 1, 8, 8]", "timestep": "int64 []"},
                 "outputs": {"noise_pred": "float32 [batch, 1, 8, 8]"}},
        "data": "../data/digits.json",
        "data_license": LICENSE_NOTE,
    }
    (model_dir / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    elapsed = time.time() - start
    print(f"training took {train_time:.0f}s; everything {elapsed:.0f}s")


if __name__ == "__main__":
    main()
