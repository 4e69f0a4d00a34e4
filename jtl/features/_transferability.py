"""Transferability scores: how well a pretrained model's features (or predictions) suit a target task, measured
before fine-tuning. Each is a jittable function of arrays; higher means more transferable."""

from __future__ import annotations

import jax
import jax.numpy as jnp

_EPS = 1e-12


def _one_hot(labels: jax.Array, num_classes: int) -> jax.Array:
    return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)


def leep(source_probs: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
    """LEEP (Nguyen et al., 2020): the log-likelihood of the target labels under the source classifier's
    "dummy label" distribution followed by the empirical conditional ``P(y | z)``.

    Args:
      source_probs: (N, Z) the source classifier's softmax outputs on the target inputs.
      labels: (N,) integer target labels.
      num_classes: the number of target classes.

    Returns:
      A scalar, at most 0.

    >>> probs = jnp.array([[0.9, 0.1], [0.1, 0.9]])
    >>> round(float(leep(probs, jnp.array([0, 1]), 2)), 4)
    -0.1985
    """
    source_probs = source_probs.astype(jnp.float32)
    joint = _one_hot(labels, num_classes).T @ source_probs / labels.shape[0]  # (Y, Z)
    conditional = joint / jnp.maximum(joint.sum(0, keepdims=True), _EPS)  # P(y | z)
    expected = source_probs @ conditional.T  # (N, Y): sum_z P(y | z) theta(x)_z
    return jnp.mean(jnp.log(jnp.take_along_axis(expected, labels[:, None], axis=1)[:, 0] + _EPS))


def nce(source_labels: jax.Array, labels: jax.Array, num_source_classes: int, num_classes: int) -> jax.Array:
    """NCE (Tran et al., 2019): the negative conditional entropy ``-H(Y | Z)`` of the target labels given the
    source model's hard predictions.

    Args:
      source_labels: (N,) integer labels the source model predicts for the target inputs.
      labels: (N,) integer target labels.
      num_source_classes: the source label space's size.
      num_classes: the number of target classes.

    Returns:
      A scalar, at most 0 (0 when Z determines Y).

    >>> float(nce(jnp.array([0, 0, 1, 1]), jnp.array([1, 1, 0, 0]), 2, 2))
    0.0
    """
    joint = _one_hot(labels, num_classes).T @ _one_hot(source_labels, num_source_classes) / labels.shape[0]
    marginal = joint.sum(0, keepdims=True)
    conditional = joint / jnp.maximum(marginal, _EPS)
    return jnp.sum(jnp.where(joint > 0, joint * jnp.log(jnp.maximum(conditional, _EPS)), 0.0))


def h_score(features: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
    """H-score (Bao et al., 2019): ``tr(cov(f)^-1 cov(E[f | y]))``, the features' between-class variance
    relative to their total variance (a pseudo-inverse where the covariance is singular).

    Args:
      features: (N, D) features of the target inputs.
      labels: (N,) integer target labels.
      num_classes: the number of target classes.

    Returns:
      A scalar between 0 and ``min(D, num_classes - 1)``.

    >>> f = jnp.array([[1.0, 0.0], [1.2, 0.1], [-1.0, 0.1], [-1.1, 0.0]])
    >>> round(float(h_score(f, jnp.array([0, 0, 1, 1]), 2)), 3)
    0.999
    """
    features = features.astype(jnp.float32)
    centred = features - features.mean(0)
    covariance = centred.T @ centred / features.shape[0]
    one_hot = _one_hot(labels, num_classes)
    class_means = (one_hot.T @ centred) / jnp.maximum(one_hot.sum(0), 1.0)[:, None]
    per_example_mean = one_hot @ class_means
    between = per_example_mean.T @ per_example_mean / features.shape[0]
    return jnp.trace(jnp.linalg.pinv(covariance, hermitian=True) @ between)


def logme(features: jax.Array, labels: jax.Array, num_classes: int, max_iterations: int = 100) -> jax.Array:
    """LogME (You et al., 2021): the log marginal evidence per example of a Bayesian linear model from the
    features to each one-hot target column, with its prior and noise precisions set by evidence maximisation
    (MacKay's fixed point), averaged over classes.

    Args:
      features: (N, D) features of the target inputs.
      labels: (N,) integer target labels.
      num_classes: the number of target classes.
      max_iterations: fixed-point iterations at most (it stops when alpha / beta moves by under 1e-3).

    Returns:
      A scalar; higher means the features predict the labels better.

    >>> f = jnp.array([[1.0, 0.0], [1.2, 0.1], [-1.0, 0.1], [-1.1, 0.0]])
    >>> bool(logme(f, jnp.array([0, 0, 1, 1]), 2) > logme(f, jnp.array([0, 1, 0, 1]), 2))
    True
    """
    features = features.astype(jnp.float32)
    n, d = features.shape
    # F^T F = V diag(s) V^T: every quantity below is diagonal in V's basis.
    eigenvalues, eigenvectors = jnp.linalg.eigh(features.T @ features)
    eigenvalues = jnp.maximum(eigenvalues, 0.0)

    def evidence(target: jax.Array) -> jax.Array:
        projected = eigenvectors.T @ (features.T @ target)  # V^T F^T y

        def posterior_mean(alpha: jax.Array, beta: jax.Array) -> jax.Array:
            return eigenvectors @ (beta * projected / (alpha + beta * eigenvalues))

        def update(carry: tuple) -> tuple:
            alpha, beta, _, iteration = carry
            mean = posterior_mean(alpha, beta)
            gamma = jnp.sum(beta * eigenvalues / (alpha + beta * eigenvalues))
            new_alpha = gamma / jnp.maximum(mean @ mean, _EPS)
            residual = target - features @ mean
            new_beta = (n - gamma) / jnp.maximum(residual @ residual, _EPS)
            return new_alpha, new_beta, alpha / beta, iteration + 1

        def not_converged(carry: tuple) -> jax.Array:
            alpha, beta, previous_ratio, iteration = carry
            moved = jnp.abs(alpha / beta - previous_ratio) > 1e-3 * previous_ratio
            return moved & (iteration < max_iterations)

        alpha, beta, _, _ = jax.lax.while_loop(
            not_converged, update, update((jnp.float32(1.0), jnp.float32(1.0), jnp.float32(jnp.inf), jnp.int32(0)))
        )
        mean = posterior_mean(alpha, beta)
        residual = target - features @ mean
        log_evidence = (
            0.5 * n * jnp.log(beta)
            + 0.5 * d * jnp.log(alpha)
            - 0.5 * n * jnp.log(2 * jnp.pi)
            - 0.5 * beta * (residual @ residual)
            - 0.5 * alpha * (mean @ mean)
            - 0.5 * jnp.sum(jnp.log(alpha + beta * eigenvalues))
        )
        return log_evidence / n

    return jnp.mean(jax.vmap(evidence, in_axes=1)(_one_hot(labels, num_classes)))
