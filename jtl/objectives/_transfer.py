"""Domain adaptation wired into a model: the domain discriminator, the method's transfer loss on the features and
logits of a source batch and an unlabelled target batch, and deep embedded validation (model selection that
needs no target label)."""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jtl.objectives._domain import (
    cdan_inputs,
    coral,
    dann_coefficient,
    domain_adversarial_loss,
    gradient_reversal,
    mcc,
    mmd,
)

METHODS = ("none", "dann", "cdan", "mmd", "coral", "mcc")
ADVERSARIAL = ("dann", "cdan")


class AdaptationSpec(NamedTuple):
    """Which domain-adaptation method a train step adds, and its settings.

    Attributes:
      method: one of ``METHODS`` (``"none"``: source only).
      weight: the transfer loss's weight against the source classification loss.
      total_steps: the run's length, for the reversal coefficient's warm-up.
      gamma: how fast the reversal coefficient rises (DANN's 10).
      temperature: MCC's rescaling temperature.
      entropy_conditioning: CDAN's entropy weights (CDAN+E).
      discriminator_width: the discriminator's hidden units (two hidden layers).
    """

    method: str = "dann"
    weight: float = 1.0
    total_steps: int = 1000
    gamma: float = 10.0
    temperature: float = 2.5
    entropy_conditioning: bool = True
    discriminator_width: int = 256


class DomainDiscriminator(nn.Module):
    """An MLP that tells source (logit > 0) from target features: two ReLU hidden layers, one logit.

    >>> d = DomainDiscriminator(8)
    >>> d.apply(d.init(jax.random.PRNGKey(0), jnp.ones((2, 4))), jnp.ones((2, 4))).shape
    (2,)
    """

    width: int = 256

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(jnp.float32)
        for i in range(2):
            x = nn.relu(nn.Dense(self.width, name=f"hidden_{i}")(x))
        return nn.Dense(1, name="logit")(x)[:, 0]


def check_method(method: str) -> None:
    """Raises ``ValueError`` naming the known methods when ``method`` is not one of them."""
    if method not in METHODS:
        raise ValueError(f"unknown domain-adaptation method {method!r}; known: {', '.join(METHODS)}")


def init_discriminator(spec: AdaptationSpec, feature_dim: int, num_classes: int, rng: jax.Array) -> dict | None:
    """The discriminator's parameters for an adversarial method (its input: the features, or CDAN's
    features (x) class probabilities), else None.

    Args:
      spec: the method.
      feature_dim: the backbone's feature width.
      num_classes: the classifier's classes (CDAN's map).
      rng: the initialisation key.

    Returns:
      A param tree, or None for non-adversarial methods.

    >>> params = init_discriminator(AdaptationSpec("cdan", discriminator_width=4), 3, 2, jax.random.PRNGKey(0))
    >>> params["hidden_0"]["kernel"].shape
    (6, 4)
    """
    check_method(spec.method)
    if spec.method not in ADVERSARIAL:
        return None
    width = feature_dim * num_classes if spec.method == "cdan" else feature_dim
    return DomainDiscriminator(spec.discriminator_width).init(rng, jnp.zeros((1, width)))["params"]


