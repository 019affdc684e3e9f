#!/usr/bin/env python3
"""Produce `tests/fixtures/golden/pipeline.json`: what the diffusers pipelines do around
`DDIMScheduler` when they choose which timesteps run and when they inpaint.

Three pieces of pipeline arithmetic are covered:

  1. img2img `strength`: `StableDiffusionImg2ImgPipeline.get_timesteps` after
     `set_timesteps(n)`, over a grid of strengths (exact bits given), n and spacings;
  2. the SDXL "ensemble of experts" cut-offs: the `denoising_end` block of
     `StableDiffusionXLPipeline.__call__` and `StableDiffusionXLImg2ImgPipeline.get_timesteps`
     with `denoising_start`, plus how both pipelines treat values outside (0, 1) and the
     img2img pipeline's check of `denoising_start` against `denoising_end`;
  3. inpainting with a 4-channel UNet (`StableDiffusionInpaintPipeline.__call__`): after every
     scheduler step the known region is put back, noised to the next timestep. Whole runs are
     recorded, each intermediate included.

Nothing here re-implements that arithmetic. The pipeline modules import `transformers`, which
the install below does not bring, so the functions are taken out of the module files with
`ast` and compiled on their own: `get_timesteps`, `retrieve_timesteps`, `check_inputs`,
`prepare_latents` are called as they are, with a small stand-in `self` whose `scheduler` is a
real `DDIMScheduler`; the blocks that live inline in `__call__` (the `denoising_end` cut, the
start/end check, the inpainting blend, `denoising_value_valid`) are located in the parsed
`__call__`, asserted to be the code written out in this file (`EXPECTED_*`; a different
diffusers release fails loudly instead of silently producing other numbers), wrapped into a
function and executed.

Produced with:
    diffusers 0.42.1
    torch     2.15.0 (build string "2.15.0+cu132", used on the CPU only)
    numpy     2.4.6
    Python    3.11.7

How to run (from the repository root):
    python -m venv .venv && . .venv/bin/activate
    pip install diffusers==0.42.1 torch numpy
    python scripts/golden_pipeline.py

All random inputs come from seeded CPU `torch.Generator`s, so running the script twice gives
a byte-identical file. The encoding is that of `scripts/generate_golden.py` (whose helpers are
imported): tensors as {"dtype", "shape", "hex"} with the hex of the little-endian C-ordered
bytes, the versions used under "versions", a reference call that raised as
"error": "<ExceptionType>: <message>". Floats that the Rust side must read exactly (strengths,
fractions) are also given as "hex" (Python's `float.hex()`) and "bits" (the 16 hex digits of
the IEEE-754 double), because a JSON number cannot carry NaN or infinities.

The stand-in noise-prediction model of the inpainting runs is `stand_in_model` of
`generate_golden.py`, evaluated in float32 by torch:
    k = float32(0.6 + ((0.3 * t) / T))   (t, T ints; the products, quotient and sum in double)
    c = float32(0.05)
    model_output = float32(float32(latents * k) - float32(c * base))
each operation rounded to float32 on its own (no fused multiply-add).

Layout of the file (top-level keys):
  "configs"       the three scheduler configurations, by spacing name;
  "schedules"     "<spacing>_n<n>" -> the raw `set_timesteps(n)` list (a trailing -1 kept);
  "columns"       the column names of the "results" rows below;
  "strengths"     [{label, value, hex, bits, check_inputs}]; rows refer to them by index;
  "img2img"       one group per (spacing, n): {spacing, num_inference_steps, schedule,
                  results: [[strength, init_timestep, t_start, steps, len]], errors: [[strength,
                  message]]}; the returned timesteps are schedule[t_start:] (len entries);
  "img2img_strength_zero"  add_noise with the empty timestep tensor strength 0 leaves;
  "fractions"     like "strengths" plus "type", "times_T" (value * T) and "T_minus" (T - that);
  "sdxl_denoising_end"     groups with results [[fraction, cutoff, steps, len]]: the first
                  len entries of the schedule are kept;
  "sdxl_denoising_start"   groups with results [[fraction, cutoff, t_start, steps, len]]: the
                  returned timesteps are schedule[t_start:];
  "outside_values", "sdxl_outside"  values that are not a float in (0, 1), and what each
                  pipeline does with them;
  "sdxl_img2img_start_end" both values given to the SDXL img2img pipeline;
  "inpaint_inputs", "inpaint"  tensors by name, and whole inpainting runs ("all_timesteps" is
                  the whole schedule, "timesteps" the part that runs, "blended" the latents
                  after each step, "final" the last of them);
  "notes"         what the reference does, in words.
"""

import ast
import copy
import importlib.util
import inspect
import math
import struct
import sys
import textwrap
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generate_golden as gg  # noqa: E402  (only helpers; it does nothing on import)

from diffusers import DDIMScheduler  # noqa: E402
from diffusers.utils.torch_utils import randn_tensor  # noqa: E402

torch.set_num_threads(1)

FILENAME = "pipeline.json"
GENERATOR_NAME = "scripts/golden_pipeline.py"

SD_IMG2IMG = "pipelines/stable_diffusion/pipeline_stable_diffusion_img2img.py"
SD_INPAINT = "pipelines/stable_diffusion/pipeline_stable_diffusion_inpaint.py"
SDXL = "pipelines/stable_diffusion_xl/pipeline_stable_diffusion_xl.py"
SDXL_IMG2IMG = "pipelines/stable_diffusion_xl/pipeline_stable_diffusion_xl_img2img.py"

