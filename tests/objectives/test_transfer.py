"""Domain adaptation inside a model: each method's transfer loss, the discriminator's reversed gradient, and
deep embedded validation against direct NumPy formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jtl.objectives.adaptation import (
    AdaptationSpec,
    DomainDiscriminator,
    cdan_inputs,
    coral,
    dann_coefficient,
    deep_embedded_validation,
    density_ratios,
    dev_risk,
    init_discriminator,
    mcc,
    mmd,
    transfer_loss,
)


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    return {
        "source_features": rng.normal(size=(8, 4)).astype(np.float32),
        "target_features": (rng.normal(size=(8, 4)) * 1.3 + 0.5).astype(np.float32),
        "source_logits": rng.normal(size=(8, 3)).astype(np.float32),
        "target_logits": rng.normal(size=(8, 3)).astype(np.float32),
    }


@pytest.mark.parametrize(
    ("method", "direct"),
    [
        ("mmd", lambda b: mmd(b["source_features"], b["target_features"])),
        ("coral", lambda b: coral(b["source_features"], b["target_features"])),
        ("mcc", lambda b: mcc(b["target_logits"], 2.5)),
    ],
)
def test_statistic_methods_weight_their_loss(batch, method, direct):
    spec = AdaptationSpec(method, weight=3.0)
    loss, metrics = transfer_loss(spec, None, **batch, step=0)
    np.testing.assert_allclose(loss, 3.0 * direct(batch), rtol=1e-6)
    np.testing.assert_allclose(metrics["transfer_loss"], direct(batch), rtol=1e-6)


@pytest.mark.parametrize("method", ["dann", "cdan"])
def test_adversarial_methods_train_the_discriminator_and_reverse_the_features_gradient(batch, method):
    spec = AdaptationSpec(method, weight=1.0, total_steps=100, discriminator_width=8)
    params = init_discriminator(spec, 4, 3, jax.random.PRNGKey(0))
    step = 30
    coefficient = float(dann_coefficient(step, 100))

    def loss(params, features):
        source, target = features[:8], features[8:]
        return transfer_loss(spec, params, source, target, batch["source_logits"],
                                     batch["target_logits"], step)[0]  # fmt: skip

    features = jnp.concatenate([batch["source_features"], batch["target_features"]])
    # The loss itself is the discriminator's binary cross-entropy on its own inputs.
    inputs = features
    weights = None
    if method == "cdan":
        probs = jax.nn.softmax(jnp.concatenate([batch["source_logits"], batch["target_logits"]]), -1)
        inputs, weights = cdan_inputs(features, probs)
    logits = DomainDiscriminator(8).apply({"params": params}, inputs)
    labels = np.concatenate([np.ones(8), np.zeros(8)])
    bce = np.logaddexp(0, -logits) * labels + np.logaddexp(0, logits) * (1 - labels)
    if weights is not None:
        bce = bce * np.concatenate([weights[:8] / weights[:8].mean(), weights[8:] / weights[8:].mean()])
    expected = 0.5 * (bce[:8].mean() + bce[8:].mean())
    np.testing.assert_allclose(loss(params, features), expected, rtol=1e-5)

    # The discriminator descends the loss; the features get the loss's gradient times -coefficient.
    assert jax.tree_util.tree_all(
        jax.tree_util.tree_map(lambda g: bool(jnp.any(g != 0)), jax.grad(loss)(params, features))
    )
    reversed_grad = jax.grad(loss, argnums=1)(params, features)

    def plain(features):
        inputs = features
        if method == "cdan":
            inputs, _ = cdan_inputs(features, probs)
        out = DomainDiscriminator(8).apply({"params": params}, inputs)
        w = np.ones(16) if weights is None else np.asarray(weights)
        w = np.concatenate([w[:8] / w[:8].mean(), w[8:] / w[8:].mean()])
        per = jnp.logaddexp(0, -out) * labels + jnp.logaddexp(0, out) * (1 - labels)
        return 0.5 * (jnp.mean(per[:8] * w[:8]) + jnp.mean(per[8:] * w[8:]))

    np.testing.assert_allclose(reversed_grad, -coefficient * jax.grad(plain)(features), rtol=1e-4, atol=1e-7)


def test_unknown_method_is_named():
    with pytest.raises(ValueError, match="unknown domain-adaptation method 'adda'; known: none, dann"):
        init_discriminator(AdaptationSpec("adda"), 4, 2, jax.random.PRNGKey(0))


def test_source_only_adds_nothing(batch):
    loss, metrics = transfer_loss(AdaptationSpec("none"), None, **batch, step=5)
    assert float(loss) == 0.0 and metrics == {}


def test_dev_risk_matches_the_formula():
    rng = np.random.default_rng(3)
    losses, weights = rng.exponential(size=50), rng.uniform(0.2, 3.0, size=50)
    weighted = weights * losses
    eta = -np.sum((weighted - weighted.mean()) * (weights - weights.mean())) / np.sum((weights - weights.mean()) ** 2)
    expected = weighted.mean() + eta * weights.mean() - eta
    assert dev_risk(losses, weights) == pytest.approx(expected, rel=1e-12)


def test_density_ratios_recover_a_known_ratio():
    # Source N(0, 1), target N(1, 1): p_t(x) / p_s(x) = exp(x - 1/2), log-linear, so logistic regression fits it.
    rng = np.random.default_rng(0)
    source, target = rng.normal(size=(20000, 1)), rng.normal(1.0, 1.0, size=(20000, 1))
    query = np.array([[-1.0], [0.0], [0.5], [1.5]])
    np.testing.assert_allclose(np.log(density_ratios(source, target, query)), query[:, 0] - 0.5, atol=0.05)


def test_dev_weights_validation_losses_toward_the_target():
    # Validation examples that look like the target count more: DEV's risk moves toward their losses.
    rng = np.random.default_rng(1)
    source = rng.normal(size=(4000, 2))
    target = rng.normal(size=(4000, 2)) + np.array([2.0, 0.0])
    validation = rng.normal(size=(400, 2))
    losses = np.where(validation[:, 0] > 0, 2.0, 0.0)  # the model fails where the target lies
    dev = deep_embedded_validation(source, target, validation, losses)
    assert losses.mean() == pytest.approx(1.0, abs=0.1)
    assert dev > 1.6
