"""(IA)^3: PEFT 0.21's forward and merge for output- and input-scaled Dense layers; identity at initialisation."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from peft import IA3Config, get_peft_model

import jtl.masking as jm
from jtl import models
from jtl.adapters import IA3Spec, add_adapters, merge_adapters, merge_record, unmerge_adapters, with_adapters

SPEC = IA3Spec()  # ViT/BERT: key and value outputs, the MLP's fc2 input


class _Net(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        return nn.Dense(4, name="fc2")(nn.Dense(7, name="key")(x))


class _TorchNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.key, self.fc2 = torch.nn.Linear(5, 7), torch.nn.Linear(7, 4)

    def forward(self, x):
        return self.fc2(self.key(x))


def _peft_pair():
    torch.manual_seed(0)
    config = IA3Config(target_modules=["key", "fc2"], feedforward_modules=["fc2"])
    peft_model = get_peft_model(_TorchNet(), config)
    net = peft_model.base_model.model
    with torch.no_grad():
        for layer in (net.key, net.fc2):
            layer.ia3_l["default"].add_(torch.rand_like(layer.ia3_l["default"]))
    params = {
        name: {
            "kernel": jnp.asarray(layer.base_layer.weight.detach().numpy().T),
            "bias": jnp.asarray(layer.base_layer.bias.detach().numpy()),
            "ia3_scale": jnp.asarray(layer.ia3_l["default"].detach().numpy().reshape(-1)),
        }
        for name, layer in (("key", net.key), ("fc2", net.fc2))
    }
    return peft_model, params


def test_forward_and_merge_equal_peft():
    peft_model, params = _peft_pair()
    spec = IA3Spec(targets=("key", "fc2"), feedforward=("fc2",))
    assert params["key"]["ia3_scale"].shape == (7,) and params["fc2"]["ia3_scale"].shape == (7,)
    x = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
    expected = peft_model(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(with_adapters(_Net(), spec).apply({"params": params}, x), expected, atol=1e-6)
    merged = merge_adapters(params, spec)
    net = peft_model.merge_and_unload()
    for name in ("key", "fc2"):
        layer = getattr(net, name)
        np.testing.assert_allclose(merged[name]["kernel"], layer.weight.detach().numpy().T, atol=1e-6)
        # The output-scaled layer's bias is scaled; the input-scaled one's is not.
        np.testing.assert_allclose(merged[name]["bias"], layer.bias.detach().numpy(), atol=1e-6)
    np.testing.assert_array_equal(merged["fc2"]["bias"], params["fc2"]["bias"])


def test_shapes_follow_the_scaled_side():
    params = add_adapters(models.init(models.create("vit-testing", num_classes=3))["params"], SPEC, None)
    block = params["encoder"]["block_0"]
    hidden, mlp = block["mlp"]["fc2"]["kernel"].shape
    assert hidden != mlp
    assert block["mlp"]["fc2"]["ia3_scale"].shape == (hidden,)  # fc2's input: the MLP width
    assert block["attn"]["key"]["ia3_scale"].shape == (block["attn"]["key"]["kernel"].shape[1],)
    assert sorted(n for n, _ in jm.named_leaves(params) if n.endswith("ia3_scale"))[:3] == [
        "encoder/block_0/attn/key/ia3_scale",
        "encoder/block_0/attn/value/ia3_scale",
        "encoder/block_0/mlp/fc2/ia3_scale",
    ]


@pytest.mark.parametrize("name", ["vit-testing", "bert-testing"])
def test_identity_at_init_merge_within_1e5_and_unmerge_exact(name):
    model = models.create(name, num_classes=3, head_zero_init=False)
    variables = models.init(model)
    params = add_adapters(variables["params"], SPEC, None)
    ia3 = with_adapters(model, SPEC)
    inputs = model.example_inputs()
    np.testing.assert_array_equal(ia3.apply({"params": params}, *inputs), model.apply(variables, *inputs))
    key = jax.random.PRNGKey(1)
    trained = jm.map_with_names(
        lambda n, x: x + 0.3 * jax.random.uniform(jax.random.fold_in(key, len(n)), x.shape) if "ia3" in n else x,
        params,
    )
    unmerged = ia3.apply({"params": trained}, *inputs)
    merged = merge_adapters(trained, SPEC)
    assert not np.allclose(unmerged, model.apply(variables, *inputs), atol=1e-3)
    np.testing.assert_allclose(model.apply({"params": merged}, *inputs), unmerged, atol=1e-5)
    back = unmerge_adapters(merged, merge_record(trained, SPEC), SPEC)
    for (n, a), (_, b) in zip(jm.named_leaves(back), jm.named_leaves(trained), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=n)


def test_feedforward_outside_the_targets_is_an_error():
    params = models.init(models.create("vit-testing", num_classes=3))["params"]
    spec = IA3Spec(targets=(r"encoder/.*/attn/key",), feedforward=(r"encoder/.*/mlp/fc2",))
    with pytest.raises(jm.MaskingError, match=r"feedforward patterns .*mlp/fc2.* match no layer of the targets"):
        add_adapters(params, spec, None)