# Stable Diffusion's scheduler configuration (v1.x / XL), with the spacing varied. The betas do
# not change any timestep, but they do change the inpainting runs.
SD_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "set_alpha_to_one": False,
    "clip_sample": False,
    "steps_offset": 1,
}
SPACINGS = ("leading", "trailing", "linspace")
CONFIGS = {s: dict(SD_CONFIG, timestep_spacing=s) for s in SPACINGS}

# 61 is not in the brief's lists; it is there because trailing spacing with T = 1000 gives
# 62 timesteps ending in -1 for it (none of the other n do).
IMG2IMG_NS = (1, 2, 7, 10, 25, 50, 61, 999)
SDXL_NS = (1, 2, 7, 10, 25, 40, 50, 61, 999)

# Column names of the "results" rows (one row per strength or fraction; see `main`).
COLUMNS = {
    "img2img": ["strength", "init_timestep", "t_start", "steps", "len"],
    "sdxl_denoising_end": ["fraction", "cutoff", "steps", "len"],
    "sdxl_denoising_start": ["fraction", "cutoff", "t_start", "steps", "len"],
}

# --------------------------------------------------------------------------------------------
# The code the script executes, written out. Each is compared (as an AST, so comments and
# formatting aside) with what the installed diffusers has.

EXPECTED_GET_TIMESTEPS = """
def get_timesteps(self, num_inference_steps, strength, device):
    init_timestep = min(int(num_inference_steps * strength), num_inference_steps)

    t_start = max(num_inference_steps - init_timestep, 0)
    timesteps = self.scheduler.timesteps[t_start * self.scheduler.order :]
    if hasattr(self.scheduler, "set_begin_index"):
        self.scheduler.set_begin_index(t_start * self.scheduler.order)

    return timesteps, num_inference_steps - t_start
"""

EXPECTED_XL_GET_TIMESTEPS = """
def get_timesteps(self, num_inference_steps, strength, device, denoising_start=None):
    if denoising_start is None:
        init_timestep = min(int(num_inference_steps * strength), num_inference_steps)
        t_start = max(num_inference_steps - init_timestep, 0)

        timesteps = self.scheduler.timesteps[t_start * self.scheduler.order :]
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(t_start * self.scheduler.order)

        return timesteps, num_inference_steps - t_start

    else:
        discrete_timestep_cutoff = int(
            round(
                self.scheduler.config.num_train_timesteps
                - (denoising_start * self.scheduler.config.num_train_timesteps)
            )
        )

        num_inference_steps = (self.scheduler.timesteps < discrete_timestep_cutoff).sum().item()
        if self.scheduler.order == 2 and num_inference_steps % 2 == 0:
            num_inference_steps = num_inference_steps + 1

        t_start = len(self.scheduler.timesteps) - num_inference_steps
        timesteps = self.scheduler.timesteps[t_start:]
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(t_start)
        return timesteps, num_inference_steps
"""

EXPECTED_XL_DENOISING_END = """
if (
    self.denoising_end is not None
    and isinstance(self.denoising_end, float)
    and self.denoising_end > 0
    and self.denoising_end < 1
):
    discrete_timestep_cutoff = int(
        round(
            self.scheduler.config.num_train_timesteps
            - (self.denoising_end * self.scheduler.config.num_train_timesteps)
        )
    )
    num_inference_steps = len(list(filter(lambda ts: ts >= discrete_timestep_cutoff, timesteps)))
    timesteps = timesteps[:num_inference_steps]
"""

EXPECTED_XL_IMG2IMG_VALID = """
def denoising_value_valid(dnv):
    return isinstance(dnv, float) and 0 < dnv < 1
"""

EXPECTED_XL_IMG2IMG_GET_TIMESTEPS_CALL = """
timesteps, num_inference_steps = self.get_timesteps(
    num_inference_steps,
    strength,
    device,
    denoising_start=self.denoising_start if denoising_value_valid(self.denoising_start) else None,
)
"""

EXPECTED_XL_IMG2IMG_ADD_NOISE = "add_noise = True if self.denoising_start is None else False"

EXPECTED_XL_IMG2IMG_START_END = """
if (
    self.denoising_end is not None
    and self.denoising_start is not None
    and denoising_value_valid(self.denoising_end)
    and denoising_value_valid(self.denoising_start)
    and self.denoising_start >= self.denoising_end
):
    raise ValueError(
        f"`denoising_start`: {self.denoising_start} cannot be larger than or equal to `denoising_end`: "
        + f" {self.denoising_end} when using type float."
    )
elif self.denoising_end is not None and denoising_value_valid(self.denoising_end):
    discrete_timestep_cutoff = int(
        round(
            self.scheduler.config.num_train_timesteps
            - (self.denoising_end * self.scheduler.config.num_train_timesteps)
        )
    )
    num_inference_steps = len(list(filter(lambda ts: ts >= discrete_timestep_cutoff, timesteps)))
    timesteps = timesteps[:num_inference_steps]
"""

EXPECTED_INPAINT_STEP = (
    "latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]"
)

EXPECTED_INPAINT_BLEND = """
if num_channels_unet == 4:
    init_latents_proper = image_latents
    if self.do_classifier_free_guidance:
        init_mask, _ = mask.chunk(2)
    else:
        init_mask = mask

    if i < len(timesteps) - 1:
        noise_timestep = timesteps[i + 1]
        init_latents_proper = self.scheduler.add_noise(
            init_latents_proper, noise, torch.tensor([noise_timestep])
        )

    latents = (1 - init_mask) * init_latents_proper + init_mask * latents
"""

EXPECTED_INPAINT_LINES = [
    "latent_timestep = timesteps[:1].repeat(batch_size * num_images_per_prompt)",
    "is_strength_max = strength == 1.0",
    "return_image_latents = num_channels_unet == 4",
]

