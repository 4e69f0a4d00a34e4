"""From a config to what trains and how: the trainable rules, gradual-unfreezing stages, the learning-rate
schedule (or BiT-HyperRule's), and the optax chain over :func:`jtl.step.trained`'s tree (L2-SP, clipping, the
base optimizer with its weight-decay mask, learning-rate multipliers and layer-wise decay; frozen leaves get no
update and no state)."""

from jtl.optim._from_config import Stages, apply_hyperrule, optimizer, schedule, stages, train_batch_stats, trainable
from jtl.optim._recipes import HyperRule, L2SPState, bit_hyperrule, l2_sp

__all__ = [
    "HyperRule",
    "L2SPState",
    "Stages",
    "apply_hyperrule",
    "bit_hyperrule",
    "l2_sp",
    "optimizer",
    "schedule",
    "stages",
    "train_batch_stats",
    "trainable",
]
