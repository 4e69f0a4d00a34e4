"""Checkpointing benchmark: what saving a checkpoint every N steps costs a training run, with synchronous saves
(the step waits until the files are written, as jtl did before) and with asynchronous ones (``jtl.checkpoint``:
the save returns once the arrays are copied off the device, and the files are written while training goes on).

Run: ``python -m benchmarks.checkpointing`` (defaults: ViT-Ti/16 at 224 px, batch 8, AdamW, full fine-tuning, 40
steps, a checkpoint every 10). Each run takes the same steps with the trainer's step and ``jtl.checkpoint.Checkpointer``
into a fresh directory; its time includes waiting for the last save at the end (``close``). The three ways
alternate, ``--repeats`` times; the table shows medians of milliseconds per step and of how long each ``save``
call held the training loop.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import jax
import numpy as np

from benchmarks._steps import TrainStep, everything
from jtl import models
from jtl.checkpoint import Checkpointer

WAYS = ("no saving", "synchronous saves", "asynchronous saves")


def run_once(step: TrainStep, batch: dict, way: str, steps: int, every: int) -> tuple[float, list[float]]:
    """Seconds per step for ``steps`` steps saved ``way``, and how long each save call blocked."""
    blocked = []
    with tempfile.TemporaryDirectory() as workdir:
        checkpointer = Checkpointer(workdir, keep=2)
        start = time.perf_counter()
        for done in range(1, steps + 1):
            step.run(batch)
            if way != "no saving" and done % every == 0:
                save_start = time.perf_counter()
                checkpointer.save(done, step.state, {"step": done}, {"class": "benchmark"})
                if way == "synchronous saves":
                    checkpointer.manager.wait_until_finished()
                blocked.append(time.perf_counter() - save_start)
        checkpointer.close()
        return (time.perf_counter() - start) / steps, blocked


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit-ti16", help="a model of jtl.models' registry")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--every", type=int, default=10, help="steps between checkpoints")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--overrides", default="{}", help="other model fields, as JSON (e.g. a tiny test model)")
    args = parser.parse_args(argv)

    model = models.create(args.model, num_classes=10, image_size=args.image_size, **json.loads(args.overrides))
    rng = np.random.default_rng(0)
    shape = (args.batch, args.image_size, args.image_size, model.num_channels)
    batch = {"image": rng.normal(size=shape).astype(np.float32), "label": rng.integers(0, 10, args.batch)}
    step = TrainStep(model, models.init(model)["params"], batch, everything, 10)
    step.run(batch)  # the first call's one-off costs stay out of every way's time
    state_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(step.state))

    per_step: dict[str, list[float]] = {way: [] for way in WAYS}
    blocked: dict[str, list[float]] = {way: [] for way in WAYS}
    for _ in range(args.repeats):
        for way in WAYS:
            seconds, blocks = run_once(step, batch, way, args.steps, args.every)
            per_step[way].append(seconds)
            blocked[way].extend(blocks)

    base = statistics.median(per_step["no saving"])
    results = {
        way: {
            "ms_per_step": 1e3 * statistics.median(per_step[way]),
            "vs_no_saving": statistics.median(per_step[way]) / base,
            "save_blocks_ms": 1e3 * statistics.median(blocked[way]) if blocked[way] else 0.0,
        }
        for way in WAYS
    }
    print(
        f"{args.model} at {args.image_size} px, batch {args.batch}, AdamW: a train state of "
        f"{state_bytes / 2**20:.1f} MiB, saved every {args.every} of {args.steps} steps; medians of {args.repeats}"
    )
    print("\n| saving | ms per step | vs no saving | each save holds the loop (ms) |\n|---|---:|---:|---:|")
    for way, row in results.items():
        blocks = f"{row['save_blocks_ms']:.0f}" if blocked[way] else "-"
        print(f"| {way} | {row['ms_per_step']:.0f} | {row['vs_no_saving']:.2f}x | {blocks} |")
    return results


if __name__ == "__main__":
    main()
