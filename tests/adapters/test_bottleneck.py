import jax
import numpy as np
import optax
import pytest

import jtl.masking as jm
from jtl import models
from jtl.adapters import BottleneckSpec, merge_adapters, trainable_patterns, with_adapters
from jtl.objectives import Classification
from jtl.step import freeze, init_state, make_train_step


@pytest.mark.parametrize("name", ["vit-testing", "bert-testing"])
def test_houlsby_starts_as_the_identity_then_changes_the_output(name):
    model = models.create(name, num_classes=3, head_zero_init=False)
    variables = models.init(model)
    spec = BottleneckSpec.houlsby(4)
    params = spec.add(variables["params"], jax.random.PRNGKey(0))
    adapted = with_adapters(model, spec)
    inputs = model.example_inputs(2)
    np.testing.assert_array_equal(adapted.apply({"params": params}, *inputs), model.apply(variables, *inputs))
    layers = sorted(n.removesuffix("/adapter_up_kernel") for n, _ in jm.named_leaves(params) if "adapter_up_k" in n)
    assert layers == [f"encoder/block_{i}/{layer}" for i in (0, 1) for layer in ("attn/out", "mlp/fc2")]
    key = jax.random.PRNGKey(1)
    # A constant shift of every feature would vanish in the LayerNorms: perturb the up-projections' kernels.
    trained = jm.map_with_names(
        lambda n, x: x + 0.5 * jax.random.normal(key, x.shape) if n.endswith("adapter_up_kernel") else x, params
    )
    assert not np.allclose(adapted.apply({"params": trained}, *inputs), model.apply(variables, *inputs), atol=1e-3)


def test_only_adapters_and_head_change_in_a_train_step():
    model = models.create("vit-testing", num_classes=3)
    spec = BottleneckSpec.pfeiffer(4, activation="gelu")
    params = spec.add(models.init(model)["params"], jax.random.PRNGKey(0))
    trainable = list(trainable_patterns(spec))
    tx = freeze(optax.adam(1e-2), trainable)
    step = jax.jit(make_train_step(with_adapters(model, spec), Classification(3), tx, trainable))
    state = init_state({"params": params}, tx)
    rng = np.random.default_rng(0)
    batch = {"image": rng.normal(size=(8, 16, 16, 3)).astype(np.float32), "label": rng.integers(0, 3, 8)}
    for _ in range(3):  # the zero-initialised head moves first, then the up-projections, then the rest
        state, _ = step(state, batch)
    for (name, before), (_, after) in zip(jm.named_leaves(params), jm.named_leaves(state.params), strict=True):
        if "/adapter_" in name or name.startswith("head/"):
            assert not np.array_equal(before, after), name
        else:
            assert np.array_equal(before, after), name


def test_vit_b_houlsby_trainable_count():
    model = models.create("vit-b16", num_classes=10)
    spec = BottleneckSpec.houlsby(64)
    params = jax.eval_shape(lambda: spec.add(models.init(model)["params"], jax.random.PRNGKey(0)))
    patterns = list(trainable_patterns(spec))
    mask = jax.tree_util.tree_leaves(jm.select(params, patterns))
    trainable = sum(x.size for x, t in zip(jax.tree_util.tree_leaves(params), mask, strict=True) if t)
    # 12 blocks x 2 adapters x (768 x 64 + 64 + 64 x 768 + 768), plus the 768 x 10 head.
    assert trainable == 12 * 2 * (768 * 64 + 64 + 64 * 768 + 768) + 768 * 10 + 10 == 2_386_954


def test_not_mergeable_and_unknown_activation():
    params = models.init(models.create("vit-testing", num_classes=3))["params"]
    spec = BottleneckSpec.pfeiffer(4)
    with pytest.raises(ValueError, match="bottleneck adapters cannot be merged"):
        merge_adapters(spec.add(params, jax.random.PRNGKey(0)), spec)
    with pytest.raises(ValueError, match=r"activation 'swish': expected one of \['gelu', 'gelu_tanh'"):
        BottleneckSpec(activation="swish").add(params, jax.random.PRNGKey(0))
