"""Quickstart: transfer learning with ``python -m jtl.train``'s machinery, offline, on scikit-learn's digits.

Run: ``python -m jtl.quickstart``. A small ViT is pretrained on digits 0-4 (the source task; built on first
use and cached), then trained on digits 5-9 with 10 labelled examples per class (the target task) three
ways: from scratch, with the pretrained backbone frozen (a new head; no backbone gradient is computed), and
with full fine-tuning. Each run is ``configs/quickstart.py`` with one argument. Prints the table of target
accuracy on the held-out target digits.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from pathlib import Path

import numpy as np
from absl import logging as absl_logging

from jtl import models
from jtl.config import load_config
from jtl.train import train_and_evaluate
from jtl.weights import save_pretrained

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "quickstart.py"
RUNS = {"from scratch": "scratch", "frozen backbone, new head": "frozen", "full fine-tuning": "full"}


def pretrained_source(cache: Path, quiet: bool, steps: int = 0, variant: str = "source") -> Path:
    """The source model (digits 0-4; ``variant`` of ``configs/quickstart.py``) in jtl's format, trained once
    and cached in ``cache``.

    Args:
      cache: the directory that holds the training run and, in ``cache/export``, the exported model.
      quiet: if True, the training run's log is not printed.
      steps: training steps (0: the config's ``total_steps``).
      variant: the config variant that defines the source task.

    Returns:
      The exported model's directory (``config.json`` and weights), loadable with
      ``jtl.weights.load_pretrained``. A cache that already holds an export is returned as it is:

    >>> import tempfile
    >>> cache = Path(tempfile.mkdtemp())
    >>> (cache / "export").mkdir()
    >>> pretrained_source(cache, quiet=True) == cache / "export"
    True
    """
    export = cache / "export"
    if export.exists():
        return export
    config = load_config(f"{CONFIG}:{variant}")
    if steps:
        config.total_steps = steps
    print(f"running: the {variant} task (digits 0-4), {config.total_steps} steps, once", file=sys.stderr, flush=True)
    with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
        result = train_and_evaluate(config, cache / "run")
    print(f"{variant} task (digits 0-4): held-out accuracy {result['eval/accuracy']:.3f}; cached in {export}")
    model = models.create(config.model.name, num_classes=config.num_classes, **dict(config.model.overrides))
    save_pretrained(export, model, {"params": result["params"]})
    return export


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    """``python -m jtl.quickstart``: pretrains the source model once, runs the three target trainings per seed and
    prints the table.

    Args:
      argv: the arguments (default: ``sys.argv[1:]``).

    Returns:
      Target accuracy per method, one value per seed.

    An unknown option exits with status 2, naming it:

    >>> main(["--epochs", "3"])
    Traceback (most recent call last):
    ...
    SystemExit: 2
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="workdirs/quickstart", help="runs and the cached source model")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds of the target runs")
    parser.add_argument("--steps", type=int, default=0, help="override the target runs' steps (0: config's)")
    parser.add_argument("--source-steps", type=int, default=0, help="override the source run's steps (0: config's)")
    parser.add_argument("--verbose", action="store_true", help="show each run's log")
    args = parser.parse_args(argv)
    if not args.verbose:
        absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax's informational warnings
    workdir = Path(args.workdir)
    seeds = [int(s) for s in args.seeds.split(",")]

    source_dir = workdir / (f"source-steps{args.source_steps}" if args.source_steps else "source")
    source = pretrained_source(source_dir, quiet=not args.verbose, steps=args.source_steps)
    accuracies: dict[str, list[float]] = {name: [] for name in RUNS}
    runs = [(seed, name, variant) for seed in seeds for name, variant in RUNS.items()]
    for number, (seed, name, variant) in enumerate(runs, 1):
        config = load_config(f"{CONFIG}:{variant}")
        config.seed = seed
        if args.steps:
            config.total_steps = args.steps
        # The table goes to stdout; what is running goes to stderr, so the table stays as the README shows it.
        print(f"running {number}/{len(runs)}: {name}, seed {seed}", file=sys.stderr, flush=True)
        if variant != "scratch":
            config.model.pretrained = str(source)
        run_dir = workdir / f"{variant}-seed{seed}-steps{config.total_steps}"
        with contextlib.redirect_stdout(io.StringIO()) if not args.verbose else contextlib.nullcontext():
            result = train_and_evaluate(config, run_dir)
        accuracies[name].append(result["eval/accuracy"])

    print(f"\ntarget task: digits 5-9, 10 labels per class; accuracy on the held-out target digits (seeds {seeds})")
    width = max(map(len, accuracies))
    for name, accs in accuracies.items():
        spread = f" ± {np.std(accs):.3f}" if len(accs) > 1 else ""
        print(f"  {name.ljust(width)}  {np.mean(accs):.3f}{spread}")
    return accuracies


if __name__ == "__main__":
    main()
