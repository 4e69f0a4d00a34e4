"""DoRA: PEFT 0.21's forward and gradients on a Dense layer, identity at initialisation, merge and unmerge."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model

from jtl import models
from jtl.adapters import (
    DoRASpec,
    LoRASpec,
    adapter_dropout,
    add_adapters,
    merge_adapters,
    merge_record,
    split_adapters,
    unmerge_adapters,
    with_adapters,
)

SPEC = DoRASpec(targets=(r"encoder/block_\d+/attn/(query|value)", r"encoder/block_\d+/mlp/fc1"), rank=4)


class _Net(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        return nn.Dense(6, name="q")(x)


class _DropQ(nn.Module):
    @nn.compact
    def __call__(self, x):
        return adapter_dropout(self, x, 0.5, True)


class _Dropped(nn.Module):
    """The adapter's dropped-out input: the same dropout stream as the layer ``q``."""

    @nn.compact
    def __call__(self, x):
        return _DropQ(name="q")(x)


class _TorchNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.q = torch.nn.Linear(5, 6)

    def forward(self, x):
        return self.q(x)


def _peft_pair(seed=0):
    """A PEFT DoRA layer with trained-looking B and magnitude, and the same weights as a jtl tree."""
    torch.manual_seed(seed)
    peft_model = get_peft_model(_TorchNet(), LoraConfig(r=2, lora_alpha=3, target_modules=["q"], use_dora=True))
    layer = peft_model.base_model.model.q
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()
        layer.lora_magnitude_vector["default"].weight.add_(torch.rand(6))
    params = {
        "q": {
            "kernel": jnp.asarray(layer.base_layer.weight.detach().numpy().T),
            "bias": jnp.asarray(layer.base_layer.bias.detach().numpy()),
            "lora_a": jnp.asarray(layer.lora_A["default"].weight.detach().numpy().T),
            "lora_b": jnp.asarray(layer.lora_B["default"].weight.detach().numpy().T),
            "lora_magnitude": jnp.asarray(layer.lora_magnitude_vector["default"].weight.detach().numpy()),
        }
    }
    return peft_model, layer, params


def test_forward_and_gradients_equal_peft():
    peft_model, layer, params = _peft_pair()
    spec = DoRASpec(targets=("q",), rank=2, alpha=3.0)
    model = with_adapters(_Net(), spec)
    x = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    np.testing.assert_allclose(
        model.apply({"params": params}, x), peft_model(torch.from_numpy(x)).detach().numpy(), atol=1e-6
    )
    # The weight norm is detached in both: the gradients of every adapter leaf agree.
    peft_model(torch.from_numpy(x)).square().sum().backward()
    grads = jax.grad(lambda p: jnp.sum(model.apply({"params": p}, x) ** 2))(params)["q"]
    np.testing.assert_allclose(grads["lora_a"], layer.lora_A["default"].weight.grad.numpy().T, atol=1e-5)
    np.testing.assert_allclose(grads["lora_b"], layer.lora_B["default"].weight.grad.numpy().T, atol=1e-5)
    np.testing.assert_allclose(
        grads["lora_magnitude"], layer.lora_magnitude_vector["default"].weight.grad.numpy(), atol=1e-5
    )


def test_dropout_recomputes_the_base_term_on_the_dropped_input_as_peft():
    _, _, params = _peft_pair()
    spec = DoRASpec(targets=("q",), rank=2, alpha=3.0, dropout=0.5)
    model = with_adapters(_Net(), spec)
    x = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    rng = jax.random.PRNGKey(3)
    out = model.apply({"params": params}, x, train=True, rngs={"dropout": rng})
    dropped = _Dropped().apply({}, x, rngs={"dropout": rng})
    assert 0 < np.sum(dropped == 0) < x.size
    q = params["q"]
    norm = jnp.linalg.norm(q["kernel"] + 1.5 * q["lora_a"] @ q["lora_b"], axis=0)
    factor = q["lora_magnitude"] / norm
    lora = dropped @ q["lora_a"] @ q["lora_b"]
    expected = x @ q["kernel"] + q["bias"] + (factor - 1) * (dropped @ q["kernel"]) + factor * 1.5 * lora
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_merge_equals_peft_merge():
    peft_model, _, params = _peft_pair()
    merged = merge_adapters(params, DoRASpec(targets=("q",), rank=2, alpha=3.0))
    peft_merged = peft_model.merge_and_unload().q.weight.detach().numpy().T
    assert sorted(merged["q"]) == ["bias", "kernel"]
    np.testing.assert_allclose(merged["q"]["kernel"], peft_merged, atol=1e-6)


@pytest.fixture(params=["vit-testing", "bert-testing"])
def adapted(request):
    model = models.create(request.param, num_classes=3, head_zero_init=False)
    variables = models.init(model)
    return model, variables, add_adapters(variables["params"], SPEC, jax.random.PRNGKey(0))


def _trained(params):
    """DoRA leaves as after some training: B off zero, magnitudes moved."""
    key = jax.random.PRNGKey(1)

    def visit(node, path=()):
        out = {k: visit(v, (*path, k)) if isinstance(v, dict) else v for k, v in node.items()}
        if "lora_b" in node:
            k = jax.random.fold_in(key, len("/".join(path)) + len(path))
            out["lora_b"] = 0.2 * jax.random.normal(k, node["lora_b"].shape)
            out["lora_magnitude"] = node["lora_magnitude"] * 1.3
        return out

    return visit(params)


def test_identity_at_init_merge_within_1e5_and_unmerge_within_1e6(adapted):
    model, variables, params = adapted
    dora = with_adapters(model, SPEC)
    inputs = model.example_inputs()
    np.testing.assert_array_equal(dora.apply({"params": params}, *inputs), model.apply(variables, *inputs))
    trained = _trained(params)
    unmerged = dora.apply({"params": trained}, *inputs)
    merged = merge_adapters(trained, SPEC)
    assert not np.allclose(unmerged, model.apply(variables, *inputs), atol=1e-3)
    np.testing.assert_allclose(model.apply({"params": merged}, *inputs), unmerged, atol=1e-5)
    back = unmerge_adapters(merged, merge_record(trained, SPEC), SPEC)
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(trained)
    for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(trained), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_unmerge_without_the_weight_norms_is_a_clear_error():
    model = models.create("vit-testing", num_classes=3)
    params = add_adapters(models.init(model)["params"], SPEC, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=r"no longer holds: unmerge with jtl.adapters.merge_record"):
        unmerge_adapters(merge_adapters(params, SPEC), split_adapters(params, SPEC)[1], SPEC)


def test_lora_and_dora_together_are_refused():
    with pytest.raises(ValueError, match=r"methods \['lora', 'dora'\] share leaf names"):
        with_adapters(models.create("vit-testing", num_classes=3), LoRASpec(), DoRASpec())


def test_magnitude_starts_at_the_kernel_norm_per_output_feature():
    params = models.init(models.create("vit-testing", num_classes=3))["params"]
    query = add_adapters(params, SPEC, jax.random.PRNGKey(0))["encoder"]["block_0"]["attn"]["query"]
    np.testing.assert_array_equal(query["lora_magnitude"], jnp.linalg.norm(query["kernel"], axis=0))
    assert query["lora_magnitude"].shape == (query["kernel"].shape[1],)
