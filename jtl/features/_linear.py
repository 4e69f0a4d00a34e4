"""A linear classifier (softmax regression with L2) trained in JAX on cached features, with a search over the
L2 strength on a held-out part of the training set."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax


class LinearClassifier(NamedTuple):
    """Softmax regression on standardised features: ``logits = ((x - mean) / std) @ weights + bias``."""

    weights: jax.Array
    bias: jax.Array
    mean: jax.Array
    std: jax.Array
    l2: float

    def logits(self, features: jax.Array) -> jax.Array:
        """The class scores of ``features`` (N, D)."""
        return ((jnp.asarray(features) - self.mean) / self.std) @ self.weights + self.bias

    def accuracy(self, features: jax.Array, labels: jax.Array) -> float:
        """The fraction of ``labels`` predicted."""
        return float(jnp.mean(jnp.argmax(self.logits(features), -1) == jnp.asarray(labels)))


def linear_epochs(num_batches: int, batch_size: int, learning_rate: float, l2: float):
    """Builds the training loop of :func:`fit_linear`: shuffled epochs of minibatch Adam on standardised features.

    Args:
      num_batches: minibatches per epoch (the remainder of a shuffled epoch is dropped).
      batch_size: examples per minibatch.
      learning_rate: Adam's rate.
      l2: the weights' penalty ``l2 / 2 * ||W||^2``.

    Returns:
      ``(tx, run)``: the optax optimizer, and a jitted ``run(params, opt_state, features, labels, keys)`` that
      runs one epoch per key and returns ``(params, opt_state)``; ``params`` is ``(weights, bias)``.

    >>> tx, run = linear_epochs(num_batches=2, batch_size=4, learning_rate=0.1, l2=0.0)
    >>> params = (jnp.zeros((3, 2)), jnp.zeros(2))
    >>> x, y = jnp.eye(3)[jnp.array([0, 1, 2, 0, 1, 2, 0, 1])], jnp.array([0, 1, 1, 0, 1, 1, 0, 1])
    >>> (weights, bias), _ = run(params, tx.init(params), x, y, jax.random.split(jax.random.PRNGKey(0), 20))
    >>> jnp.argmax(x @ weights + bias, -1).tolist() == y.tolist()
    True
    """
    tx = optax.adam(learning_rate)

    def loss_fn(params: tuple, x: jax.Array, y: jax.Array) -> jax.Array:
        weights, bias = params
        logits = x @ weights + bias
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean() + 0.5 * l2 * jnp.sum(weights**2)

    def batch_step(carry: tuple, batch: tuple) -> tuple:
        params, opt_state = carry
        grads = jax.grad(loss_fn)(params, *batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    def epoch(carry: tuple, key: jax.Array, features: jax.Array, labels: jax.Array) -> tuple:
        order = jax.random.permutation(key, features.shape[0])[: num_batches * batch_size]
        x = features[order].reshape(num_batches, batch_size, -1)
        y = labels[order].reshape(num_batches, batch_size)
        return jax.lax.scan(batch_step, carry, (x, y))[0], None

    @jax.jit
    def run(params: tuple, opt_state: tuple, features: jax.Array, labels: jax.Array, keys: jax.Array) -> tuple:
        return jax.lax.scan(lambda c, k: epoch(c, k, features, labels), (params, opt_state), keys)[0]

    return tx, run


def fit_linear(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    *,
    l2: float = 1e-4,
    epochs: int = 100,
    batch_size: int = 256,
    learning_rate: float = 1e-2,
    seed: int = 0,
) -> LinearClassifier:
    """Trains softmax regression with an L2 penalty on the weights by minibatch Adam.

    Args:
      features: (N, D) cached features.
      labels: (N,) integer labels.
      num_classes: the number of classes.
      l2: the penalty ``l2 / 2 * ||W||^2`` added to the mean cross-entropy.
      epochs: passes over the data.
      batch_size: examples per step (capped at N).
      learning_rate: Adam's rate.
      seed: for the initialisation-free shuffling.

    Returns:
      The :class:`LinearClassifier`.

    >>> rng = np.random.default_rng(0)
    >>> labels = rng.integers(0, 3, 300)
    >>> features = np.eye(3)[labels] * 2 + rng.normal(size=(300, 3)) * 0.3
    >>> fit_linear(features, labels, 3, epochs=20).accuracy(features, labels) > 0.95
    True
    """
    features = jnp.asarray(features, jnp.float32)
    labels = jnp.asarray(labels, jnp.int32)
    mean = features.mean(0)
    std = features.std(0) + 1e-6
    standardised = (features - mean) / std
    batch_size = min(batch_size, features.shape[0])
    tx, run = linear_epochs(features.shape[0] // batch_size, batch_size, learning_rate, l2)
    params = (jnp.zeros((features.shape[1], num_classes)), jnp.zeros(num_classes))
    keys = jax.random.split(jax.random.PRNGKey(seed), epochs)
    (weights, bias), _ = run(params, tx.init(params), standardised, labels, keys)
    return LinearClassifier(weights, bias, mean, std, l2)


def fit_linear_search(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    *,
    l2_grid: Sequence[float] = (1e-6, 1e-4, 1e-3, 1e-2, 1e-1),
    validation_fraction: float = 0.2,
    seed: int = 0,
    **kwargs,
) -> tuple[LinearClassifier, dict[float, float]]:
    """Picks the L2 strength by accuracy on a held-out part of the training features, then refits on all.

    Args:
      features: (N, D) training features.
      labels: (N,) integer labels.
      num_classes: the number of classes.
      l2_grid: the strengths tried.
      validation_fraction: the held-out share (stratified by class).
      seed: for the split and the fits.
      **kwargs: passed to :func:`fit_linear`.

    Returns:
      ``(classifier refit on all features with the best strength, {l2: validation accuracy})``.

    >>> rng = np.random.default_rng(0)
    >>> labels = rng.integers(0, 2, 200)
    >>> features = np.eye(2)[labels] + rng.normal(size=(200, 2)) * 0.3
    >>> classifier, scores = fit_linear_search(features, labels, 2, l2_grid=(1e-4, 10.0), epochs=10)
    >>> sorted(scores), classifier.l2
    ([0.0001, 10.0], 0.0001)
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    held_out = np.zeros(len(labels), bool)
    for c in range(num_classes):
        index = rng.permutation(np.flatnonzero(labels == c))
        if len(index) > 1:  # a class with one example keeps it for training
            held_out[index[: max(1, round(validation_fraction * len(index)))]] = True
    scores = {}
    for l2 in l2_grid:
        classifier = fit_linear(features[~held_out], labels[~held_out], num_classes, l2=l2, seed=seed, **kwargs)
        scores[float(l2)] = classifier.accuracy(features[held_out], labels[held_out])
    # Ties go to the stronger penalty: with few examples the simpler model is the safer choice.
    best = max(scores, key=lambda l2: (scores[l2], l2))
    return fit_linear(features, labels, num_classes, l2=best, seed=seed, **kwargs), scores
