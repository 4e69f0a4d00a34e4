"""Fine-tuning recipes as pure pieces: the L2-SP penalty and the BiT-HyperRule schedule."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

import jtl.masking as jm

PyTree = Any


class L2SPState(NamedTuple):
    """The starting point each weight is pulled toward (zeros for new layers)."""

    anchor: PyTree


def l2_sp(alpha: float, beta: float, new: str | Sequence[str] = ("head/.*",)) -> optax.GradientTransformation:
    """L2-SP (Li et al., 2018): adds the gradient of ``alpha/2 ||w - w0||^2`` for pretrained weights and of
    ``beta/2 ||w||^2`` for new layers, ``w0`` being the weights when the optimizer was initialised.

    Put it first in the chain (before clipping and the optimizer), so it acts as the penalty in the loss would.
    The anchor is optimizer state: it is checkpointed, and wrapped in :func:`jtl.masking.freeze` it is kept only
    for trainable leaves.

    Args:
      alpha: the pull toward the pretrained weights.
      beta: plain L2 on new layers' weights.
      new: patterns of the new (randomly initialised) leaves.

    Returns:
      The transformation.

    >>> tx = l2_sp(alpha=0.1, beta=0.0, new="head")
    >>> params = {"body": jnp.array([1.0]), "head": jnp.array([3.0])}
    >>> state = tx.init(params)
    >>> moved = {"body": jnp.array([2.0]), "head": jnp.array([5.0])}
    >>> updates, _ = tx.update({"body": jnp.zeros(1), "head": jnp.zeros(1)}, state, moved)
    >>> updates["body"].tolist(), updates["head"].tolist()
    ([0.1...], [0.0])
    """

    def init(params: PyTree) -> L2SPState:
        is_new = jm.select(params, new, allow_unused=True)
        return L2SPState(jax.tree_util.tree_map(lambda p, n: jnp.zeros_like(p) if n else p, params, is_new))

    def update(updates: PyTree, state: L2SPState, params: PyTree | None = None) -> tuple[PyTree, L2SPState]:
        if params is None:
            raise ValueError("l2_sp needs the current params in update()")
        is_new = jm.select(params, new, allow_unused=True)
        updates = jax.tree_util.tree_map(
            lambda g, p, a, n: g + (beta * p if n else alpha * (p - a)).astype(g.dtype),
            updates,
            params,
            state.anchor,
            is_new,
        )
        return updates, state

    return optax.GradientTransformation(init, update)


class HyperRule(NamedTuple):
    """A BiT-HyperRule choice for one dataset: SGD with momentum 0.9 at ``learning_rate``, linear warm-up over
    ``warmup_steps``, then the rate divided by 10 at each of ``decay_steps``, ending at ``total_steps``."""

    total_steps: int
    warmup_steps: int
    decay_steps: tuple[int, ...]
    learning_rate: float
    mixup_alpha: float
    resolution: tuple[int, int] | None

    def schedule(self) -> optax.Schedule:
        """The learning-rate schedule (a function of the step)."""
        warmup = optax.linear_schedule(0.0, self.learning_rate, self.warmup_steps)
        # join_schedules counts the second schedule's steps from the end of warm-up.
        drops = {s - self.warmup_steps: 0.1 for s in self.decay_steps}
        return optax.join_schedules(
            [warmup, optax.piecewise_constant_schedule(self.learning_rate, drops)], [self.warmup_steps]
        )


def bit_hyperrule(num_examples: int, image_size: tuple[int, int] | None = None, batch_size: int = 512) -> HyperRule:
    """BiT-HyperRule (Kolesnikov et al., 2020): the fine-tuning schedule picked from the dataset's size.

    Under 20k examples: 500 steps, warm-up over 100, the rate divided by 10 at steps 200, 300 and 400; under
    500k: 10k steps (500; 3k, 6k, 9k); else 20k (500; 6k, 12k, 18k). MixUp (alpha 0.1) only from 20k examples;
    images resized to 160 and cropped to 128 if under 96x96, else 512 / 480. BiT's base rate 0.003 is for
    batch 512; it scales linearly with ``batch_size``.

    Args:
      num_examples: the target training set's size.
      image_size: the images' (height, width), for the resolution rule; None leaves resolution out.
      batch_size: the global batch size that will be used.

    Returns:
      The :class:`HyperRule`.

    >>> rule = bit_hyperrule(1000, (32, 32))
    >>> rule.total_steps, rule.warmup_steps, rule.decay_steps, rule.mixup_alpha, rule.resolution
    (500, 100, (200, 300, 400), 0.0, (160, 128))
    """
    if num_examples < 20_000:
        supports = (100, 200, 300, 400, 500)
    elif num_examples < 500_000:
        supports = (500, 3000, 6000, 9000, 10_000)
    else:
        supports = (500, 6000, 12_000, 18_000, 20_000)
    warmup, *decay, total = supports
    resolution = None
    if image_size is not None:
        resolution = (160, 128) if image_size[0] * image_size[1] < 96 * 96 else (512, 480)
    mixup = 0.0 if num_examples < 20_000 else 0.1
    return HyperRule(total, warmup, tuple(decay), 0.003 * batch_size / 512, mixup, resolution)
