"""Domain-adaptation losses on features: gradient reversal (DANN), multi-kernel MMD (DAN), CORAL (Deep CORAL),
CDAN's conditioned adversarial loss with entropy weights, and MCC. Each is a pure, jittable function of arrays."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax


@jax.custom_vjp
def gradient_reversal(x: jax.Array, coefficient: jax.Array) -> jax.Array:
    """Identity forward; the backward pass multiplies the gradient by ``-coefficient`` (Ganin & Lempitsky, 2015).

    Args:
      x: features going into a domain discriminator.
      coefficient: the reversal strength (gets no gradient), e.g. from :func:`dann_coefficient`.

    Returns:
      ``x`` unchanged.

    >>> jax.grad(lambda x: gradient_reversal(x, 0.5).sum())(jnp.ones(2)).tolist()
    [-0.5, -0.5]
    """
    del coefficient
    return x


def _reversal_forward(x: jax.Array, coefficient: jax.Array) -> tuple:
    return x, coefficient


def _reversal_backward(coefficient: jax.Array, gradient: jax.Array) -> tuple:
    return (-coefficient * gradient).astype(gradient.dtype), jnp.zeros_like(coefficient)


gradient_reversal.defvjp(_reversal_forward, _reversal_backward)


def dann_coefficient(step: jax.Array | int, total_steps: int, gamma: float = 10.0, high: float = 1.0) -> jax.Array:
    """DANN's warm-up of the reversal coefficient: ``high * (2 / (1 + exp(-gamma p)) - 1)``, ``p = step / total``.

    Args:
      step: the current step.
      total_steps: the run's length.
      gamma: how fast it rises.
      high: its final value.

    Returns:
      The coefficient, from 0 at step 0 toward ``high``.

    >>> [round(float(dann_coefficient(s, 100)), 3) for s in (0, 10, 100)]
    [0.0, 0.462, 1.0]
    """
    progress = jnp.asarray(step, jnp.float32) / total_steps
    return high * (2.0 / (1.0 + jnp.exp(-gamma * progress)) - 1.0)


def _squared_distances(x: jax.Array) -> jax.Array:
    norms = jnp.sum(x * x, axis=1)
    return jnp.maximum(norms[:, None] + norms[None, :] - 2.0 * x @ x.T, 0.0)


def mmd(
    source: jax.Array,
    target: jax.Array,
    kernel_multipliers: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0),
    bandwidth: float | None = None,
) -> jax.Array:
    """Multi-kernel maximum mean discrepancy (DAN, Long et al. 2015): the biased estimate of MMD^2 with a sum of
    Gaussian kernels ``exp(-||a - b||^2 / (m * bandwidth))`` over the multipliers ``m``.

    Args:
      source: (N, D) source features.
      target: (M, D) target features.
      kernel_multipliers: the kernels' bandwidth multipliers.
      bandwidth: the base bandwidth; None uses the mean squared distance between all the features (with no
        gradient through it), as DAN does.

    Returns:
      A scalar, 0 when the two sets coincide.

    >>> x = jnp.array([[0.0, 0.0], [1.0, 0.0]])
    >>> float(mmd(x, x)), float(mmd(x, x + 3.0)) > 0.5
    (0.0, True)
    """
    both = jnp.concatenate([source, target]).astype(jnp.float32)
    distances = _squared_distances(both)
    n = source.shape[0]
    if bandwidth is None:
        total = both.shape[0]
        bandwidth = jax.lax.stop_gradient(jnp.sum(distances) / (total * total - total))
    kernel = sum(jnp.exp(-distances / (m * bandwidth)) for m in kernel_multipliers)
    return jnp.mean(kernel[:n, :n]) + jnp.mean(kernel[n:, n:]) - 2.0 * jnp.mean(kernel[:n, n:])


def coral(source: jax.Array, target: jax.Array) -> jax.Array:
    """Deep CORAL (Sun & Saenko, 2016): ``||C_s - C_t||_F^2 / (4 d^2)`` between the features' covariances.

    Args:
      source: (N, D) source features.
      target: (M, D) target features.

    Returns:
      A scalar.

    >>> x = jnp.array([[0.0, 1.0], [2.0, 3.0], [4.0, 1.0]])
    >>> float(coral(x, x + 5.0)), float(coral(x, 2 * x)) > 0
    (0.0, True)
    """

    def covariance(x: jax.Array) -> jax.Array:
        centred = x - x.mean(0)
        return centred.T @ centred / (x.shape[0] - 1)

    d = source.shape[1]
    difference = covariance(source.astype(jnp.float32)) - covariance(target.astype(jnp.float32))
    return jnp.sum(difference**2) / (4.0 * d * d)


def domain_adversarial_loss(
    source_logits: jax.Array, target_logits: jax.Array, source_weights=None, target_weights=None
) -> jax.Array:
    """The domain discriminator's binary cross-entropy: source labelled 1, target 0 (DANN; CDAN with weights).

    Args:
      source_logits: (N,) or (N, 1) discriminator logits on source features (after gradient reversal).
      target_logits: (M,) or (M, 1) logits on target features.
      source_weights: optional (N,) per-example weights (CDAN's entropy conditioning), normalised to mean 1.
      target_weights: optional (M,) weights, likewise.

    Returns:
      The mean loss over both domains.

    >>> round(float(domain_adversarial_loss(jnp.zeros(2), jnp.zeros(2))), 4)
    0.6931
    """
    source_losses = optax.sigmoid_binary_cross_entropy(source_logits.reshape(-1), jnp.ones(source_logits.size))
    target_losses = optax.sigmoid_binary_cross_entropy(target_logits.reshape(-1), jnp.zeros(target_logits.size))
    if source_weights is not None:
        source_losses = source_losses * source_weights / jnp.mean(source_weights)
    if target_weights is not None:
        target_losses = target_losses * target_weights / jnp.mean(target_weights)
    return 0.5 * (jnp.mean(source_losses) + jnp.mean(target_losses))


def entropy(probs: jax.Array) -> jax.Array:
    """Per-example entropy of class probabilities (N, C).

    Args:
      probs: class probabilities, shape (N, C).

    Returns:
      The entropies, shape (N,), in nats.

    >>> round(float(entropy(jnp.array([[0.5, 0.5]]))[0]), 4)
    0.6931
    """
    return -jnp.sum(probs * jnp.log(probs + 1e-8), axis=-1)


def cdan_inputs(features: jax.Array, probs: jax.Array, entropy_conditioning: bool = True) -> tuple:
    """CDAN (Long et al., 2018): the multilinear map ``f (x) g`` (outer product of features and class
    probabilities, flattened) fed to the discriminator, and the entropy weights ``1 + exp(-H(g))``.

    Args:
      features: (N, D) features.
      probs: (N, C) the classifier's probabilities (the gradient flows into both).
      entropy_conditioning: False gives weights of 1.

    Returns:
      ``(inputs (N, D * C), weights (N,))``; pass the inputs through :func:`gradient_reversal` to the
      discriminator and the weights to :func:`domain_adversarial_loss`.

    >>> inputs, weights = cdan_inputs(jnp.ones((2, 3)), jnp.array([[1.0, 0.0], [0.5, 0.5]]))
    >>> inputs.shape, [round(float(w), 3) for w in weights]
    ((2, 6), [2.0, 1.5])
    """
    inputs = (probs[:, :, None] * features[:, None, :]).reshape(features.shape[0], -1)
    weights = 1.0 + jnp.exp(-entropy(probs)) if entropy_conditioning else jnp.ones(features.shape[0])
    return inputs, jax.lax.stop_gradient(weights)


def mcc(target_logits: jax.Array, temperature: float = 2.5) -> jax.Array:
    """Minimum Class Confusion (Jin et al., 2020) on unlabelled target logits: the off-diagonal mass of the
    entropy-weighted, row-normalised class-correlation matrix of the tempered predictions, over the classes.

    Args:
      target_logits: (N, C) the classifier's logits on target inputs.
      temperature: the rescaling temperature.

    Returns:
      A scalar in [0, (C - 1) / C]; 0 when predictions are confident and never confuse classes.

    >>> float(mcc(jnp.array([[100.0, 0.0], [0.0, 100.0]])))
    0.0
    """
    probs = jax.nn.softmax(target_logits.astype(jnp.float32) / temperature, axis=-1)
    n, num_classes = probs.shape
    weights = 1.0 + jnp.exp(-entropy(probs))
    weights = jax.lax.stop_gradient(n * weights / jnp.sum(weights))
    correlation = (probs * weights[:, None]).T @ probs
    correlation = correlation / jnp.sum(correlation, axis=1, keepdims=True)
    return (jnp.sum(correlation) - jnp.trace(correlation)) / num_classes
