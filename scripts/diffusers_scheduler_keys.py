#!/usr/bin/env python3
"""Write `src/config/diffusers_keys.rs`: every constructor argument of every scheduler class of
diffusers, the keys a `scheduler_config.json` written by diffusers can hold. The crate uses the
list to tell a key of another diffusers scheduler (ignored, as diffusers ignores it) from a key
no scheduler knows (most likely a typo), see `DdimConfig::ignored_keys`.

Produced with diffusers 0.42.1 (torch 2.15.0, Python 3.11.7). Schedulers whose module cannot be
imported without extra packages, and the Flax ones, are skipped; the file lists the classes read.

How to run (from the repository root):
    python -m venv .venv && . .venv/bin/activate
    pip install diffusers==0.42.1 torch numpy
    python scripts/diffusers_scheduler_keys.py
"""

import importlib
import inspect
import pkgutil
import textwrap
from pathlib import Path

import diffusers
from diffusers import schedulers

OUT = Path(__file__).resolve().parent.parent / "src" / "config" / "diffusers_keys.rs"


def main():
    classes = {}
    for module in pkgutil.iter_modules(schedulers.__path__):
        if not module.name.startswith("scheduling_") or "flax" in module.name:
            continue
        try:
            mod = importlib.import_module(f"diffusers.schedulers.{module.name}")
        except Exception:  # a scheduler that needs packages this install does not have
            continue
        for name, cls in inspect.getmembers(mod, inspect.isclass):
            if name.endswith("Scheduler") and cls.__module__ == mod.__name__:
                params = inspect.signature(cls.__init__).parameters
                classes[name] = [p for p in params if p not in ("self", "args", "kwargs")]
    keys = sorted({k for params in classes.values() for k in params})
    lines = [
        "// Written by scripts/diffusers_scheduler_keys.py from diffusers "
        f"{diffusers.__version__}; do not edit by hand.",
        "",
        *textwrap.wrap(
            f"The constructor arguments of diffusers' {len(classes)} scheduler classes "
            f"({', '.join(sorted(classes))}), sorted: the keys a `scheduler_config.json` "
            "written by diffusers can hold.",
            width=96,
            initial_indent="/// ",
            subsequent_indent="/// ",
        ),
        f"pub(crate) const DIFFUSERS_SCHEDULER_KEYS: [&str; {len(keys)}] = [",
    ]
    lines += [f'    "{k}",' for k in keys]
    lines += ["];", ""]
    OUT.write_text("\n".join(lines))
    print(f"{OUT.name}: {len(keys)} keys of {len(classes)} classes")


if __name__ == "__main__":
    main()
