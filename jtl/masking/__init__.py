"""Freeze, label and split any parameter pytree (linen dicts, ``nnx.State``, Equinox modules).

Depends on jax and optax only, so other JAX projects can import it alone::

    import jtl.masking as jm
    tx = jm.freeze(optax.adamw(1e-3), trainable=["head/.*"])           # frozen: zero updates, no state
    loss, grads = jm.value_and_grad(loss_fn, ["head/.*"])(params, batch)  # no frozen weight gradients
    print(jm.report(params, trainable=["head/.*"], optimizer=optax.adamw(1e-3)))
"""

from jtl.masking._freeze import FROZEN, TRAINABLE, carry_over_state, freeze, merge, split, value_and_grad
from jtl.masking._groups import (
    GradualUnfreezing,
    block_layer_index,
    gradual_unfreezing,
    layerwise_lr_decay,
    layerwise_multipliers,
    lr_multipliers,
    weight_decay_mask,
)
from jtl.masking._names import MaskingError, leaf_names, map_with_names, named_leaves
from jtl.masking._report import GroupRow, MaskingReport, report
from jtl.masking._rules import label_by_rules, resolve_mask, select, trainable_mask

__all__ = [
    "FROZEN",
    "TRAINABLE",
    "GradualUnfreezing",
    "GroupRow",
    "MaskingError",
    "MaskingReport",
    "block_layer_index",
    "carry_over_state",
    "freeze",
    "gradual_unfreezing",
    "label_by_rules",
    "layerwise_lr_decay",
    "layerwise_multipliers",
    "leaf_names",
    "lr_multipliers",
    "map_with_names",
    "merge",
    "named_leaves",
    "report",
    "resolve_mask",
    "select",
    "split",
    "trainable_mask",
    "value_and_grad",
    "weight_decay_mask",
]
