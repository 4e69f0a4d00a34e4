"""Input pipeline: examples/s of the grain pipeline the trainer uses, against the train step it feeds.

Run: ``python -m benchmarks.input_pipeline``. Two datasets: the quickstart's digits (``configs/quickstart.py``,
in memory, batch 32, its ViT) and an image folder of JPEGs (``root/<class>/*.jpg``, written at
``--image-width`` x ``--image-height`` with smooth random content, decoded, randomly crop-resized to 224 and
flipped by ``jtl.data.ImagePreprocessing``; batch 8; ViT-S/16's frozen-backbone and full steps). For each it
prints the pipeline alone (a fresh iterator, its start-up included), the step alone on a fixed batch, and the
two together as the trainer runs them (steps are dispatched without waiting, so the next batch is read while
the previous step computes); "together / step" near 1.00 means the pipeline is not the bottleneck.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from PIL import Image

from benchmarks._steps import TrainStep, everything
from jtl import data as jdata
from jtl import models
from jtl.config import load_config

QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.py"


def pipeline_rate(make_batches: Callable[[], Any], batch_size: int, count: int) -> float:
    """Examples/s of ``count`` batches from a fresh iterator, its start-up included."""
    start = time.perf_counter()
    batches = make_batches()
    for _ in range(count):
        next(batches)
    return count * batch_size / (time.perf_counter() - start)


def loop_rate(step: TrainStep, next_batch: Callable[[], dict], batch_size: int, count: int) -> float:
    """Examples/s of the trainer's loop: get a batch, dispatch the step without waiting, repeat; after one
    warm-up step."""
    step.run(next_batch())
    start = time.perf_counter()
    for _ in range(count):
        step.run(next_batch(), wait=False)
    jax.block_until_ready(step.state)
    return count * batch_size / (time.perf_counter() - start)


def write_image_folder(root: Path, count: int, width: int, height: int) -> Path:
    """``count`` JPEGs in two class folders; smooth content (noise would be a JPEG's worst case)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    for i in range(count):
        folder = root / f"class_{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        phase = rng.uniform(0, 6, size=3)
        pixels = np.stack([np.sin(8 * x * (c + 1) + 5 * y + phase[c]) for c in range(3)], axis=-1)
        Image.fromarray(((pixels + 1) * 127.5).astype(np.uint8)).save(folder / f"{i}.jpg", quality=90)
    return root


def measure(
    name: str, make_batches: Callable[[], Any], steps: dict[str, TrainStep], batch: dict, args: argparse.Namespace
) -> list:
    """Rows of (label, pipeline, step alone, together); ``batch`` is the fixed batch the steps were built for."""
    batch = jax.device_put(batch)
    batch_size = len(batch["label"])
    pipeline = pipeline_rate(make_batches, batch_size, args.batches)
    rows = []
    for step_name, step in steps.items():
        alone = loop_rate(step, lambda: batch, batch_size, args.iters)
        batches = make_batches()
        together = loop_rate(step, lambda batches=batches: jax.device_put(next(batches)), batch_size, args.iters)
        rows.append((f"{name}, {step_name}", pipeline, alone, together))
    return rows


def main(argv: list[str] | None = None) -> list[tuple[str, float, float, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=50, help="batches timed for the pipeline alone")
    parser.add_argument("--iters", type=int, default=10, help="steps timed for the step and the loop")
    parser.add_argument("--images", type=int, default=256, help="JPEGs in the image folder")
    parser.add_argument("--image-width", type=int, default=500)
    parser.add_argument("--image-height", type=int, default=375)
    parser.add_argument("--folder-model", default="vit-s16")
    parser.add_argument("--folder-size", type=int, default=224)
    parser.add_argument("--folder-batch", type=int, default=8)
    args = parser.parse_args(argv)

    config = load_config(f"{QUICKSTART}:full")
    splits = jdata.digits_task(config.data.classes, shots=config.data.shots, seed=config.data.split_seed)
    model = models.create(config.model.name, num_classes=config.num_classes, **dict(config.model.overrides))
    digits = lambda: jdata.train_batches(splits["train"], config.batch_size, seed=0)
    batch = next(digits())
    full = TrainStep(model, models.init(model)["params"], batch, everything, config.num_classes)
    rows = measure(f"digits, batch {config.batch_size}", digits, {f"{config.model.name} full": full}, batch, args)

    with tempfile.TemporaryDirectory() as tmp:
        root = write_image_folder(Path(tmp), args.images, args.image_width, args.image_height)
        preprocessing = jdata.ImagePreprocessing(args.folder_size)
        folder = lambda: jdata.train_batches(
            jdata.ImageFolderSource(root), args.folder_batch, seed=0, transform=preprocessing.train
        )
        model = models.create(args.folder_model, num_classes=2, image_size=args.folder_size, head_zero_init=False)
        params = models.init(model)["params"]
        batch = next(folder())
        steps = {
            f"{args.folder_model} frozen backbone": TrainStep(model, params, batch, ("head/.*",), 2),
            f"{args.folder_model} full": TrainStep(model, params, batch, everything, 2),
        }
        name = f"JPEG folder {args.image_width}x{args.image_height} -> {args.folder_size}, batch {args.folder_batch}"
        rows += measure(name, folder, steps, batch, args)

    print(f"jax {jax.__version__}, {jax.device_count()} {jax.default_backend()} device(s); examples/s")
    width = max(len(row[0]) for row in rows)
    print(f"{'dataset, step'.ljust(width)}  {'pipeline':>9}  {'step':>8}  {'together':>8}  {'together/step':>13}")
    for label, pipeline, step_rate, together in rows:
        print(f"{label.ljust(width)}  {pipeline:9.0f}  {step_rate:8.1f}  {together:8.1f}  {together / step_rate:13.2f}")
    return rows


if __name__ == "__main__":
    main()
