import jax
import jax.numpy as jnp
import numpy as np
import optax

from jtl.cadence import is_time
from jtl.objectives.classification import cross_entropy_and_accuracy


def test_cadences_are_independent_and_fire_at_the_end():
    total = 25
    evals = [s for s in range(1, total + 1) if is_time(s, 10, total)]
    checkpoints = [s for s in range(1, total + 1) if is_time(s, 4, total)]
    assert evals == [10, 20, 25] and checkpoints == [4, 8, 12, 16, 20, 24, 25]
    assert [s for s in range(1, total + 1) if is_time(s, 0, total)] == [25]


def test_label_smoothing_matches_the_formula():
    logits = jax.random.normal(jax.random.PRNGKey(0), (6, 4))
    labels = jnp.array([0, 1, 2, 3, 0, 1])
    loss, accuracy = cross_entropy_and_accuracy(logits, {"label": labels}, 4, 0.1)
    targets = jax.nn.one_hot(labels, 4) * 0.9 + 0.1 / 4
    expected = -jnp.mean(jnp.sum(targets * jax.nn.log_softmax(logits), -1))
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    assert float(accuracy) == float(jnp.mean(jnp.argmax(logits, -1) == labels))
    plain, _ = cross_entropy_and_accuracy(logits, {"label": labels}, 4, 0.0)
    np.testing.assert_allclose(plain, optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), rtol=1e-6)
