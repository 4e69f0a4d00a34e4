"""Multi-task learning on the digits testbed (``configs/multitask.py``): each task alone vs the three tasks on
one shared backbone under each loss weighting; per-task test metrics (mean ± std over seeds) and the mean
relative change against single-task training (Maninis et al.'s Delta_m: + is better, MSE's sign flipped).

    python -m benchmarks.multitask [--seeds 0,1,2] [--steps 1000] [--weightings equal,uncertainty,...]

Every run is ``python -m jtl.train --config configs/multitask.py:<variant> --config.seed=<seed>``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
from pathlib import Path

import numpy as np
from absl import logging as absl_logging

from jtl.config import load_config

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "multitask.py"
TASKS = {"digit": "accuracy", "parity": "accuracy", "value": "mse"}
WEIGHTINGS = ("equal", "uncertainty", "dwa", "gradnorm", "pcgrad")


def run(variant: str, seed: int, steps: int, workdir: Path) -> dict:
    from jtl.train import train_and_evaluate

    config = load_config(f"{CONFIG}:{variant}")
    config.seed = seed
    if steps:
        config.total_steps = steps
        config.log_every = steps
    with contextlib.redirect_stdout(io.StringIO()):
        return train_and_evaluate(config, workdir / f"{variant}-seed{seed}-steps{steps}")


def relative_change(multi: dict[str, float], single: dict[str, float]) -> float:
    """Delta_m: the mean over tasks of the relative change of each metric, signed so that + is better.

    >>> round(relative_change({"digit": 0.6, "value": 1.0}, {"digit": 0.5, "value": 2.0}), 3)
    0.35
    """
    changes = []
    for task, value in multi.items():
        sign = -1.0 if TASKS[task] == "mse" else 1.0
        changes.append(sign * (value - single[task]) / single[task])
    return float(np.mean(changes))


def _mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=0, help="0: the config's")
    parser.add_argument("--weightings", default=",".join(WEIGHTINGS))
    parser.add_argument("--workdir", default="/tmp/jtl-bench-multitask")
    args = parser.parse_args(argv)
    absl_logging.set_verbosity(absl_logging.ERROR)
    seeds = [int(s) for s in args.seeds.split(",")]
    workdir = Path(args.workdir)

    def metrics(result: dict, tasks: list[str]) -> dict[str, float]:
        return {task: result[f"eval/{task}/{TASKS[task]}"] for task in tasks}

    per_seed = {"single task": [{} for _ in seeds]}
    for task in TASKS:
        for i, seed in enumerate(seeds):
            per_seed["single task"][i].update(metrics(run(f"single-{task}", seed, args.steps, workdir), [task]))
    for weighting in args.weightings.split(","):
        per_seed[weighting] = [metrics(run(weighting, seed, args.steps, workdir), list(TASKS)) for seed in seeds]

    header = " | ".join(f"{task} {metric}" for task, metric in TASKS.items())
    rows = [f"| training | {header} | Delta_m vs single task |", "|---" * (len(TASKS) + 2) + "|"]
    results = {}
    for name, runs in per_seed.items():
        deltas = [relative_change(r, single) for r, single in zip(runs, per_seed["single task"], strict=True)]
        cells = " | ".join(_mean_std([r[task] for r in runs]) for task in TASKS)
        delta = "—" if name == "single task" else f"{100 * np.mean(deltas):+.1f}% ± {100 * np.std(deltas):.1f}"
        rows.append(f"| {name} | {cells} | {delta} |")
        results[name] = {"runs": runs, "delta_m": deltas}
    print(f"seeds {seeds}\n" + "\n".join(rows))
    return results


if __name__ == "__main__":
    main()
