"""Start-up: seconds from a fresh Python process to the end of the first train step, with JAX's persistent
compilation cache cold (an empty directory) and warm (the same directory, a second time).

Run: ``python -m benchmarks.startup`` (defaults: ViT-S/16 at 224 px, batch 8, AdamW, full fine-tuning, random
weights). Each run is a new process that enables the cache as ``jtl.train`` does, imports jtl, initialises
the model (``jtl.models.init``, one compiled program), compiles the trainer's step and runs it once; it prints
when each phase ended. Cold and warm runs alternate, ``--repeats`` times; the table shows medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time

PHASES = ("imports", "model init", "step compiled", "first step done")


def child(args: argparse.Namespace) -> None:
    """One start-up, timed from ``args.started`` (the parent's clock just before it launched this process)."""
    marks = {}
    import jax

    jax.config.update("jax_compilation_cache_dir", args.cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    import numpy as np

    from benchmarks._steps import TrainStep, everything
    from jtl import models

    marks["imports"] = time.time() - args.started
    model = models.create(args.model, num_classes=10, image_size=args.image_size, **json.loads(args.overrides))
    params = models.init(model)["params"]
    jax.block_until_ready(params)
    marks["model init"] = time.time() - args.started
    rng = np.random.default_rng(0)
    shape = (args.batch, args.image_size, args.image_size, model.num_channels)
    batch = {"image": rng.normal(size=shape).astype(np.float32), "label": rng.integers(0, 10, args.batch)}
    step = TrainStep(model, params, batch, everything, 10)
    marks["step compiled"] = time.time() - args.started
    step.run(batch)
    marks["first step done"] = time.time() - args.started
    print(json.dumps(marks))


def start_once(args: argparse.Namespace, cache: str) -> dict[str, float]:
    command = [sys.executable, "-m", "benchmarks.startup", "--child", "--cache", cache]
    command += ["--model", args.model, "--image-size", str(args.image_size), "--batch", str(args.batch)]
    command += ["--overrides", args.overrides, "--started", repr(time.time())]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit-s16")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--overrides", default="{}", help="other model fields, as JSON (e.g. a tiny test model)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cache", default="", help=argparse.SUPPRESS)
    parser.add_argument("--started", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return {}

    runs: dict[str, list[dict[str, float]]] = {"cold cache": [], "warm cache": []}
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as cache:
            runs["cold cache"].append(start_once(args, cache))
            runs["warm cache"].append(start_once(args, cache))
    medians = {name: {p: statistics.median(r[p] for r in marks) for p in PHASES} for name, marks in runs.items()}
    print(f"{args.model} at {args.image_size} px, batch {args.batch}: seconds since the process started, ")
    print(f"medians of {args.repeats} (each phase's end)")
    print(f"{'':12}" + "".join(f"{p:>17}" for p in PHASES))
    for name, marks in medians.items():
        print(f"{name:12}" + "".join(f"{marks[p]:17.2f}" for p in PHASES))
    return medians


if __name__ == "__main__":
    main()
