"""jtl models inside Flax NNX programs (``jtl.models.to_nnx``): the same outputs as the linen model, and a train
step with ``nnx.Optimizer`` in which ``jtl.masking`` freezes the backbone."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jtl.masking as jm
from jtl import models

# A tiny config of every family: every jtl model runs inside NNX.
NAMES = [next(name for name in family.configs if name.endswith("-testing")) for family in models.families()]


@pytest.mark.parametrize("name", NAMES)
def test_an_nnx_module_holds_the_variables_and_gives_the_linen_outputs(name):
    model = models.create(name, num_classes=3)
    variables = models.init(model, seed=1)
    variables["params"]["head"] = jax.tree_util.tree_map(lambda x: x + 0.1, variables["params"]["head"])
    module = models.to_nnx(model, variables)
    inputs = model.example_inputs(2)
    if models.input_kind(model) in ("image", "audio"):
        inputs = (jax.random.normal(jax.random.PRNGKey(0), inputs[0].shape),)
    else:
        inputs = (jnp.array([[5, 6, 7, 0], [8, 9, 0, 0]]), jnp.array([[1, 1, 1, 0], [1, 1, 0, 0]]))
    # Both forward passes jitted: run eagerly, each op of the model compiles on its own (most of a minute on CPU).
    ours = nnx.jit(lambda module, *inputs: module(*inputs))(module, *inputs)
    np.testing.assert_allclose(ours, jax.jit(model.apply)(variables, *inputs), rtol=1e-6, atol=1e-6)
    held, given = dict(jm.named_leaves(nnx.state(module, nnx.Param))), dict(jm.named_leaves(variables["params"]))
    assert held.keys() == given.keys() and all(np.array_equal(held[name], given[name]) for name in given)


def test_nnx_optimizer_trains_the_head_and_jtl_masking_freezes_the_rest():
    model = models.create("vit-testing", num_classes=2, dropout_rate=0.0)
    module = models.to_nnx(model, models.init(model, seed=0))
    before = {name: np.asarray(x) for name, x in jm.named_leaves(nnx.state(module, nnx.Param))}
    optimizer = nnx.Optimizer(module, jm.freeze(optax.adam(1e-2), trainable=["head/.*"]), wrt=nnx.Param)
    images = jax.random.normal(jax.random.PRNGKey(1), (8, 16, 16, 3))
    labels = jnp.arange(8) % 2

    @nnx.jit
    def step(module, optimizer):
        def loss_fn(module):
            return optax.softmax_cross_entropy_with_integer_labels(module(images), labels).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(module)
        optimizer.update(module, grads)
        return loss

    losses = [float(step(module, optimizer)) for _ in range(10)]
    assert losses[-1] < losses[0], losses
    for name, after in jm.named_leaves(nnx.state(module, nnx.Param)):
        assert np.array_equal(before[name], after) != name.startswith("head/"), name