def transfer_loss(
    spec: AdaptationSpec,
    discriminator_params: Any,
    source_features: jax.Array,
    target_features: jax.Array,
    source_logits: jax.Array,
    target_logits: jax.Array,
    step: jax.Array,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The method's loss between the domains (weighted by ``spec.weight``), to add to the source loss.

    DANN and CDAN pass the features (CDAN: their product with the detached class probabilities) through
    :func:`gradient_reversal`, whose coefficient warms up with :func:`dann_coefficient`: the discriminator
    minimises this loss while the backbone maximises it. MMD and CORAL compare the two batches' features;
    MCC needs only the target logits.

    Args:
      spec: the method.
      discriminator_params: the discriminator's params (adversarial methods), else ignored.
      source_features: (N, D) the backbone's features on the source batch.
      target_features: (M, D) on the target batch.
      source_logits: (N, C) the classifier's logits on the source batch.
      target_logits: (M, C) on the target batch.
      step: the current step (the reversal's warm-up).

    Returns:
      ``(weighted loss, metrics)``; adversarial methods report ``domain_accuracy``, the discriminator's.

    >>> f = jnp.array([[0.0, 1.0], [1.0, 0.0]])
    >>> loss, _ = transfer_loss(AdaptationSpec("coral"), None, f, f + 1.0, f, f, 0)
    >>> float(loss)
    0.0
    """
    check_method(spec.method)
    metrics: dict[str, jax.Array] = {}
    if spec.method == "none":
        return jnp.zeros((), jnp.float32), metrics
    if spec.method == "mmd":
        loss = mmd(source_features, target_features)
    elif spec.method == "coral":
        loss = coral(source_features, target_features)
    elif spec.method == "mcc":
        loss = mcc(target_logits, spec.temperature)
    else:
        features = jnp.concatenate([source_features, target_features]).astype(jnp.float32)
        weights = None
        if spec.method == "cdan":
            # CDAN conditions on the classifier's predictions but does not train the classifier through them.
            probs = jax.lax.stop_gradient(jax.nn.softmax(jnp.concatenate([source_logits, target_logits]), -1))
            features, weights = cdan_inputs(features, probs.astype(jnp.float32), spec.entropy_conditioning)
        coefficient = dann_coefficient(step, spec.total_steps, spec.gamma)
        logits = DomainDiscriminator(spec.discriminator_width).apply(
            {"params": discriminator_params}, gradient_reversal(features, coefficient)
        )
        n = source_features.shape[0]
        source_weights, target_weights = (None, None) if weights is None else (weights[:n], weights[n:])
        loss = domain_adversarial_loss(logits[:n], logits[n:], source_weights, target_weights)
        correct = jnp.concatenate([logits[:n] > 0, logits[n:] <= 0])
        metrics = {"domain_accuracy": jnp.mean(correct.astype(jnp.float32)), "reversal": coefficient}
    return spec.weight * loss, {"transfer_loss": loss, **metrics}


def dev_risk(losses: np.ndarray, weights: np.ndarray) -> float:
    """Deep embedded validation's risk (You et al., 2019): the importance-weighted validation loss with the
    weights as a control variate, ``mean(w l) + eta mean(w) - eta`` with ``eta = -Cov(w l, w) / Var(w)``.

    Args:
      losses: (N,) per-example losses on the labelled source validation set.
      weights: (N,) their density ratios ``p_target(x) / p_source(x)``.

    Returns:
      The estimated target risk (lower is better).

    >>> round(dev_risk(np.array([1.0, 3.0]), np.array([1.0, 1.0])), 6)
    2.0
    """
    losses = np.asarray(losses, np.float64)
    weights = np.asarray(weights, np.float64)
    weighted = weights * losses
    variance = np.var(weights, ddof=1)
    eta = 0.0 if variance == 0 else -np.cov(weighted, weights)[0, 1] / variance
    return float(np.mean(weighted) + eta * np.mean(weights) - eta)


def density_ratios(source_features: np.ndarray, target_features: np.ndarray, query_features: np.ndarray) -> np.ndarray:
    """``p_target(x) / p_source(x)`` at ``query_features``, from a logistic-regression domain classifier trained
    on source (0) against target (1) features and corrected for the two sets' sizes.

    Args:
      source_features: (N, D) source training features.
      target_features: (M, D) target features.
      query_features: (Q, D) where to evaluate the ratio (the source validation set).

    Returns:
      (Q,) ratios.

    >>> rng = np.random.default_rng(0)
    >>> ratios = density_ratios(rng.normal(size=(500, 2)), rng.normal(size=(500, 2)), rng.normal(size=(5, 2)))
    >>> bool(np.all(np.abs(ratios - 1.0) < 0.2))
    True
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    inputs = np.concatenate([source_features, target_features])
    domains = np.concatenate([np.zeros(len(source_features)), np.ones(len(target_features))])
    scaler = StandardScaler().fit(inputs)
    classifier = LogisticRegression(max_iter=1000).fit(scaler.transform(inputs), domains)
    probs = np.clip(classifier.predict_proba(scaler.transform(query_features))[:, 1], 1e-6, 1 - 1e-6)
    return probs / (1.0 - probs) * len(source_features) / len(target_features)


def deep_embedded_validation(
    source_features: np.ndarray, target_features: np.ndarray, validation_features: np.ndarray, validation_losses: Any
) -> float:
    """Deep embedded validation: the target risk estimated from labelled source validation examples,
    importance-weighted by :func:`density_ratios` in the model's feature space; no target label is read.

    Args:
      source_features: (N, D) source training features.
      target_features: (M, D) unlabelled target features.
      validation_features: (V, D) source validation features.
      validation_losses: (V,) the model's losses on those examples.

    Returns:
      :func:`dev_risk` of the weighted losses (select the checkpoint that minimises it).

    >>> rng = np.random.default_rng(0)
    >>> features = rng.normal(size=(100, 2))
    >>> round(deep_embedded_validation(features, features, features[:10], np.ones(10)), 3)
    1.0
    """
    weights = density_ratios(source_features, target_features, validation_features)
    return dev_risk(np.asarray(validation_losses), weights)
