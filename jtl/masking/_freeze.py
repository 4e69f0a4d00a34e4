"""Freezing: zero updates and no optimizer state for frozen leaves, and gradients only for the rest."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jtl.masking._names import PyTree, flatten_with_names
from jtl.masking._rules import MaskSpec, trainable_mask

TRAINABLE = "trainable"
FROZEN = "frozen"


def freeze(
    tx: optax.GradientTransformation,
    *,
    trainable: MaskSpec | None = None,
    frozen: MaskSpec | None = None,
    allow_unused: bool = False,
) -> optax.GradientTransformation:
    """Wraps ``tx`` so that frozen leaves get exactly zero updates and hold no optimizer state.

    Built on ``optax.partition`` with ``optax.set_to_zero()`` for the frozen group: the frozen leaves'
    slots in ``tx``'s state are ``optax.MaskedNode()`` (no moments), and their params stay
    bit-identical. Anything in ``tx`` (gradient clipping, weight decay) sees only the trainable leaves.
    Non-float leaves (integer or quantized arrays) are frozen whatever the rules say: they take the ``None``
    gradients :func:`value_and_grad` gives them and get zero updates.

    Args:
      tx: the optimizer for the trainable leaves.
      trainable: what trains (regexes on leaf names, a callable, or a boolean tree); the rest is frozen.
      frozen: what is frozen; the rest trains. Give exactly one of the two.
      allow_unused: if False, a pattern that matches no leaf is an error.

    Returns:
      An ``optax.GradientTransformation`` over the whole parameter tree.

    >>> import jax.numpy as jnp, optax
    >>> params = {"backbone": {"kernel": jnp.ones(2)}, "head": {"kernel": jnp.ones(2)}}
    >>> tx = freeze(optax.sgd(0.1), trainable="head/.*")
    >>> updates, _ = tx.update({"backbone": {"kernel": jnp.ones(2)}, "head": {"kernel": jnp.ones(2)}},
    ...                        tx.init(params), params)
    >>> updates["backbone"]["kernel"].tolist(), updates["head"]["kernel"].tolist()
    ([0.0, 0.0], [-0.1..., -0.1...])
    >>> params = {**params, "codes": jnp.arange(3, dtype=jnp.int8)}
    >>> updates, _ = tx.update({**updates, "codes": None}, tx.init(params), params)
    >>> optax.apply_updates(params, updates)["codes"].tolist()
    [0, 1, 2]
    """

    transforms = {TRAINABLE: tx, FROZEN: optax.set_to_zero()}

    def labels(tree: PyTree) -> PyTree:
        mask = trainable_mask(tree, trainable=trainable, frozen=frozen, allow_unused=allow_unused)
        return jax.tree_util.tree_map(lambda m: TRAINABLE if m else FROZEN, mask)

    # Non-float leaves (quantized kernels, integer buffers) get no gradient from value_and_grad (None), and optax
    # labels the updates: they leave the params and the labels (which the rules resolve on the whole tree, so
    # that a boolean-tree mask still fits), and come back as zero updates for apply_updates.
    def floats(tree: PyTree) -> PyTree:
        return jax.tree_util.tree_map(lambda x: x if _is_differentiable(x) else None, tree)

    def partition(params: PyTree) -> optax.GradientTransformation:
        drop = jax.tree_util.tree_map(lambda label, p: label if _is_differentiable(p) else None, labels(params), params)
        return optax.partition(transforms, lambda _: drop)  # an Equinox label tree is callable: no tree here

    def init(params: PyTree) -> Any:
        return partition(params).init(floats(params))

    def update(updates: PyTree, state: Any, params: PyTree | None = None, **extra: Any) -> tuple[PyTree, Any]:
        if params is None:
            return optax.partition(transforms, labels).update(updates, state, **extra)
        updates, state = partition(params).update(updates, state, floats(params), **extra)

        def fill(u: Any, p: Any) -> Any:
            return jnp.zeros_like(p) if u is None and p is not None else u

        return jax.tree_util.tree_map(fill, updates, params, is_leaf=lambda x: x is None), state

    return optax.GradientTransformationExtraArgs(init, update)


def _is_differentiable(leaf: Any) -> bool:
    if isinstance(leaf, float):
        return True
    if isinstance(leaf, jax.Array | np.ndarray | np.generic | jax.ShapeDtypeStruct):
        return jnp.issubdtype(leaf.dtype, jnp.inexact)
    return False


def split(tree: PyTree, trainable: MaskSpec, *, allow_unused: bool = False) -> tuple[PyTree, PyTree]:
    """Splits a tree into its trainable and frozen parts, each with ``None`` where the other has leaves.

    Args:
      tree: any pytree.
      trainable: what trains (regexes on leaf names, a callable, or a boolean tree).
      allow_unused: if False, a pattern that matches no leaf is an error.

    Returns:
      ``(trainable_part, frozen_part)``; :func:`merge` puts them back together.

    >>> import jax.numpy as jnp
    >>> t, f = split({"a": jnp.ones(1), "b": jnp.zeros(1)}, "a")
    >>> t["b"] is None and f["a"] is None
    True
    """
    mask = trainable_mask(tree, trainable=trainable, allow_unused=allow_unused)
    trainable_part = jax.tree_util.tree_map(lambda m, x: x if m else None, mask, tree)
    frozen_part = jax.tree_util.tree_map(lambda m, x: None if m else x, mask, tree)
    return trainable_part, frozen_part


def merge(*parts: PyTree) -> PyTree:
    """Merges trees split by :func:`split`: at each position, the first part that is not ``None``.

    Args:
      *parts: trees of the same structure with ``None`` holes.

    Returns:
      One tree with the leaves of all parts.

    >>> import jax.numpy as jnp
    >>> merge(*split({"a": jnp.ones(1), "b": jnp.zeros(1)}, "a"))["b"].tolist()
    [0.0]
    """
    first, *rest = parts

    def pick(*xs: Any) -> Any:
        return next((x for x in xs if x is not None), None)

    return jax.tree_util.tree_map(pick, first, *rest, is_leaf=lambda x: x is None)


def value_and_grad(
    fun: Callable[..., Any], trainable: MaskSpec, *, has_aux: bool = False, allow_unused: bool = False
) -> Callable[..., tuple[Any, PyTree]]:
    """Like ``jax.value_and_grad`` on the first argument, but differentiates only the trainable leaves.

    The frozen leaves enter ``fun`` as constants, so XLA computes no weight gradients for them; and when
    everything below the head is frozen, no backward pass runs through the backbone at all (nothing there
    depends on a differentiated input). The gradient tree keeps the structure of the params: frozen
    array leaves get zeros (constants that cost nothing under ``jit``) and non-float leaves ``None``, so it
    feeds :func:`freeze`-wrapped optimizers directly.

    Args:
      fun: ``fun(params, *args, **kwargs)`` returning a scalar (or ``(scalar, aux)`` with ``has_aux``).
      trainable: what trains (regexes on leaf names, a callable, or a boolean tree).
      has_aux: as in ``jax.value_and_grad``.
      allow_unused: if False, a pattern that matches no leaf is an error.

    Returns:
      A function with ``fun``'s signature returning ``(value, grads)``.

    >>> import jax.numpy as jnp
    >>> params = {"backbone": jnp.array(2.0), "head": jnp.array(3.0)}
    >>> loss = lambda p, x: p["head"] * p["backbone"] * x
    >>> value, grads = value_and_grad(loss, "head")(params, 1.0)
    >>> float(value), float(grads["head"]), float(grads["backbone"])
    (6.0, 2.0, 0.0)
    """

    def wrapped(params: PyTree, *args: Any, **kwargs: Any) -> tuple[Any, PyTree]:
        mask = trainable_mask(params, trainable=trainable, allow_unused=allow_unused)
        mask = jax.tree_util.tree_map(lambda m, x: m and _is_differentiable(x), mask, params)
        trainable_part, frozen_part = split(params, mask)

        def of_trainable(part: PyTree) -> Any:
            return fun(merge(part, frozen_part), *args, **kwargs)

        value, grads = jax.value_and_grad(of_trainable, has_aux=has_aux)(trainable_part)
        zeros = jax.tree_util.tree_map(lambda x: jnp.zeros_like(x) if _is_differentiable(x) else None, frozen_part)
        return value, merge(grads, zeros)

    return wrapped


def carry_over_state(old_state: PyTree, new_state: PyTree) -> PyTree:
    """Copies into ``new_state`` every leaf of ``old_state`` at the same name with the same shape and dtype.

    Use it when the trainable set changes (gradual unfreezing): initialise the new optimizer's state, then
    carry over the moments of the leaves that were already training, so they do not restart from zero.

    Args:
      old_state: the optimizer state before the change.
      new_state: a freshly initialised state after the change.

    Returns:
      ``new_state`` with the matching leaves taken from ``old_state``.

    >>> import jax.numpy as jnp, optax
    >>> params = {"a": jnp.ones(2), "b": jnp.ones(2)}
    >>> stage_0 = freeze(optax.adam(1.0), trainable="a")
    >>> _, old = stage_0.update({"a": jnp.ones(2), "b": jnp.ones(2)}, stage_0.init(params), params)
    >>> stage_1 = freeze(optax.adam(1.0), trainable=["a", "b"])
    >>> new = carry_over_state(old, stage_1.init(params))
    >>> mu = new.inner_states["trainable"].inner_state[0].mu
    >>> mu["a"].tolist(), mu["b"].tolist()
    ([0.1..., 0.1...], [0.0, 0.0])
    """
    old = dict(zip(*flatten_with_names(old_state)[:2], strict=True))
    names, leaves, treedef = flatten_with_names(new_state)

    def take(name: str, leaf: Any) -> Any:
        prev = old.get(name)
        same = (
            prev is not None and jnp.shape(prev) == jnp.shape(leaf) and jnp.result_type(prev) == jnp.result_type(leaf)
        )
        return prev if same else leaf

    return jax.tree_util.tree_unflatten(treedef, [take(n, x) for n, x in zip(names, leaves, strict=True)])
