"""LoRA on convolutions: PEFT's Conv2d LoRA (A a convolution with the layer's geometry, B 1x1) on jtl's CNNs."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jtl.masking as jm
from jtl import models
from jtl.adapters import LoRASpec, add_adapters, merge_adapters, trainable_patterns, with_adapters
from jtl.objectives import Classification
from jtl.step import freeze, init_state, make_train_step

# Strided, padded 3x3 convolutions, 1x1 ones and Dense layers beside them; no depthwise layer.
TARGETS = {
    "resnet-testing": (r"embed/conv", r"stage_\d/block_0/conv\d", r"stage_1/block_0/shortcut/conv"),
    "convnext-testing": (r"embed/patch", r"stage_1/downsample/conv", r"stage_\d/block_0/fc1"),
    "efficientnet-testing": (r"embed/conv", r"encoder/block_\d/(expand|project)/conv", r"encoder/block_\d/se/reduce"),
}


def _setup(name):
    spec = LoRASpec(targets=TARGETS[name], rank=2)
    model = models.create(name, num_classes=3)
    variables = models.init(model)
    # A random head: the CNNs' zero-initialised one would hide every difference in the logits.
    head = {**variables["params"]["head"]}
    head["kernel"] = 1e-3 * jax.random.normal(jax.random.PRNGKey(5), head["kernel"].shape)  # logits of order 1
    variables = {**variables, "params": {**variables["params"], "head": head}}
    params = add_adapters(variables["params"], spec, jax.random.PRNGKey(0))
    return spec, model, variables, params


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_identity_at_init_and_merge_within_1e5(name):
    spec, model, variables, params = _setup(name)
    conv = params["embed"]["conv" if "conv" in params["embed"] else "patch"]
    kh, kw, fan_in, fan_out = conv["kernel"].shape
    assert conv["lora_a"].shape == (kh, kw, fan_in, 2) and conv["lora_b"].shape == (2, fan_out)
    lora = with_adapters(model, spec)
    (example,) = model.example_inputs()
    inputs = (jax.random.normal(jax.random.PRNGKey(2), (2, *example.shape[1:])),)  # the example is all zeros
    base = model.apply(variables, *inputs)
    np.testing.assert_array_equal(lora.apply({**variables, "params": params}, *inputs), base)
    key = jax.random.PRNGKey(1)
    trained = jm.map_with_names(
        lambda n, x: 0.3 * jax.random.normal(jax.random.fold_in(key, len(n)), x.shape) if n.endswith("lora_b") else x,
        params,
    )
    unmerged = lora.apply({**variables, "params": trained}, *inputs)
    merged = model.apply({**variables, "params": merge_adapters(trained, spec)}, *inputs)
    assert not np.allclose(unmerged, base, atol=1e-3)
    np.testing.assert_allclose(merged, unmerged, atol=1e-5)


def test_the_branch_uses_the_layers_strides_padding_and_dilation():
    conv = nn.Conv(6, (3, 3), strides=(2, 2), padding=((2, 1), (0, 2)), kernel_dilation=(2, 1), name="c")
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 9, 4))
    params = add_adapters(conv.init(jax.random.PRNGKey(1), x)["params"], LoRASpec(("",), rank=3), jax.random.PRNGKey(2))
    params = {**params, "lora_b": jnp.ones((3, 6))}
    merged = {"kernel": params["kernel"] + 2.0 * params["lora_a"] @ params["lora_b"], "bias": params["bias"]}
    direct = conv.apply({"params": merged}, x)
    wrapped = with_adapters(_Wrap(), LoRASpec(("c",), rank=3, alpha=6.0)).apply({"params": {"c": params}}, x)
    np.testing.assert_allclose(wrapped, direct, atol=1e-5)


class _Wrap(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        return nn.Conv(6, (3, 3), strides=(2, 2), padding=((2, 1), (0, 2)), kernel_dilation=(2, 1), name="c")(x)


@pytest.mark.parametrize("name, layer", [("efficientnet-testing", "depthwise/conv"), ("convnext-testing", "dwconv")])
def test_depthwise_convolutions_are_refused(name, layer):
    model = models.create(name, num_classes=3)
    variables = models.init(model)
    spec = LoRASpec(targets=(rf".*block_0/{layer}",), rank=2)
    params = add_adapters(variables["params"], spec, jax.random.PRNGKey(0))
    with pytest.raises(jm.MaskingError, match=r"block_0/.*a grouped convolution \(feature_group_count=\d+\)"):
        with_adapters(model, spec).apply({**variables, "params": params}, *model.example_inputs())


def test_only_adapters_and_head_change_in_a_resnet_train_step():
    spec, model, variables, params = _setup("resnet-testing")
    trainable = list(trainable_patterns(spec))
    tx = freeze(optax.adam(1e-2), trainable)
    step = jax.jit(make_train_step(with_adapters(model, spec), Classification(3), tx, trainable))
    state = init_state({**variables, "params": params}, tx)
    rng = np.random.default_rng(0)
    size = model.image_size
    batch = {"image": rng.normal(size=(8, size, size, 3)).astype(np.float32), "label": rng.integers(0, 3, 8)}
    for _ in range(2):  # lora_b moves first, then lora_a
        state, _ = step(state, batch)
    for (name, before), (_, after) in zip(jm.named_leaves(params), jm.named_leaves(state.params), strict=True):
        if "lora_" in name or name.startswith("head/"):
            assert not np.array_equal(before, after), name
        else:
            assert np.array_equal(before, after), name
