"""export: the loader's tables run backwards; what is written loads back bit for bit."""

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from jtl import models
from jtl.masking import named_leaves
from jtl.weights import WeightLoadError, export, get_layout, load_pretrained


def _assert_same(a, b):
    pairs = zip(named_leaves(a), named_leaves(b), strict=True)
    assert all(n == m and np.array_equal(x, y) for (n, x), (m, y) in pairs)


@pytest.mark.parametrize("pooling, pre_logits", [("cls", 6), ("gap", None)])
def test_big_vision_round_trip(pooling, pre_logits, tmp_path):
    big_vision = {"gelu_approximate": True, "layer_norm_eps": 1e-6, "head_zero_init": False}
    model = models.create("vit-testing", num_classes=3, pooling=pooling, pre_logits_size=pre_logits, **big_vision)
    variables = jax.device_get(models.init(model))
    state = export(variables, get_layout("big_vision-vit"), {"num_heads": model.num_heads})
    assert state["Transformer/encoderblock_1/MultiHeadDotProductAttention_0/query/kernel"].shape == (16, 2, 8)
    assert state["Transformer/encoderblock_0/MultiHeadDotProductAttention_0/out/kernel"].shape == (2, 8, 16)
    np.savez(tmp_path / "vit.npz", **state)
    loaded, reloaded, report = load_pretrained(tmp_path / "vit.npz", verbose=False)
    assert not report.missing and not report.unexpected
    assert (loaded.pooling, loaded.pre_logits_size, loaded.num_heads) == (pooling, pre_logits, 2)
    _assert_same(reloaded, variables)


def test_torchvision_resnet_round_trip_with_batch_stats(tmp_path):
    model = models.create("resnet-testing", num_classes=4)
    variables = jax.device_get(models.init(model))
    state = export(variables, get_layout("torchvision-resnet"))
    assert state["conv1.weight"].shape == (8, 3, 7, 7) and state["fc.weight"].shape == (4, 16)
    save_file(state, str(tmp_path / "resnet.safetensors"))
    loaded, reloaded, report = load_pretrained(tmp_path / "resnet.safetensors", verbose=False)
    assert not report.missing and not report.unexpected and loaded.depths == model.depths
    _assert_same(reloaded, variables)


def test_layouts_that_cannot_run_backwards_say_why():
    vit = models.init(models.create("vit-testing", num_classes=2))
    with pytest.raises(WeightLoadError, match=r"export to 'hf-vit': \d+ problem\(s\): .*is not invertible"):
        export(vit, get_layout("hf-vit"))
    with pytest.raises(WeightLoadError, match="its table depends on the checkpoint"):
        export(models.init(models.create("vgg-testing")), get_layout("torchvision-vgg"))
    with pytest.raises(WeightLoadError, match=r"needs the model field 'num_heads' \(pass fields=\)"):
        export(vit, get_layout("big_vision-vit"))
    with pytest.raises(WeightLoadError, match=r"params/embed/patch/kernel: no rule writes it"):
        export(vit, get_layout("torchvision-resnet"))
