"""Quickstart: a small ViT on scikit-learn's digits 5-9 with 10 labels per class (offline, CPU, seconds).

    python -m jtl.train --config configs/quickstart.py:scratch
    python -m jtl.train --config configs/quickstart.py:source      # pretrain on digits 0-4
    python -m jtl.train --config configs/quickstart.py:frozen --config.model.pretrained=workdirs/source/export

`python -m jtl.quickstart` runs all of it (the source model is built on first use and cached) and prints
the table of target accuracy: from scratch, frozen backbone with a new head, and full fine-tuning.
"""

from jtl.config import base_config

VARIANTS = ("source", "scratch", "frozen", "full")


def get_config(arg=None):
    variant = arg or "scratch"
    if variant not in VARIANTS:
        raise ValueError(f"configs/quickstart.py:{variant}: expected one of {VARIANTS}")
    c = base_config()
    c.num_classes = 5
    c.model.name = "vit-testing"
    c.model.overrides = {
        "image_size": 8,
        "patch_size": 2,
        "num_channels": 1,
        "hidden_size": 32,
        "num_heads": 2,
        "mlp_dim": 64,
        "num_layers": 2,
        "dropout_rate": 0.1,
        "head_zero_init": False,
    }
    c.data.classes = (0, 1, 2, 3, 4) if variant == "source" else (5, 6, 7, 8, 9)
    c.data.shots = 0 if variant == "source" else 10
    c.optimizer = "adamw"
    c.learning_rate = 3e-3 if variant in ("source", "scratch") else 1e-3
    # The source model is regularised (label smoothing, weight decay) so that its features are not
    # specific to digits 0-4.
    c.weight_decay = 0.05 if variant == "source" else 1e-4
    c.label_smoothing = 0.1 if variant == "source" else 0.0
    c.warmup_steps = 20
    c.total_steps = 1000 if variant == "source" else 300
    c.batch_size = 48 if variant == "source" else 32
    c.log_every = 100
    c.checkpoint_every = 0
    if variant == "frozen":
        c.trainable = ("head/.*",)
        c.learning_rate = 1e-2
    return c
