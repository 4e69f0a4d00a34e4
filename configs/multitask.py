"""Multi-task learning on scikit-learn's digits (offline): one small ViT backbone shared by three tasks, each with
its own data, head, loss and metric:

- ``digit``: which digit (10 classes), from only 10 labelled images per class (half 0 of the images);
- ``parity``: odd or even (2 classes), from the other half of the images, all labelled;
- ``value``: the digit's value as a number (regression, squared error), from that other half too.

    python -m jtl.train --config configs/multitask.py:equal
    python -m jtl.train --config configs/multitask.py:pcgrad
    python -m jtl.train --config configs/multitask.py:single-digit     # one task alone, the same recipe

Arguments: a weighting (``equal``, ``uncertainty``, ``dwa``, ``gradnorm``, ``pcgrad``) for all three tasks, or
``single-<task>`` for one task alone. `python -m benchmarks.multitask` compares them (BENCHMARKS.md).
"""

from jtl.config import base_config, task_config

WEIGHTINGS = ("equal", "uncertainty", "dwa", "gradnorm", "pcgrad")
TASKS = ("digit", "parity", "value")
VARIANTS = WEIGHTINGS + tuple(f"single-{task}" for task in TASKS)


def _task(name):
    if name == "digit":
        t = task_config("classification", num_classes=10)
        t.data.half, t.data.shots = 0, 10
    elif name == "parity":
        t = task_config("classification", num_classes=2)
        t.data.half, t.data.labels = 1, "parity"
    else:
        t = task_config("regression")
        t.data.half, t.data.labels = 1, "value"
    return t


def get_config(arg=None):
    variant = arg or "equal"
    if variant not in VARIANTS:
        raise ValueError(f"configs/multitask.py:{variant}: expected one of {VARIANTS}")
    c = base_config()
    c.model.name = "vit-digits"  # 2 blocks, width 32, 2x2 patches of the 8x8 digits
    names = (variant.removeprefix("single-"),) if variant.startswith("single-") else TASKS
    c.tasks = {name: _task(name) for name in names}
    c.multitask.weighting = "equal" if variant.startswith("single-") else variant
    c.multitask.dwa_period = 50
    c.optimizer = "adamw"
    c.learning_rate = 3e-3
    c.weight_decay = 1e-4
    c.warmup_steps = 50
    c.total_steps = 1000
    c.batch_size = 32  # per task
    c.log_every = 250
    c.eval_every = 0
    c.checkpoint_every = 0
    return c