EXPECTED_INPAINT_PREPARE = [
    "latents = noise if is_strength_max else self.scheduler.add_noise(image_latents, noise, timestep)",
    "latents = latents * self.scheduler.init_noise_sigma if is_strength_max else latents",
]


# --------------------------------------------------------------------------------------------
# reading the pipeline modules


def diffusers_dir():
    return Path(importlib.util.find_spec("diffusers").submodule_search_locations[0])


_PARSED = {}


def parse_module(relative):
    if relative not in _PARSED:
        path = diffusers_dir() / relative
        _PARSED[relative] = ast.parse(path.read_text(), filename=str(path))
    return _PARSED[relative]


def find_function(relative, name, cls=None):
    """The `def name` at the top of a module, or inside `class cls`."""
    scope = parse_module(relative).body
    if cls is not None:
        scope = next(n for n in scope if isinstance(n, ast.ClassDef) and n.name == cls).body
    for node in scope:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    raise LookupError(f"no {cls + '.' if cls else ''}{name} in {relative}")


def without_docstring(fn):
    body = fn.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    return body


def same_code(node, expected_text):
    """Whether an AST node is the expected code (docstrings, comments and layout aside)."""
    want = ast.parse(textwrap.dedent(expected_text).strip()).body[0]
    if type(node) is not type(want):
        return False
    if isinstance(node, ast.FunctionDef):
        return (ast.dump(node.args) == ast.dump(want.args)
                and [ast.dump(s) for s in without_docstring(node)]
                == [ast.dump(s) for s in without_docstring(want)])
    return ast.dump(node) == ast.dump(want)


def assert_function(relative, name, cls, expected_text):
    node = find_function(relative, name, cls)
    assert same_code(node, expected_text), f"{cls}.{name} in {relative} is not the expected code"
    return node


def find_statement(fn_node, expected_text):
    """The one statement anywhere inside `fn_node` that is the expected code, and the list of
    statements it belongs to (its block)."""
    hits = []
    for parent in ast.walk(fn_node):
        for field in ("body", "orelse", "finalbody"):
            block = getattr(parent, field, None)
            if isinstance(block, list):
                for idx, stmt in enumerate(block):
                    if isinstance(stmt, ast.stmt) and same_code(stmt, expected_text):
                        hits.append((stmt, block, idx))
    assert len(hits) == 1, f"expected one match in {fn_node.name}, found {len(hits)}:\n{expected_text}"
    return hits[0]


def module_globals():
    return {"torch": torch, "inspect": inspect, "randn_tensor": randn_tensor, "__builtins__": __builtins__}


def compile_function(fn_node, relative):
    """Compile one `def` taken out of a module file, decorators dropped."""
    fn_node = copy.copy(fn_node)
    fn_node.decorator_list = []
    module = ast.fix_missing_locations(ast.Module(body=[fn_node], type_ignores=[]))
    namespace = module_globals()
    exec(compile(module, str(diffusers_dir() / relative), "exec"), namespace)
    return namespace[fn_node.name]


def compile_block(statements, params, relative):
    """A function of `params` that runs the given statements (taken from a pipeline's
    `__call__`) and returns its local variables."""
    wrapper = ast.parse(f"def _block({', '.join(params)}):\n    return locals()\n").body[0]
    wrapper.body = list(statements) + wrapper.body
    module = ast.fix_missing_locations(ast.Module(body=[wrapper], type_ignores=[]))
    namespace = module_globals()
    exec(compile(module, str(diffusers_dir() / relative), "exec"), namespace)
    return namespace["_block"]


def call_with_locals(fn, *args, **kwargs):
    """Call `fn` and also return its local variables as they were when it returned."""
    captured = {}
    code = fn.__code__

    def profiler(frame, event, arg):
        if event == "return" and frame.f_code is code:
            captured.update(frame.f_locals)

    previous = sys.getprofile()
    sys.setprofile(profiler)
    try:
        result = fn(*args, **kwargs)
    finally:
        sys.setprofile(previous)
    return result, captured


class StandIn:
    """The pipeline's `self`, with only what the extracted code reads."""

    def __init__(self, scheduler, **attributes):
        self.scheduler = scheduler
        self.__dict__.update(attributes)


# --------------------------------------------------------------------------------------------
# the extracted functions

