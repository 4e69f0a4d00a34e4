"""Object detection by transfer on the offline testbed (``configs/detection.py``): a small ResNet pretrained on
digit classification (one half of scikit-learn's digits, each pasted at a random size and place on a dark 32x32
tile), then Faster R-CNN on digit canvases made from the other half, from few labelled canvases: the backbone from
scratch, pretrained and frozen, pretrained and fine-tuned end to end; and DETR. COCO AP on held-out canvases,
mean ± std over seeds, and each run's median step time.

    python -m benchmarks.detection [--seeds 0,1,2] [--steps 0] [--workdir workdirs/detection]

The source backbone is trained once through ``jtl.train`` and cached in ``WORKDIR/source/export``
(:func:`jtl.weights.save_pretrained`); every run is ``configs/detection.py:<variant>`` with a seed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
from absl import logging as absl_logging
from PIL import Image

from configs.detection import BACKBONE
from jtl import models
from jtl.config import base_config, load_config
from jtl.data import digits_task, resize_bilinear
from jtl.train import train_and_evaluate
from jtl.weights import save_pretrained

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "detection.py"
TILE = 32  # the pretraining images' side
RUNS = {
    "Faster R-CNN, backbone from scratch": ("faster_rcnn", False),
    "Faster R-CNN, pretrained backbone frozen": ("faster_rcnn,frozen", True),
    "Faster R-CNN, pretrained backbone fine-tuned": ("faster_rcnn", True),
    "DETR, pretrained backbone fine-tuned": ("detr", True),
}


def write_tiles(root: Path, seed: int = 0) -> Path:
    """Digit classification data for pretraining: half 0 of the digits, each enlarged to a random size (the
    canvases' range) at a random place on a dark tile, as ``root/{train,test}/<digit>/<i>.png``."""
    done = root / "done"
    if done.exists():
        return root
    rng = np.random.default_rng(seed)
    task = digits_task(range(10), half=0, seed=seed)
    for split, source in task.items():
        for i in range(len(source)):
            image, label = source[i]["image"], int(source[i]["label"])
            side = int(rng.integers(12, TILE + 1))
            tile = rng.integers(0, 24, (TILE, TILE), dtype=np.uint8)
            top, left = rng.integers(0, TILE - side + 1, size=2)
            patch = np.round(resize_bilinear(image, side)[..., 0] * 255).astype(np.uint8)
            region = tile[top : top + side, left : left + side]
            np.maximum(region, patch, out=region)
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.repeat(tile[..., None], 3, axis=-1)).save(folder / f"{i}.png")
    done.write_text("ok")
    return root


def pretrained_backbone(cache: Path, steps: int) -> tuple[Path, float]:
    """The digit classifier's backbone, trained once and exported to ``cache/export``, and its held-out accuracy."""
    export, result_file = cache / "export", cache / "result.json"
    if export.exists() and result_file.exists():
        return export, json.loads(result_file.read_text())["eval/accuracy"]
    tiles = write_tiles(cache / "tiles")
    config = base_config()
    config.model.name = "resnet-18"
    config.model.overrides = {**BACKBONE, "image_size": TILE}
    config.data.source = "folder"
    config.data.train_dir, config.data.test_dir = str(tiles / "train"), str(tiles / "test")
    config.data.crop = config.data.flip = False
    config.data.mean, config.data.std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    config.learning_rate, config.warmup_steps, config.total_steps = 3e-3, 50, steps or 1500
    config.batch_size, config.checkpoint_every, config.log_every = 64, 0, 500
    print(f"running: the digit-classification source, {config.total_steps} steps, once", file=sys.stderr, flush=True)
    with contextlib.redirect_stdout(io.StringIO()):
        result = train_and_evaluate(config, cache / "run")
    model = models.create(config.model.name, num_classes=0, **dict(config.model.overrides))
    save_pretrained(export, model, {"params": _backbone(result["params"]), "batch_stats": result["batch_stats"]})
    result_file.write_text(json.dumps({"eval/accuracy": result["eval/accuracy"]}))
    return export, result["eval/accuracy"]


def _backbone(params: dict) -> dict:
    return {name: value for name, value in params.items() if name != "head"}


def _step_ms(workdir: Path, batch_size: int) -> float:
    """The median training step time, from ``metrics.jsonl``'s examples per second (the first log left out: it
    includes compilation)."""
    rates = [
        record["train/examples_per_second"]
        for line in (workdir / "metrics.jsonl").read_text().splitlines()
        if "train/examples_per_second" in (record := json.loads(line))
    ]
    return 1000 * batch_size / float(np.median(rates[1:] or rates))


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--workdir", default="workdirs/detection")
    parser.add_argument("--steps", type=int, default=0, help="override the detection runs' steps (0: config's)")
    parser.add_argument("--source-steps", type=int, default=0, help="override the pretraining steps (0: 1500)")
    args = parser.parse_args(argv)
    absl_logging.set_verbosity(absl_logging.ERROR)
    seeds = [int(s) for s in args.seeds.split(",")]
    workdir = Path(args.workdir)
    start = time.perf_counter()
    source, source_accuracy = pretrained_backbone(workdir / "source", args.source_steps)
    aps: dict[str, list[float]] = {name: [] for name in RUNS}
    ap50s: dict[str, list[float]] = {name: [] for name in RUNS}
    step_ms: dict[str, list[float]] = {name: [] for name in RUNS}
    for seed in seeds:
        for name, (variant, pretrained) in RUNS.items():
            print(f"running: {name}, seed {seed}", file=sys.stderr, flush=True)
            config = load_config(f"{CONFIG}:{variant}")
            config.unlock()
            config.seed = seed
            if args.steps:
                config.total_steps, config.warmup_steps = args.steps, min(config.warmup_steps, args.steps // 2)
            config.log_every = max(config.total_steps // 20, 1)
            config.checkpoint_every = 0
            if pretrained:
                config.model.pretrained = str(source)
            run = workdir / f"{variant.replace(',', '-')}-{'pretrained' if pretrained else 'scratch'}-seed{seed}"
            with contextlib.redirect_stdout(io.StringIO()):
                result = train_and_evaluate(config, run / f"steps{config.total_steps}")
            aps[name].append(result["eval/AP"])
            ap50s[name].append(result["eval/AP50"])
            step_ms[name].append(_step_ms(run / f"steps{config.total_steps}", config.batch_size))
    minutes = (time.perf_counter() - start) / 60
    config = load_config(str(CONFIG))
    print(
        f"\nsource: digit classification (half 0 of the digits on {TILE}x{TILE} tiles), held-out accuracy "
        f"{source_accuracy:.3f}\ntarget: {config.data.canvases.train} labelled 64x64 canvases (half 1), COCO AP on "
        f"{config.data.canvases.test} held-out canvases, {config.total_steps if not args.steps else args.steps} "
        f"steps of batch {config.batch_size}, seeds {seeds}; {minutes:.1f} min in all\n"
    )
    print("| detector and start | AP | AP50 | AP per seed | step (ms, median) |\n|---|---|---|---|---|")
    for name in RUNS:
        print(
            f"| {name} | {np.mean(aps[name]):.3f} ± {np.std(aps[name]):.3f} | {np.mean(ap50s[name]):.3f} | "
            f"{', '.join(f'{v:.3f}' for v in aps[name])} | {np.median(step_ms[name]):.0f} |"
        )
    return {"source": [source_accuracy], **aps}


if __name__ == "__main__":
    main()
