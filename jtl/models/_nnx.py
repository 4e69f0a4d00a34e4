"""jtl models inside Flax NNX programs, through ``flax.nnx.bridge``."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax.numpy as jnp

import jtl.masking as jm

if TYPE_CHECKING:  # flax.nnx takes longer to import than all of jtl.models: only to_nnx's callers pay for it
    from flax import nnx


def to_nnx(model: nn.Module, variables: dict[str, Any] | None = None, rngs: nnx.Rngs | None = None) -> nnx.Module:
    """A jtl model as an NNX module, holding ``variables`` (e.g. pretrained weights) or fresh ones.

    Its parameters keep jtl's names (``encoder/block_0/attn/query/kernel``), so :mod:`jtl.masking` rules apply to
    ``nnx.state(module, nnx.Param)`` as to the linen params; calling it runs the linen model (``train=`` as there).

    Args:
      model: a jtl model (``jtl.models.create`` or ``load_pretrained``).
      variables: ``{"params": ..., "batch_stats": ...}`` to hold; ``None`` keeps the initialisation.
      rngs: for the initialisation and dropout (default ``nnx.Rngs(0)``).

    Returns:
      The NNX module.

    >>> from jtl import models
    >>> model = models.create("vit-testing", num_classes=3)
    >>> variables = models.init(model)
    >>> module = to_nnx(model, variables)
    >>> (images,) = model.example_inputs(2)
    >>> bool(jnp.allclose(module(images), model.apply(variables, images)))
    True
    """
    from flax import nnx
    from flax.nnx import bridge

    collections = {"params": nnx.Param, "batch_stats": nnx.BatchStat}
    module = bridge.ToNNX(model, rngs=rngs or nnx.Rngs(0))
    # One compiled program, as in jtl.models.init: run eagerly, every initialiser op would compile on its own
    # (most of a minute for a small CNN on CPU).
    _jitted_lazy_init()(module, *(jnp.zeros(x.shape, x.dtype) for x in model.example_inputs()))
    for collection, values in (variables or {}).items():
        if collection not in collections:
            raise ValueError(f"to_nnx: variables collection {collection!r}; known: {sorted(collections)}")
        state = nnx.state(module, collections[collection])
        given, expected = dict(jm.named_leaves(values)), {name for name, _ in jm.named_leaves(state)}
        if set(given) != expected:
            missing, extra = sorted(expected - set(given)), sorted(set(given) - expected)
            raise ValueError(f"to_nnx: {collection} do not fit the model: missing {missing}, unexpected {extra}")
        nnx.update(module, jm.map_with_names(lambda name, _, values=given: jnp.asarray(values[name]), state))
    return module


@functools.cache
def _jitted_lazy_init():
    """``bridge.lazy_init`` under ``nnx.jit`` (made once, so that its compilations are reused per model)."""
    from flax import nnx
    from flax.nnx import bridge

    def lazy_init(module, *inputs) -> None:
        bridge.lazy_init(module, *inputs)

    return nnx.jit(lazy_init)
