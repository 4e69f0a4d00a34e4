"""Multi-task loss weighting: uncertainty weighting (Kendall et al., 2018), Dynamic Weight Average (Liu et al.,
2019), GradNorm's weight objective (Chen et al., 2018), and PCGrad's projection of conflicting per-task
gradients (Yu et al., 2020)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any


def uncertainty_weighted_loss(losses: jax.Array, log_variances: jax.Array) -> jax.Array:
    """Kendall et al.'s homoscedastic-uncertainty weighting: ``sum_i exp(-s_i) L_i + s_i`` with learnable
    ``s_i = log sigma_i^2`` (train ``log_variances`` with the model; a noisy task's weight falls).

    Args:
      losses: (T,) the tasks' losses.
      log_variances: (T,) the learnable log variances (start at 0: equal weights).

    Returns:
      The combined loss.

    >>> float(uncertainty_weighted_loss(jnp.array([1.0, 2.0]), jnp.zeros(2)))
    3.0
    """
    return jnp.sum(jnp.exp(-log_variances) * losses + log_variances)


def dwa_weights(previous: jax.Array, before_previous: jax.Array, temperature: float = 2.0) -> jax.Array:
    """Dynamic Weight Average: ``w_i = T exp(r_i / tau) / sum_j exp(r_j / tau)`` with ``r_i`` the ratio of task
    ``i``'s last two epoch losses; the weights sum to the number of tasks (a task whose loss falls slower gains).

    Args:
      previous: (T,) each task's loss over the last epoch.
      before_previous: (T,) over the epoch before.
      temperature: ``tau``; large values give equal weights.

    Returns:
      (T,) weights.

    >>> dwa_weights(jnp.array([1.0, 1.0]), jnp.array([1.0, 1.0])).tolist()
    [1.0, 1.0]
    """
    ratios = previous / before_previous
    return previous.shape[0] * jax.nn.softmax(ratios / temperature)


def pcgrad(task_gradients: PyTree, rng: jax.Array | None = None) -> PyTree:
    """PCGrad: each task's gradient loses its component along any other task's gradient it conflicts with
    (negative dot product), the other tasks taken in a random order; the projected gradients are summed.

    Args:
      task_gradients: a pytree whose leaves have a leading task axis (T, ...), e.g. from ``jax.jacrev`` of the
        per-task losses or ``jax.vmap`` of ``jax.grad`` over tasks.
      rng: the order's key; None takes the tasks in index order.

    Returns:
      The combined gradient (the pytree without the task axis).

    >>> g = {"w": jnp.array([[1.0, 0.0], [-1.0, 1.0]])}
    >>> pcgrad(g)["w"].tolist()
    [0.5, 1.5]
    """
    leaves, treedef = jax.tree_util.tree_flatten(task_gradients)
    num_tasks = leaves[0].shape[0]
    flat = jnp.concatenate([leaf.reshape(num_tasks, -1) for leaf in leaves], axis=1).astype(jnp.float32)
    orders = (
        jnp.tile(jnp.arange(num_tasks), (num_tasks, 1))
        if rng is None
        else jax.vmap(lambda k: jax.random.permutation(k, num_tasks))(jax.random.split(rng, num_tasks))
    )

    def project(i: jax.Array, order: jax.Array) -> jax.Array:
        def against(g: jax.Array, j: jax.Array) -> tuple:
            other = flat[j]
            dot = g @ other
            conflict = (dot < 0) & (j != i)
            g = jnp.where(conflict, g - dot / jnp.maximum(other @ other, 1e-12) * other, g)
            return g, None

        return jax.lax.scan(against, flat[i], order)[0]

    combined = jnp.sum(jax.vmap(project)(jnp.arange(num_tasks), orders), axis=0)
    pieces, start = [], 0
    for leaf in leaves:
        size = leaf[0].size
        pieces.append(combined[start : start + size].reshape(leaf.shape[1:]).astype(leaf.dtype))
        start += size
    return jax.tree_util.tree_unflatten(treedef, pieces)


def gradnorm_loss(
    task_weights: jax.Array,
    unweighted_gradient_norms: jax.Array,
    losses: jax.Array,
    initial_losses: jax.Array,
    alpha: float = 1.5,
) -> jax.Array:
    """GradNorm's objective for the task weights (Chen et al., 2018): ``sum_i |G_i - mean(G) r_i^alpha|`` with
    ``G_i = w_i ||grad_W L_i||`` at the last shared layer ``W`` and ``r_i`` task ``i``'s relative inverse training
    rate ``(L_i / L_i(0)) / mean_j (L_j / L_j(0))``. The target ``mean(G) r_i^alpha`` is a constant, as in the paper.

    Differentiate it with respect to ``task_weights`` only, step them, then renormalise them to sum to the
    number of tasks.

    Args:
      task_weights: (T,) the current loss weights ``w_i``.
      unweighted_gradient_norms: (T,) ``||grad_W L_i||`` (e.g. from ``jax.jacrev`` of the per-task losses).
      losses: (T,) the current losses.
      initial_losses: (T,) the losses at the first step.
      alpha: the asymmetry strength.

    Returns:
      The scalar objective.

    >>> float(gradnorm_loss(jnp.ones(2), jnp.array([1.0, 1.0]), jnp.ones(2), jnp.ones(2)))
    0.0
    """
    norms = task_weights * unweighted_gradient_norms
    ratios = losses / initial_losses
    relative = ratios / jnp.mean(ratios)
    target = jax.lax.stop_gradient(jnp.mean(norms) * relative**alpha)
    return jnp.sum(jnp.abs(norms - target))
