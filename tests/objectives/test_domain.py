"""Domain-adaptation losses against direct NumPy formulas, and gradient reversal doing what DANN needs."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jtl.objectives.adaptation import (
    cdan_inputs,
    coral,
    dann_coefficient,
    domain_adversarial_loss,
    gradient_reversal,
    mcc,
    mmd,
)


@pytest.fixture(params=[0, 1])
def features(request):
    rng = np.random.default_rng(request.param)
    source = rng.normal(size=(12, 5))
    target = rng.normal(size=(9, 5)) * 1.5 + 0.7
    return source.astype(np.float32), target.astype(np.float32)


def test_mmd_matches_the_formula(features):
    source, target = (x.astype(np.float64) for x in features)
    both = np.concatenate([source, target])
    d2 = ((both[:, None, :] - both[None, :, :]) ** 2).sum(-1)
    total = len(both)
    base = d2.sum() / (total * total - total)
    multipliers = (0.25, 0.5, 1.0, 2.0, 4.0)
    k = sum(np.exp(-d2 / (m * base)) for m in multipliers)
    n = len(source)
    expected = k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean()
    np.testing.assert_allclose(jax.jit(mmd)(*features), expected, rtol=1e-4)
    fixed = sum(np.exp(-d2 / (m * 3.0)) for m in multipliers)
    expected_fixed = fixed[:n, :n].mean() + fixed[n:, n:].mean() - 2 * fixed[:n, n:].mean()
    np.testing.assert_allclose(mmd(*features, bandwidth=3.0), expected_fixed, rtol=1e-4)


def test_coral_matches_the_formula(features):
    source, target = (x.astype(np.float64) for x in features)
    d = source.shape[1]
    expected = np.sum((np.cov(source, rowvar=False) - np.cov(target, rowvar=False)) ** 2) / (4 * d * d)
    np.testing.assert_allclose(jax.jit(coral)(*features), expected, rtol=1e-5)


def test_cdan_inputs_and_weighted_loss_match_the_formula(features):
    source, _ = features
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(3), size=len(source)).astype(np.float32)
    inputs, weights = cdan_inputs(source, probs)
    np.testing.assert_allclose(inputs, np.einsum("nc,nd->ncd", probs, source).reshape(len(source), -1), rtol=1e-6)
    h = -(probs * np.log(probs + 1e-8)).sum(1)
    np.testing.assert_allclose(weights, 1 + np.exp(-h), rtol=1e-5)
    logits_s, logits_t = rng.normal(size=len(source)), rng.normal(size=7)
    w_t = rng.uniform(1, 2, 7)

    def bce(z, y):
        p = 1 / (1 + np.exp(-z))
        return -(y * np.log(p) + (1 - y) * np.log(1 - p))

    expected = 0.5 * (
        np.mean(bce(logits_s, 1) * weights / weights.mean()) + np.mean(bce(logits_t, 0) * w_t / w_t.mean())
    )
    got = domain_adversarial_loss(jnp.asarray(logits_s), jnp.asarray(logits_t), weights, jnp.asarray(w_t))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_mcc_matches_the_formula():
    logits = np.random.default_rng(0).normal(size=(10, 4)) * 2
    p = np.exp(logits / 2.5) / np.exp(logits / 2.5).sum(1, keepdims=True)
    h = -(p * np.log(p + 1e-8)).sum(1)
    w = 1 + np.exp(-h)
    w = len(p) * w / w.sum()
    c = (p * w[:, None]).T @ p
    c = c / c.sum(1, keepdims=True)
    expected = (c.sum() - np.trace(c)) / 4
    np.testing.assert_allclose(jax.jit(mcc)(logits), expected, rtol=1e-5)


def test_gradient_reversal_reverses_and_scales_only_upstream():
    def loss(encoder, discriminator, x, coefficient):
        features = x @ encoder
        return jnp.sum(gradient_reversal(features, coefficient) @ discriminator)

    x = jnp.array([[1.0, 2.0]])
    encoder, discriminator = jnp.eye(2), jnp.array([0.5, -1.0])
    g_encoder, g_discriminator = jax.grad(loss, argnums=(0, 1))(encoder, discriminator, x, 0.3)
    plain_encoder, plain_discriminator = jax.grad(lambda e, d: jnp.sum(x @ e @ d), argnums=(0, 1))(
        encoder, discriminator
    )
    np.testing.assert_allclose(g_encoder, -0.3 * plain_encoder, rtol=1e-6)
    np.testing.assert_allclose(g_discriminator, plain_discriminator, rtol=1e-6)  # the discriminator learns as usual
    assert float(jax.grad(lambda c: loss(encoder, discriminator, x, c))(0.3)) == 0.0


def test_adversarial_training_removes_a_domain_revealing_feature():
    """ADAPT-style check: feature 2 reveals the domain (and, in the source, correlates with the label); a linear
    encoder trained with DANN puts much less weight on it than the source-only encoder does."""
    rng = np.random.default_rng(0)
    n = 400
    labels = rng.integers(0, 2, n)
    signal = (2 * labels - 1) + rng.normal(size=n) * 0.8
    source = np.stack([signal, rng.normal(size=n), 1.0 + 0.5 * (2 * labels - 1) + 0.1 * rng.normal(size=n)], 1)
    target_signal = rng.choice([-1, 1], n) + rng.normal(size=n) * 0.8
    target = np.stack([target_signal, rng.normal(size=n), -1.0 + 0.1 * rng.normal(size=n)], 1)
    source, target = jnp.asarray(source, jnp.float32), jnp.asarray(target, jnp.float32)

    def train(adapt: bool) -> np.ndarray:
        key = jax.random.PRNGKey(0)
        params = {
            "encoder": jax.random.normal(key, (3, 4)) * 0.5,
            "head": jnp.zeros((4, 2)),
            "discriminator": jax.random.normal(jax.random.fold_in(key, 1), (4, 1)) * 0.5,
        }
        tx = optax.adam(2e-2)

        def loss_fn(params, step):
            fs, ft = source @ params["encoder"], target @ params["encoder"]
            task = optax.softmax_cross_entropy_with_integer_labels(fs @ params["head"], labels).mean()
            if not adapt:
                return task
            coefficient = dann_coefficient(step, 600)
            reversed_s = gradient_reversal(fs, coefficient)
            reversed_t = gradient_reversal(ft, coefficient)
            domain = domain_adversarial_loss(reversed_s @ params["discriminator"], reversed_t @ params["discriminator"])
            return task + domain

        @jax.jit
        def step(params, opt_state, i):
            grads = jax.grad(loss_fn)(params, i)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        opt_state = tx.init(params)
        for i in range(600):
            params, opt_state = step(params, opt_state, i)
        weights = np.abs(np.asarray(params["encoder"]))
        return weights[2].sum() / weights.sum()

    source_only, adapted = train(False), train(True)
    print(f"share of encoder weight on the domain feature: source-only {source_only:.3f}, DANN {adapted:.3f}")
    assert adapted < 0.5 * source_only, (adapted, source_only)