def load_reference():
    ref = {}
    img2img_gt = assert_function(SD_IMG2IMG, "get_timesteps", "StableDiffusionImg2ImgPipeline",
                                 EXPECTED_GET_TIMESTEPS)
    inpaint_gt = assert_function(SD_INPAINT, "get_timesteps", "StableDiffusionInpaintPipeline",
                                 EXPECTED_GET_TIMESTEPS)
    ref["get_timesteps"] = compile_function(img2img_gt, SD_IMG2IMG)
    ref["inpaint_get_timesteps"] = compile_function(inpaint_gt, SD_INPAINT)
    ref["retrieve_timesteps"] = compile_function(find_function(SD_IMG2IMG, "retrieve_timesteps"),
                                                 SD_IMG2IMG)
    ref["check_inputs"] = compile_function(
        find_function(SD_IMG2IMG, "check_inputs", "StableDiffusionImg2ImgPipeline"), SD_IMG2IMG)

    xl_gt = assert_function(SDXL_IMG2IMG, "get_timesteps", "StableDiffusionXLImg2ImgPipeline",
                            EXPECTED_XL_GET_TIMESTEPS)
    ref["xl_get_timesteps"] = compile_function(xl_gt, SDXL_IMG2IMG)

    xl_call = find_function(SDXL, "__call__", "StableDiffusionXLPipeline")
    stmt, _, _ = find_statement(xl_call, EXPECTED_XL_DENOISING_END)
    ref["xl_denoising_end"] = compile_block([stmt], ["self", "timesteps", "num_inference_steps"],
                                            SDXL)

    xl_i2i_call = find_function(SDXL_IMG2IMG, "__call__", "StableDiffusionXLImg2ImgPipeline")
    valid_node, _, _ = find_statement(xl_i2i_call, EXPECTED_XL_IMG2IMG_VALID)
    ref["denoising_value_valid"] = compile_function(valid_node, SDXL_IMG2IMG)
    find_statement(xl_i2i_call, EXPECTED_XL_IMG2IMG_GET_TIMESTEPS_CALL)
    add_noise_node, _, _ = find_statement(xl_i2i_call, EXPECTED_XL_IMG2IMG_ADD_NOISE)
    ref["xl_add_noise_flag"] = compile_block([add_noise_node], ["self"], SDXL_IMG2IMG)
    start_end, _, _ = find_statement(xl_i2i_call, EXPECTED_XL_IMG2IMG_START_END)
    # The block calls the nested `denoising_value_valid`; hand it in as a parameter.
    ref["xl_img2img_start_end"] = compile_block(
        [start_end], ["self", "timesteps", "num_inference_steps", "denoising_value_valid"],
        SDXL_IMG2IMG)

    inpaint_call = find_function(SD_INPAINT, "__call__", "StableDiffusionInpaintPipeline")
    blend, block, idx = find_statement(inpaint_call, EXPECTED_INPAINT_BLEND)
    assert idx > 0 and same_code(block[idx - 1], EXPECTED_INPAINT_STEP), \
        "the inpainting blend does not directly follow the scheduler step"
    ref["inpaint_blend"] = compile_block(
        [blend], ["self", "i", "timesteps", "latents", "image_latents", "mask", "noise",
                  "num_channels_unet"], SD_INPAINT)
    for line in EXPECTED_INPAINT_LINES:
        find_statement(inpaint_call, line)
    # and it refuses a strength that leaves no step (the message aside)
    too_few = ast.dump(ast.parse("num_inference_steps < 1", mode="eval").body)
    assert any(isinstance(node, ast.If) and ast.dump(node.test) == too_few
               and isinstance(node.body[0], ast.Raise)
               and ast.unparse(node.body[0].exc.func) == "ValueError"
               for node in ast.walk(inpaint_call)), "no check of the step count in the inpainting pipeline"
    prepare = find_function(SD_INPAINT, "prepare_latents", "StableDiffusionInpaintPipeline")
    for line in EXPECTED_INPAINT_PREPARE:
        find_statement(prepare, line)
    ref["inpaint_prepare_latents"] = compile_function(prepare, SD_INPAINT)
    return ref


# --------------------------------------------------------------------------------------------
# helpers


def float_bits(x):
    return struct.pack(">d", x).hex()


def float_entry(value, label):
    """A float the Rust side reads exactly: JSON number (null when not finite), float.hex() and
    the 16 hex digits of its bits."""
    return {
        "label": label,
        "value": value if math.isfinite(value) else None,
        "hex": float.hex(value),
        "bits": float_bits(value),
    }


def make_scheduler(spacing, **extra):
    return DDIMScheduler.from_config(dict(CONFIGS[spacing], **extra))


def schedule_key(spacing, n):
    return f"{spacing}_n{n}"


def ints(t):
    return [int(v) for v in t.tolist()]


def returned_len(timesteps, schedule, start, to_end):
    """The length of a returned timestep tensor, after asserting that it is the run of the
    schedule starting at `start` (and, with `to_end`, running to the schedule's end)."""
    got = ints(timesteps)
    assert got == schedule[start:start + len(got)], "returned timesteps are not a slice"
    assert not to_end or start + len(got) >= len(schedule)
    return len(got)


def returned(timesteps, schedule, start, to_end):
    length = returned_len(timesteps, schedule, start, to_end)
    return {"start": start, "len": length, "empty": length == 0}


# --------------------------------------------------------------------------------------------
# 1. img2img strength


