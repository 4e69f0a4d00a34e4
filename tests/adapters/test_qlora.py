import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jtl.masking as jm
from jtl import models
from jtl.adapters import QLoRASpec, merge_adapters, split_adapters, unmerge_adapters, with_adapters
from jtl.objectives import Classification
from jtl.step import freeze, init_state, make_train_step


def _inputs(model, seed=0):
    """A batch that is not all zeros (the models' example inputs are)."""
    rng = np.random.default_rng(seed)
    if isinstance(model, models.Bert):
        return jnp.asarray(rng.integers(0, model.vocab_size, (4, 8))), jnp.ones((4, 8), jnp.int32)
    return (jnp.asarray(rng.normal(size=(4, model.image_size, model.image_size, 3)), jnp.float32),)


def _bits(dtype):
    dtype = jnp.dtype(dtype)
    return jnp.iinfo(dtype).bits if jnp.issubdtype(dtype, jnp.integer) else jnp.finfo(dtype).bits


# Relative (Frobenius) errors against float32, measured on the randomly initialised testing models (blocks of 16
# or 32 inputs there): each kernel's (int8 0.6%, nf4 9.5%, as expected of 4-bit codes on Gaussian weights), and the
# logits' after 12 quantized layers (int8 1.5%, nf4 23-26%: a random network compounds its layers' noise).
KERNEL_BOUNDS = {"int8": 0.008, "nf4": 0.11}
LOGIT_BOUNDS = {"int8": 0.02, "nf4": 0.3}


@pytest.mark.parametrize("name", ["vit-testing", "bert-testing"])
@pytest.mark.parametrize("fmt", ["int8", "nf4"])
def test_starts_as_the_base_model_on_dequantized_kernels(name, fmt):
    model = models.create(name, num_classes=3, head_zero_init=False)
    variables = models.init(model)
    spec = QLoRASpec(rank=4, format=fmt)
    params = spec.add(variables["params"], jax.random.PRNGKey(0))
    inputs = _inputs(model)
    out = with_adapters(model, spec).apply({"params": params}, *inputs)
    dequantized = merge_adapters(params, spec)  # lora_b is zero: the dequantized kernels
    np.testing.assert_array_equal(out, model.apply({"params": dequantized}, *inputs))
    full = model.apply(variables, *inputs)
    error = float(jnp.linalg.norm(out - full) / jnp.linalg.norm(full))
    assert 0 < error < LOGIT_BOUNDS[fmt], error
    kernels, dequantized = dict(jm.named_leaves(variables["params"])), dict(jm.named_leaves(dequantized))
    errors = [
        float(jnp.linalg.norm(dequantized[n] - kernels[n]) / jnp.linalg.norm(kernels[n]))
        for n in kernels
        if n.startswith("encoder/block_") and n.endswith("/kernel")
    ]
    assert len(errors) == 12 and 0 < max(errors) < KERNEL_BOUNDS[fmt], errors
    qdtype = {"int8": jnp.int8, "nf4": jnp.uint8}[fmt]  # NF4: two 4-bit codes to a byte
    layers = [n for n, _ in jm.named_leaves(params) if n.endswith("/kernel_q")]
    assert len(layers) == 2 * 6 and "encoder/block_1/mlp/fc2/kernel_q" in layers
    assert all(x.dtype == qdtype for n, x in jm.named_leaves(params) if n.endswith("/kernel_q"))
    assert not any(n.startswith("encoder/block_") and n.endswith("/kernel") for n, _ in jm.named_leaves(params))


def test_nf4_base_is_an_eighth_of_float32_plus_scales():
    model = models.create("vit-b16", num_classes=10)
    spec = QLoRASpec(format="nf4")
    base = jax.eval_shape(lambda: models.init(model)["params"])
    params = jax.eval_shape(lambda: spec.add(models.init(model)["params"], jax.random.PRNGKey(0)))
    kernels = [x for n, x in jm.named_leaves(base) if n.startswith("encoder/") and n.endswith("/kernel")]
    codes = [x for n, x in jm.named_leaves(params) if n.endswith("/kernel_q")]
    scales = [x for n, x in jm.named_leaves(params) if n.endswith("/kernel_scale")]
    # 12 blocks x (4 attention 768 x 768 + 768 x 3072 + 3072 x 768) kernels.
    elements = 12 * (4 * 768 * 768 + 2 * 768 * 3072)
    assert sum(x.size for x in kernels) == 2 * sum(x.size for x in codes) == elements
    fp32_bytes = sum(x.size * _bits(x.dtype) // 8 for x in kernels)
    # Packed two to a byte: what the host, device and checkpoints hold.
    assert all(x.dtype == jnp.uint8 for x in codes)
    code_bytes = sum(x.size * _bits(x.dtype) // 8 for x in codes)
    scale_bytes = sum(x.size * _bits(x.dtype) // 8 for x in scales)
    assert fp32_bytes == 4 * elements and code_bytes == elements // 2 == fp32_bytes // 8
    assert scale_bytes == elements // 64 * 4  # one float32 absmax per 64 inputs
    assert {x.shape for x in scales} == {(12, 768), (12, 3072), (48, 768)}


def test_only_adapters_and_head_change_in_a_train_step():
    model = models.create("vit-testing", num_classes=3)
    spec = QLoRASpec(rank=4, format="nf4")
    params = spec.add(models.init(model)["params"], jax.random.PRNGKey(0))
    trainable = [*spec.trainable, "head/.*"]
    tx = freeze(optax.adam(1e-2), trainable)
    step = jax.jit(make_train_step(with_adapters(model, spec), Classification(3), tx, trainable))
    state = init_state({"params": params}, tx)
    rng = np.random.default_rng(0)
    batch = {"image": rng.normal(size=(8, 16, 16, 3)).astype(np.float32), "label": rng.integers(0, 3, 8)}
    for _ in range(3):  # the zero-initialised head moves first, then lora_b, then lora_a
        state, _ = step(state, batch)
    for (name, before), (_, after) in zip(jm.named_leaves(params), jm.named_leaves(state.params), strict=True):
        assert before.dtype == after.dtype, name
        if "lora_" in name or name.startswith("head/"):
            assert not np.array_equal(before, after), name
        else:
            assert np.array_equal(before, after), name


def test_merge_runs_the_base_model_and_unmerge_gives_the_quantized_tree_back():
    model = models.create("vit-testing", num_classes=3, head_zero_init=False)
    spec = QLoRASpec(rank=4, format="int8")
    params = spec.add(models.init(model)["params"], jax.random.PRNGKey(0))
    params = jm.map_with_names(lambda n, x: x + 0.2 if n.endswith("lora_b") else x, params)
    (x,) = _inputs(model)
    merged = merge_adapters(params, spec)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(merged))
    adapted = with_adapters(model, spec).apply({"params": params}, x)
    np.testing.assert_allclose(model.apply({"params": merged}, x), adapted, atol=1e-5)
    _, adapters = split_adapters(params, spec)
    restored = unmerge_adapters(merged, adapters, spec)
    assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(params)
    for (name, a), (_, b) in zip(jm.named_leaves(restored), jm.named_leaves(params), strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b), name


def test_unknown_format_is_an_error():
    params = models.init(models.create("vit-testing", num_classes=3))["params"]
    with pytest.raises(ValueError, match=r"format 'int4': expected one of \['int8', 'nf4'\]"):
        QLoRASpec(format="int4").add(params, jax.random.PRNGKey(0))
