"""Unsupervised domain adaptation on the digits testbed (``configs/domain_adaptation.py``): source only vs each
method, target accuracy mean ± std over seeds, and the accuracy that each model-selection rule picks.

    python -m benchmarks.domain_adaptation [--seeds 0,1,2] [--steps 1000] [--methods none,dann,...]

Every run is ``python -m jtl.train --config configs/domain_adaptation.py:<method> --config.seed=<seed>``.
Columns: the target test accuracy after the last step; the target accuracy at the evaluation chosen by source
validation accuracy, by deep embedded validation (DEV), and by the oracle that reads target labels; the source
validation accuracy at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import io
from pathlib import Path

import numpy as np
from absl import logging as absl_logging

from jtl.config import load_config
from jtl.objectives.adaptation import METHODS
from jtl.train import train_and_evaluate

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "domain_adaptation.py"
NAMES = {"none": "source only", "dann": "DANN", "cdan": "CDAN+E", "mmd": "DAN (MK-MMD)", "coral": "Deep CORAL",
         "mcc": "MCC"}  # fmt: skip


def run(method: str, seed: int, steps: int, workdir: Path) -> dict:
    config = load_config(f"{CONFIG}:{method}")
    config.seed = seed
    if steps:
        config.total_steps = steps
        config.eval_every = max(steps // 4, 1)
        config.log_every = steps
    with contextlib.redirect_stdout(io.StringIO()):
        return train_and_evaluate(config, workdir / f"{method}-seed{seed}-steps{steps}")


def _mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def main(argv: list[str] | None = None) -> dict[str, list[dict]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=0, help="0: the config's")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--workdir", default="/tmp/jtl-bench-domain-adaptation")
    args = parser.parse_args(argv)
    absl_logging.set_verbosity(absl_logging.ERROR)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = [
        "| method | target accuracy (last) | selected by source val. | selected by DEV | oracle (reads target "
        "labels) | source val. accuracy |",
        "|---|---|---|---|---|---|",
    ]
    results = {}
    for method in args.methods.split(","):
        runs = [run(method, seed, args.steps, Path(args.workdir)) for seed in seeds]
        results[method] = runs
        rows.append(
            f"| {NAMES[method]} | {_mean_std([r['eval/accuracy'] for r in runs])} "
            f"| {_mean_std([r['selected/source_validation/accuracy'] for r in runs])} "
            f"| {_mean_std([r['selected/dev/accuracy'] for r in runs])} "
            f"| {_mean_std([r['selected/oracle/accuracy'] for r in runs])} "
            f"| {_mean_std([r['eval_source/accuracy'] for r in runs])} |"
        )
        print(rows[-1], flush=True)
    print(f"\nseeds {seeds}; " + "\n".join(rows))
    return results


if __name__ == "__main__":
    main()
