"""Unsupervised domain adaptation on scikit-learn's digits (offline): half of each digit's images is the labelled
source domain; the other half, rotated by 25 degrees, is the unlabelled target domain (no image in common).
A small ViT trains from scratch on the source while the method aligns the two domains' features; evaluation is on
the target's test split, and model selection without target labels (source validation, DEV) is reported beside
the oracle.

    python -m jtl.train --config configs/domain_adaptation.py:dann
    python -m jtl.train --config configs/domain_adaptation.py:none     # source only

Arguments: ``none`` (source only), ``dann``, ``cdan``, ``mmd``, ``coral``, ``mcc``.
`python -m benchmarks.domain_adaptation` runs every method over three seeds (BENCHMARKS.md).
"""

from jtl.config import base_config
from jtl.objectives.adaptation import METHODS


def get_config(arg=None):
    method = arg or "dann"
    if method not in METHODS:
        raise ValueError(f"configs/domain_adaptation.py:{method}: expected one of {METHODS}")
    c = base_config()
    c.num_classes = 10
    c.model.name = "vit-digits"  # 2 blocks, width 32, 2x2 patches of the 8x8 digits
    c.data.half = 0
    c.target.source = "digits"
    c.target.half = 1
    c.target.shift = "rotate"
    c.adaptation.method = method
    # Deep CORAL's loss is divided by 4 d^2 (d = 32 features here): it needs a larger weight to matter.
    c.adaptation.weight = 100.0 if method == "coral" else 1.0
    c.optimizer = "adamw"
    c.learning_rate = 3e-3
    c.weight_decay = 1e-4
    c.warmup_steps = 50
    c.total_steps = 1000
    c.batch_size = 64
    c.log_every = 250
    c.eval_every = 250
    c.checkpoint_every = 0
    return c