def strength_grid():
    nxt = lambda x: math.nextafter(x, math.inf)  # noqa: E731
    prv = lambda x: math.nextafter(x, -math.inf)  # noqa: E731
    found = {}

    def add(value, label):
        key = float_bits(value)
        if key in found:
            found[key][1].append(label)
        else:
            found[key] = (value, [label])

    for value, label in [
        (0.0, "0"), (-0.0, "-0"), (1.0, "1"), (0.29, "0.29"), (0.3, "0.3"), (1 / 3, "1/3"),
        (2 / 3, "2/3"), (0.999, "0.999"), (0.5, "0.5"), (0.75, "0.75"), (0.8, "0.8"),
        (0.01, "0.01"), (0.001, "0.001"), (1e-9, "1e-9"), (0.1, "0.1"), (0.2, "0.2"),
        (0.25, "0.25"), (0.35, "0.35"), (0.4, "0.4"), (0.6, "0.6"), (0.7, "0.7"), (0.9, "0.9"),
        (0.95, "0.95"), (0.99, "0.99"), (0.15, "0.15"), (0.45, "0.45"), (0.55, "0.55"),
        (0.65, "0.65"), (0.85, "0.85"), (5e-324, "smallest subnormal"),
        (prv(1.0), "1 - ulp"),
        # outside [0, 1]: check_inputs refuses all but NaN; get_timesteps is still called
        (-5e-324, "-smallest subnormal"), (-0.25, "-0.25"), (nxt(1.0), "1 + ulp"),
        (1.25, "1.25"), (2.0, "2"), (math.inf, "inf"), (-math.inf, "-inf"), (math.nan, "nan"),
    ]:
        add(value, label)

    # For each n, the integers k that n * strength can reach: the smallest double s with
    # n * s >= k (in double arithmetic, as Python computes it), the double below it and the
    # one above, and k / n itself. Also the first few k for which n * (k / n) falls short of k
    # (so int() gives k - 1): 29/50 = 0.58, and 63/999, 126/999, 252/999.
    for n in IMG2IMG_NS:
        short = [k for k in range(1, n + 1) if n * (k / n) < k][:3]
        ks = sorted({k for k in (1, 2, n // 3, n // 2, (2 * n) // 3, n - 1, n) if 1 <= k <= n}
                    | set(short))
        for k in ks:
            s = k / n
            add(s, f"{k}/{n}" + (f" ({n}*s < {k})" if k in short else ""))
            while n * prv(s) >= k:
                s = prv(s)
            while n * s < k:
                s = nxt(s)
            exact = "lands on" if n * s == k else "first past"
            add(s, f"smallest s with {n}*s >= {k} ({exact} {k})")
            add(prv(s), f"just below: {n}*s < {k}")
            add(nxt(s), f"just above the smallest s with {n}*s >= {k}")

    def order(item):
        value = item[0]
        return (math.isnan(value), value, math.copysign(1.0, value))

    return [(value, "; ".join(labels)) for value, labels in sorted(found.values(), key=order)]


def gen_img2img(ref, schedules):
    strengths = []
    for value, label in strength_grid():
        entry = float_entry(value, label)
        try:
            ref["check_inputs"](StandIn(None), "a prompt", value, None)
            entry["check_inputs"] = "ok"
        except Exception as exc:  # noqa: BLE001
            entry["check_inputs"] = gg.error_text(exc)
        strengths.append(entry)

    groups = []
    for spacing in SPACINGS:
        for n in IMG2IMG_NS:
            key = schedule_key(spacing, n)
            group = {"spacing": spacing, "num_inference_steps": n, "schedule": key,
                     "results": [], "errors": []}
            for idx, entry in enumerate(strengths):
                value = struct.unpack(">d", bytes.fromhex(entry["bits"]))[0]
                sch = make_scheduler(spacing)
                timesteps, n_out = ref["retrieve_timesteps"](sch, n, "cpu")
                schedules.setdefault(key, ints(timesteps))
                assert n_out == n and ints(timesteps) == schedules[key]
                try:
                    (ts, steps), local = call_with_locals(ref["get_timesteps"], StandIn(sch), n,
                                                          value, "cpu")
                except Exception as exc:  # noqa: BLE001
                    group["errors"].append([idx, gg.error_text(exc)])
                    continue
                assert sch.order == 1
                t_start = local["t_start"]
                length = returned_len(ts, schedules[key], t_start, True)
                group["results"].append([idx, local["init_timestep"], t_start, steps, length])
            groups.append(group)
    return strengths, groups


def gen_img2img_strength_zero():
    """What `add_noise` does with the empty `latent_timestep` that strength 0 leaves
    (`timesteps[:1].repeat(batch)` of an empty tensor): the SD img2img pipeline has no check
    before `prepare_latents` calls it."""
    out = []
    for batch in (1, 2):
        sch = make_scheduler("leading")
        sch.set_timesteps(10)
        empty = sch.timesteps[10:]
        latent_timestep = empty[:1].repeat(batch)
        x = torch.zeros((batch, 4, 8, 8), dtype=torch.float32)
        case = {"batch": batch, "shape": [batch, 4, 8, 8]}
        try:
            case["result_shape"] = list(sch.add_noise(x, x, latent_timestep).shape)
        except Exception as exc:  # noqa: BLE001
            case["error"] = gg.error_text(exc)
        out.append(case)
    return out


# --------------------------------------------------------------------------------------------
# 2. SDXL denoising_end / denoising_start

FRACTIONS = [
    (0.0001, "0.0001"), (0.0005, "0.0005"), (0.0015, "0.0015"), (0.0025, "0.0025"),
    (0.01, "0.01"), (0.2, "0.2"), (0.25, "0.25"), (0.2995, "0.2995"), (0.3, "0.3"),
    (1 / 3, "1/3"), (0.5, "0.5"), (0.5005, "0.5005"), (0.7, "0.7"), (0.75, "0.75"),
    (0.8, "0.8"), (math.nextafter(0.8005, 0.0), "0.8005 - ulp"), (0.8005, "0.8005"),
    (math.nextafter(0.8005, 1.0), "0.8005 + ulp"), (0.9, "0.9"), (0.999, "0.999"),
    (0.9999, "0.9999"),
]

# Values the pipelines do not take as a fraction: (value, label). Ints are Python ints.
OUTSIDE = [
    (0.0, "0.0"), (-0.0, "-0.0"), (1.0, "1.0"), (-0.25, "-0.25"), (1.25, "1.25"), (0, "int 0"),
    (1, "int 1"), (math.nan, "nan"), (math.inf, "inf"),
]
OUTSIDE_NS = (1, 10, 61)
DEFAULT_XL_IMG2IMG_STRENGTH = 0.3


def fraction_entry(value, label):
    entry = float_entry(float(value), label)
    entry["type"] = type(value).__name__
    T = SD_CONFIG["num_train_timesteps"]
    if isinstance(value, float) and math.isfinite(value):
        # the two double operations inside the cut-off, for tracing a rounding difference
        entry["times_T"] = value * T
        entry["T_minus"] = T - value * T
    return entry


def xl_denoising_end(ref, sch, n, fraction):
    """The base pipeline's cut: returns (locals after the block)."""
    timesteps, n_in = ref["retrieve_timesteps"](sch, n, "cpu")
    stand_in = StandIn(sch, denoising_end=fraction)
    return ref["xl_denoising_end"](stand_in, timesteps, n_in)


def end_fields(local, schedule):
    fields = {"applied": "discrete_timestep_cutoff" in local,
              "cutoff": local.get("discrete_timestep_cutoff"),
              "steps": local["num_inference_steps"]}
    fields.update(returned(local["timesteps"], schedule, 0, False))
    return fields


def xl_start_direct(ref, sch, n, fraction, strength=DEFAULT_XL_IMG2IMG_STRENGTH):
    timesteps, n_in = ref["retrieve_timesteps"](sch, n, "cpu")
    (ts, steps), local = call_with_locals(ref["xl_get_timesteps"], StandIn(sch), n_in, strength,
                                          "cpu", denoising_start=fraction)
    return ts, steps, local


def start_fields(ts, steps, local, schedule):
    fields = {"cutoff": local.get("discrete_timestep_cutoff"), "t_start": local["t_start"],
              "steps": steps}
    fields.update(returned(ts, schedule, local["t_start"], True))
    return fields


def gen_sdxl(ref, schedules):
    fractions = [fraction_entry(v, label) for v, label in FRACTIONS]
    for entry in fractions:
        assert ref["denoising_value_valid"](struct.unpack(">d", bytes.fromhex(entry["bits"]))[0])
    end_groups, start_groups = [], []
    for spacing in SPACINGS:
        for n in SDXL_NS:
            key = schedule_key(spacing, n)
            head = {"spacing": spacing, "num_inference_steps": n, "schedule": key}
            end_group = dict(head, results=[])
            start_group = dict(head, results=[])
            for idx, (value, _) in enumerate(FRACTIONS):
                sch = make_scheduler(spacing)
                local = xl_denoising_end(ref, sch, n, value)
                schedules.setdefault(key, ints(sch.timesteps))
                end = end_fields(local, schedules[key])
                assert end["applied"]
                end_group["results"].append([idx, end["cutoff"], end["steps"], end["len"]])

                sch = make_scheduler(spacing)
                ts, steps, local = xl_start_direct(ref, sch, n, value)
                start = start_fields(ts, steps, local, schedules[key])
                start_group["results"].append(
                    [idx, start["cutoff"], start["t_start"], start["steps"], start["len"]])
            end_groups.append(end_group)
            start_groups.append(start_group)

    # Values outside (0, 1) or not floats.
    outside = [fraction_entry(v, label) for v, label in OUTSIDE]
    outside_rows = []
    for spacing in SPACINGS:
        for n in OUTSIDE_NS:
            key = schedule_key(spacing, n)
            for idx, (value, _) in enumerate(OUTSIDE):
                valid = ref["denoising_value_valid"](value)
                assert not valid
                sch = make_scheduler(spacing)
                local = xl_denoising_end(ref, sch, n, value)
                schedules.setdefault(key, ints(sch.timesteps))
                end = end_fields(local, schedules[key])
                assert not end["applied"]
                # What the img2img pipeline does with it: get_timesteps without denoising_start
                # (so the strength path, at the default strength), and no noise added to the
                # image latents when the value is not None.
                sch = make_scheduler(spacing)
                timesteps, n_in = ref["retrieve_timesteps"](sch, n, "cpu")
                passed = value if valid else None
                (ts, steps), local = call_with_locals(
                    ref["xl_get_timesteps"], StandIn(sch), n_in, DEFAULT_XL_IMG2IMG_STRENGTH,
                    "cpu", denoising_start=passed)
                pipeline = {"denoising_start_passed": passed,
                            "strength": DEFAULT_XL_IMG2IMG_STRENGTH, "t_start": local["t_start"],
                            "steps": steps,
                            "add_noise": ref["xl_add_noise_flag"](
                                StandIn(sch, denoising_start=value))["add_noise"]}
                pipeline.update(returned(ts, schedules[key], local["t_start"], True))
                # What get_timesteps itself does if handed the value directly.
                sch = make_scheduler(spacing)
                try:
                    ts, steps, local = xl_start_direct(ref, sch, n, value)
                    direct = start_fields(ts, steps, local, schedules[key])
                except Exception as exc:  # noqa: BLE001
                    direct = {"error": gg.error_text(exc)}
                outside_rows.append({
                    "spacing": spacing, "num_inference_steps": n, "value": idx, "schedule": key,
                    "valid": valid, "denoising_end": end,
                    "denoising_start_pipeline": pipeline, "denoising_start_direct": direct,
                })

    # The img2img pipeline with both: denoising_start picks the start through get_timesteps,
    # then the start/end block checks the pair and cuts the end.
    pairs = [(0.3, 0.8), (0.5, 0.5), (0.8, 0.5), (None, 0.8), (0.8, None), (1.0, 0.8),
             (0.3, 1.0), (0.8005, 0.8), (0.2995, 0.3)]
    pair_rows = []
    for spacing in SPACINGS:
        for n in (10, 50, 61):
            key = schedule_key(spacing, n)
            for start, end in pairs:
                sch = make_scheduler(spacing)
                timesteps, n_in = ref["retrieve_timesteps"](sch, n, "cpu")
                passed = start if ref["denoising_value_valid"](start) else None
                ts, steps = ref["xl_get_timesteps"](StandIn(sch), n_in, DEFAULT_XL_IMG2IMG_STRENGTH,
                                                    "cpu", denoising_start=passed)
                after_start = ints(ts)
                row = {"spacing": spacing, "num_inference_steps": n, "schedule": key,
                       "denoising_start": start, "denoising_end": end,
                       "denoising_start_bits": None if start is None else float_bits(start),
                       "denoising_end_bits": None if end is None else float_bits(end),
                       "strength": DEFAULT_XL_IMG2IMG_STRENGTH,
                       "after_start": {"steps": steps, "timesteps": after_start}}
                stand_in = StandIn(sch, denoising_start=start, denoising_end=end)
                try:
                    local = ref["xl_img2img_start_end"](stand_in, ts, steps,
                                                         ref["denoising_value_valid"])
                    row["after_end"] = {"cutoff": local.get("discrete_timestep_cutoff"),
                                        "steps": local["num_inference_steps"],
                                        "timesteps": ints(local["timesteps"])}
                except Exception as exc:  # noqa: BLE001
                    row["error"] = gg.error_text(exc)
                pair_rows.append(row)
    return fractions, end_groups, start_groups, outside, outside_rows, pair_rows


# --------------------------------------------------------------------------------------------
# 3. inpainting with a 4-channel UNet

INPAINT_SHAPE = (2, 4, 8, 8)
MASK_SHAPE = (2, 1, 8, 8)
NOISE_SEED = 8675309
INPAINT_STEPS = 20


def inpaint_inputs():
    g = torch.Generator().manual_seed(5150)
    image_latents = torch.randn(INPAINT_SHAPE, generator=g, dtype=torch.float32)
    base = torch.randn(INPAINT_SHAPE, generator=g, dtype=torch.float32)
    mask_hard = (torch.rand(MASK_SHAPE, generator=g, dtype=torch.float32) < 0.5).to(torch.float32)
    mask_soft = torch.rand(MASK_SHAPE, generator=g, dtype=torch.float32)
    # exact 0 and 1 at a few places, as a feathered mask has them
    mask_soft[0, 0, 0, :4] = 0.0
    mask_soft[1, 0, 7, 4:] = 1.0
    assert 0 < float(mask_hard.mean()) < 1
    return {"image_latents": image_latents, "base": base, "mask_hard": mask_hard,
            "mask_soft": mask_soft}


def inpaint_run(ref, inputs, name, spacing, strength, mask_name, prediction_type="epsilon"):
    sch = make_scheduler(spacing, prediction_type=prediction_type)
    config = dict(CONFIGS[spacing], prediction_type=prediction_type)
    T = sch.config.num_train_timesteps
    timesteps, n = ref["retrieve_timesteps"](sch, INPAINT_STEPS, "cpu")
    schedule = ints(timesteps)
    (timesteps, steps), local = call_with_locals(ref["inpaint_get_timesteps"], StandIn(sch), n,
                                                 strength, "cpu")
    assert steps >= 1
    batch = INPAINT_SHAPE[0]
    latent_timestep = timesteps[:1].repeat(batch)
    is_strength_max = strength == 1.0
    stand_in = StandIn(sch, vae_scale_factor=8)
    generator = torch.Generator().manual_seed(NOISE_SEED)
    latents, noise, image_latents = ref["inpaint_prepare_latents"](
        stand_in, batch, INPAINT_SHAPE[1], INPAINT_SHAPE[2] * 8, INPAINT_SHAPE[3] * 8,
        torch.float32, torch.device("cpu"), generator, latents=None,
        image=inputs["image_latents"], timestep=latent_timestep, is_strength_max=is_strength_max,
        return_noise=True, return_image_latents=True)
    assert torch.equal(image_latents, inputs["image_latents"])
    expected_noise = torch.randn(INPAINT_SHAPE, generator=torch.Generator().manual_seed(NOISE_SEED),
                                 dtype=torch.float32)
    assert torch.equal(noise, expected_noise)
    initial = latents.clone()

    mask = inputs[mask_name]
    blend_stand_in = StandIn(sch, do_classifier_free_guidance=False)
    generator = torch.Generator().manual_seed(0)  # handed to step as the pipeline does; unused at eta 0
    blended = []
    for i, t in enumerate(timesteps):
        model_input = sch.scale_model_input(latents, t)
        noise_pred = gg.stand_in_model(model_input, int(t), T, inputs["base"])
        latents = sch.step(noise_pred, t, latents, eta=0.0, generator=generator,
                           return_dict=False)[0]
        latents = ref["inpaint_blend"](blend_stand_in, i, timesteps, latents, image_latents, mask,
                                       noise, 4)["latents"]
        blended.append(latents.clone())

    return {
        "name": name, "config": config, "spacing": spacing, "prediction_type": prediction_type,
        "num_inference_steps": INPAINT_STEPS, "strength": strength,
        "strength_bits": float_bits(strength), "eta": 0.0, "all_timesteps": schedule,
        "t_start": local["t_start"], "steps": steps, "timesteps": ints(timesteps),
        "is_strength_max": is_strength_max, "latent_timestep": int(timesteps[0]),
        "image_latents": "image_latents", "noise": "noise", "noise_seed": NOISE_SEED,
        "base": "base", "mask": mask_name,
        "initial": gg.tensor_json(initial),
        "blended": [gg.tensor_json(x) for x in blended],
        "final": gg.tensor_json(latents),
    }


def gen_inpaint(ref):
    inputs = inpaint_inputs()
    inputs["noise"] = torch.randn(INPAINT_SHAPE, generator=torch.Generator().manual_seed(NOISE_SEED),
                                  dtype=torch.float32)
    runs = [
        inpaint_run(ref, inputs, "leading_eps_hard_s0p75", "leading", 0.75, "mask_hard"),
        inpaint_run(ref, inputs, "leading_eps_soft_s0p75", "leading", 0.75, "mask_soft"),
        inpaint_run(ref, inputs, "trailing_eps_hard_s0p75", "trailing", 0.75, "mask_hard"),
        inpaint_run(ref, inputs, "leading_vpred_hard_s0p75", "leading", 0.75, "mask_hard",
                    prediction_type="v_prediction"),
        inpaint_run(ref, inputs, "leading_eps_hard_s1", "leading", 1.0, "mask_hard"),
    ]
    return {k: gg.tensor_json(v) for k, v in inputs.items()}, runs


# --------------------------------------------------------------------------------------------

NOTES = [
    "img2img: init_timestep = min(int(n * strength), n) (double product, truncated toward zero); "
    "t_start = max(n - init_timestep, 0); the returned timesteps are schedule[t_start:] "
    "(DDIM's order is 1; DDIMScheduler has no set_begin_index) and the returned step count is "
    "n - t_start.",
    "img2img: the returned list runs to the end of the raw schedule, so where the trailing "
    "schedule has n + 1 entries ending in -1 (n = 61 here) the list has one entry more than the "
    "returned step count and keeps the -1; at strength 0 it is [-1] there, otherwise empty.",
    "img2img: check_inputs refuses strength < 0 or > 1 (NaN passes it, then int(NaN) raises in "
    "get_timesteps; -0.0 passes). A negative strength handed to get_timesteps directly gives "
    "init_timestep < 0 only when n * strength <= -1, then t_start > n and a negative step count. "
    "The SD img2img pipeline has no check for an empty schedule: add_noise with the empty "
    "latent_timestep fails for batch > 1 and returns an empty tensor for batch 1 "
    "(img2img_strength_zero). The inpainting pipeline raises ValueError when the step count is < 1.",
    "SDXL denoising_end (StableDiffusionXLPipeline.__call__): applied only when it is a Python "
    "float with 0 < value < 1; cutoff = int(round(T - value * T)) (double arithmetic, round half "
    "to even); the timesteps kept are the first count(t >= cutoff) entries. Other values (ints "
    "such as 1, 0.0, 1.0, NaN, negative, > 1) leave the schedule whole.",
    "SDXL denoising_start (StableDiffusionXLImg2ImgPipeline): __call__ hands it to get_timesteps "
    "only when denoising_value_valid (a float in (0, 1)); otherwise get_timesteps gets None and "
    "takes the strength path. get_timesteps: cutoff = int(round(T - value * T)); steps = "
    "count(t < cutoff) over the whole schedule (a trailing -1 counts); t_start = len(schedule) - "
    "steps; timesteps = schedule[t_start:]. __call__ sets add_noise = (denoising_start is None), "
    "so an invalid but given value takes the strength path and still adds no noise.",
    "SDXL: for one fraction, denoising_end keeps t >= cutoff and denoising_start keeps t < cutoff, "
    "so base and refiner split the schedule between them. Either side can be empty: "
    "denoising_end = 0.8 with leading n = 1 (schedule [1]) keeps nothing; denoising_start = "
    "0.9999 gives cutoff 0 and no step, except on the trailing n = 61 schedule, where the -1 "
    "is below the cutoff and is returned as one step.",
    "SDXL img2img with both: when both are valid and start >= end it raises ValueError; else a "
    "valid denoising_end cuts the timesteps get_timesteps returned with the same arithmetic as "
    "the base pipeline.",
    "inpainting (4-channel UNet, no guidance): after each scheduler step, init_latents_proper = "
    "image_latents, noised with add_noise(image_latents, noise, tensor([timesteps[i + 1]])) "
    "unless it is the last step; latents = (1 - mask) * init_latents_proper + mask * latents, "
    "mask (batch, 1, h, w) broadcast over channels, each operation rounded to float32. The noise "
    "is the one drawn in prepare_latents. Strength < 1: initial latents = add_noise("
    "image_latents, noise, timesteps[:1].repeat(batch)); strength == 1.0: initial latents = "
    "noise * init_noise_sigma (1.0 for DDIM), the image not used.",
    "inpainting stand-in model: model_output = float32(latents * float32(0.6 + 0.3 * t / T)) - "
    "float32(float32(0.05) * base), t the step's timestep as an int, T = 1000, every product "
    "and the difference rounded to float32; eta = 0; scale_model_input is the identity.",
]


def main():
    gg.check_versions()
    gg.GENERATOR_NAME = GENERATOR_NAME
    ref = load_reference()

    schedules = {}
    strengths, img2img = gen_img2img(ref, schedules)
    fractions, end_groups, start_groups, outside, outside_rows, pair_rows = gen_sdxl(ref, schedules)
    inputs, runs = gen_inpaint(ref)

    payload = {
        "notes": NOTES,
        "configs": CONFIGS,
        "columns": COLUMNS,
        "schedules": dict(sorted(schedules.items(), key=lambda kv: (
            SPACINGS.index(kv[0].split("_n")[0]), int(kv[0].split("_n")[1])))),
        "strengths": strengths,
        "img2img": img2img,
        "img2img_strength_zero": gen_img2img_strength_zero(),
        "fractions": fractions,
        "sdxl_denoising_end": end_groups,
        "sdxl_denoising_start": start_groups,
        "outside_values": outside,
        "sdxl_outside": outside_rows,
        "sdxl_img2img_start_end": pair_rows,
        "inpaint_inputs": inputs,
        "inpaint": runs,
    }
    gg.write_fixture(FILENAME, payload)
    size = (gg.OUT_DIR / FILENAME).stat().st_size
    n_ok = sum(len(g["results"]) for g in img2img)
    n_err = sum(len(g["errors"]) for g in img2img)
    n_xl = sum(len(g["results"]) for g in end_groups + start_groups)
    print(f"{FILENAME}: {len(strengths)} strengths, {n_ok} img2img results and {n_err} errors, "
          f"{n_xl} SDXL results, {len(outside_rows)} outside, "
          f"{len(pair_rows)} start/end pairs, {len(runs)} inpainting runs; {size} bytes")


if __name__ == "__main__":
    main()
