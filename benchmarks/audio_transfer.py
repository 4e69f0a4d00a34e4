"""Speech -> music transfer on synthesised audio (``configs/audio_transfer.py``): a small AST pretrained on
speech-like clips (ten vowels), then trained on music-like clips (six musical figures, 8 per class) from the
speech model and from scratch; held-out target accuracy, mean ± std over seeds.

    python -m benchmarks.audio_transfer [--seeds 0,1,2] [--workdir workdirs/audio_transfer]

The clips are written once to ``WORKDIR/data`` (:func:`jtl.data.write_audio_task`), the source model is trained
once and cached in ``WORKDIR/source/export`` (:func:`jtl.weights.save_pretrained`), and every run is
``python -m jtl.train --config configs/audio_transfer.py:<variant>`` with a seed (and the source model).
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

from configs.audio_transfer import CLIPS
from jtl import models
from jtl.config import load_config
from jtl.data import write_audio_task
from jtl.train import train_and_evaluate
from jtl.weights import save_pretrained

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "audio_transfer.py"
RUNS = {"from scratch": "scratch", "speech-pretrained, fine-tuned": "transfer"}


def _config(variant: str, data: Path, steps: int, seed: int = 0, model: dict | None = None):
    config = load_config(f"{CONFIG}:{variant}")
    if model is not None:
        config.model.overrides = model
    task = "speech" if variant == "source" else "music"
    config.data.train_dir, config.data.test_dir = str(data / task / "train"), str(data / task / "test")
    config.seed = seed
    if steps:
        config.total_steps = steps
        config.warmup_steps = min(config.warmup_steps, steps // 2)
    config.eval_every = config.total_steps
    return config


def write_data(data: Path, source_clips: tuple[int, int], target_clips: tuple[int, int]) -> Path:
    """Both tasks' clips in ``data/{speech,music}``, written once (``data/done`` marks a finished write)."""
    done = data / "done"
    wanted = json.dumps({"speech": source_clips, "music": target_clips})
    if done.exists() and done.read_text() == wanted:
        return data
    write_audio_task(data / "speech", "speech", source_clips, seed=0)
    write_audio_task(data / "music", "music", target_clips, seed=1)
    done.write_text(wanted)
    return data


def pretrained_source(cache: Path, data: Path, steps: int, model: dict | None = None) -> tuple[Path, float]:
    """The speech-like source model, trained once and exported to ``cache/export``, and its held-out accuracy."""
    export, result_file = cache / "export", cache / "result.json"
    if export.exists() and result_file.exists():
        return export, json.loads(result_file.read_text())["eval/accuracy"]
    config = _config("source", data, steps, model=model)
    print(f"running: the speech-like source task, {config.total_steps} steps, once", file=sys.stderr, flush=True)
    with contextlib.redirect_stdout(io.StringIO()):
        result = train_and_evaluate(config, cache / "run")
    model = models.create(config.model.name, num_classes=config.num_classes, **dict(config.model.overrides))
    save_pretrained(export, model, {"params": result["params"]})
    result_file.write_text(json.dumps({"eval/accuracy": result["eval/accuracy"]}))
    return export, result["eval/accuracy"]


def _pair(text: str) -> tuple[int, int]:
    train, test = (int(x) for x in text.split(","))
    return train, test


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--workdir", default="workdirs/audio_transfer")
    parser.add_argument("--steps", type=int, default=0, help="override the target runs' steps (0: config's)")
    parser.add_argument("--source-steps", type=int, default=0, help="override the source's steps (0: config's)")
    parser.add_argument("--source-clips", type=_pair, default=None, help="speech clips per class: TRAIN,TEST")
    parser.add_argument("--target-clips", type=_pair, default=None, help="music clips per class: TRAIN,TEST")
    parser.add_argument("--model", type=json.loads, default=None, help="the AST's fields, JSON (default: config's)")
    args = parser.parse_args(argv)
    absl_logging.set_verbosity(absl_logging.ERROR)
    source_clips, target_clips = args.source_clips or CLIPS["speech"], args.target_clips or CLIPS["music"]
    seeds = [int(s) for s in args.seeds.split(",")]
    workdir = Path(args.workdir)
    start = time.perf_counter()
    data = write_data(workdir / "data", source_clips, target_clips)
    tag = f"-steps{args.source_steps}" if args.source_steps else ""
    source, source_accuracy = pretrained_source(workdir / f"source{tag}", data, args.source_steps, args.model)
    accuracies: dict[str, list[float]] = {name: [] for name in RUNS}
    for seed in seeds:
        for name, variant in RUNS.items():
            print(f"running: {name}, seed {seed}", file=sys.stderr, flush=True)
            config = _config(variant, data, args.steps, seed, args.model)
            if variant == "transfer":
                config.model.pretrained = str(source)
            with contextlib.redirect_stdout(io.StringIO()):
                result = train_and_evaluate(config, workdir / f"{variant}-seed{seed}-steps{config.total_steps}")
            accuracies[name].append(result["eval/accuracy"])
    minutes = (time.perf_counter() - start) / 60

    print(
        f"\nsource: speech-like, 10 vowels x {source_clips[0]} clips; held-out accuracy {source_accuracy:.3f}"
        f"\ntarget: music-like, 6 figures x {target_clips[0]} clips; accuracy on {target_clips[1]} held-out clips "
        f"per class (chance {1 / 6:.3f}), seeds {seeds}; {minutes:.1f} min in all\n"
    )
    print("| target model | target accuracy | per seed |\n|---|---|---|")
    for name, values in accuracies.items():
        print(f"| {name} | {np.mean(values):.3f} ± {np.std(values):.3f} | {', '.join(f'{v:.3f}' for v in values)} |")
    return {"source": [source_accuracy], **accuracies}


if __name__ == "__main__":
    main()
