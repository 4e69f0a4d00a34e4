import jax
import jax.numpy as jnp
import numpy as np

from jtl.objectives.multitask import dwa_weights, gradnorm_loss, pcgrad, uncertainty_weighted_loss


def pcgrad_reference(grads, order):
    projected = []
    for i, g in enumerate(grads):
        g = g.copy()
        for j in order[i]:
            if j != i and g @ grads[j] < 0:
                g -= (g @ grads[j]) / (grads[j] @ grads[j]) * grads[j]
        projected.append(g)
    return np.sum(projected, axis=0)


def test_pcgrad_projects_hand_made_conflicting_gradients():
    grads = np.array([[1.0, 0.0, 1.0], [-2.0, 1.0, 0.0], [0.5, -1.0, -1.0]])
    tree = {"a": jnp.asarray(grads[:, :2]), "b": jnp.asarray(grads[:, 2:])}
    combined = jax.jit(pcgrad)(tree)
    expected = pcgrad_reference(grads, [range(3)] * 3)
    np.testing.assert_allclose(np.concatenate([combined["a"], combined["b"]]), expected, rtol=1e-6)
    # A projected gradient is orthogonal to the gradient it conflicted with.
    g0 = grads[0] - (grads[0] @ grads[1]) / (grads[1] @ grads[1]) * grads[1]
    assert abs(g0 @ grads[1]) < 1e-12


def test_pcgrad_leaves_agreeing_gradients_alone_and_random_order_matches_its_reference():
    agreeing = {"w": jnp.array([[1.0, 2.0], [0.5, 0.1]])}
    np.testing.assert_allclose(pcgrad(agreeing)["w"], [1.5, 2.1], rtol=1e-6)
    rng = np.random.default_rng(0)
    grads = rng.normal(size=(4, 6))
    key = jax.random.PRNGKey(7)
    orders = np.asarray(jax.vmap(lambda k: jax.random.permutation(k, 4))(jax.random.split(key, 4)))
    got = pcgrad({"w": jnp.asarray(grads, jnp.float32)}, key)["w"]
    np.testing.assert_allclose(got, pcgrad_reference(grads, orders), rtol=1e-5, atol=1e-6)


def test_uncertainty_weights_update_follows_the_formula():
    losses = jnp.array([0.5, 3.0])
    log_variances = jnp.array([0.0, 0.2])
    grad = jax.grad(uncertainty_weighted_loss, argnums=1)(losses, log_variances)
    np.testing.assert_allclose(grad, 1.0 - np.exp(-np.asarray(log_variances)) * np.asarray(losses), rtol=1e-6)
    # One SGD step: the high-loss (noisy) task's log variance rises, so its weight exp(-s) falls.
    updated = log_variances - 0.1 * grad
    assert updated[1] > log_variances[1] and updated[0] < log_variances[0]


def test_dwa_weights_follow_the_formula():
    previous, before = np.array([0.9, 0.5, 1.0]), np.array([1.0, 1.0, 1.0])
    ratios = previous / before
    expected = 3 * np.exp(ratios / 2.0) / np.exp(ratios / 2.0).sum()
    np.testing.assert_allclose(dwa_weights(jnp.asarray(previous), jnp.asarray(before)), expected, rtol=1e-6)


def test_gradnorm_weight_gradient_follows_the_formula():
    weights = jnp.array([1.0, 1.0, 1.0])
    norms = jnp.array([2.0, 1.0, 0.5])
    losses, initial = jnp.array([0.5, 0.9, 0.6]), jnp.array([1.0, 1.0, 1.0])
    alpha = 1.5
    g = np.asarray(weights * norms)
    r = np.asarray(losses / initial)
    target = g.mean() * (r / r.mean()) ** alpha
    np.testing.assert_allclose(
        gradnorm_loss(weights, norms, losses, initial, alpha), np.abs(g - target).sum(), rtol=1e-6
    )
    grad = jax.grad(gradnorm_loss)(weights, norms, losses, initial, alpha)
    np.testing.assert_allclose(grad, np.sign(g - target) * np.asarray(norms), rtol=1e-6)
    # The task whose gradient is too large for its (fast) progress is down-weighted; the slow one up-weighted.
    assert grad[0] > 0 and grad[1] < 0
