"""Multi-scale features (``jtl.models.feature_maps``): the maps Hugging Face's backbones return, by stage, with
their strides."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jtl import models
from jtl.weights import load_pretrained
from tests.parity import randomise

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _nchw_to_nhwc(x):
    return x.numpy().transpose(0, 2, 3, 1)


def test_resnet_stages_equal_hugging_faces_backbone(tmp_path):
    config = transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16, 24], depths=[1, 1, 1], layer_type="basic",
        out_features=["stem", "stage1", "stage2", "stage3"],
    )  # fmt: skip
    reference = randomise(transformers.ResNetBackbone(config), 0, scale=0.05)
    reference.save_pretrained(tmp_path)
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference(pixel_values=pixels).feature_maps
    model, variables, _ = load_pretrained(tmp_path, verbose=False)
    maps = models.feature_maps(model, variables, jnp.asarray(_nchw_to_nhwc(pixels)))
    assert [(name, fm.stride) for name, fm in maps.items()] == [
        ("stem", 4),
        ("stage_0", 4),
        ("stage_1", 8),
        ("stage_2", 16),
    ]
    for (name, fm), theirs in zip(maps.items(), expected, strict=True):
        np.testing.assert_allclose(fm.features, _nchw_to_nhwc(theirs), rtol=1e-5, atol=1e-5, err_msg=name)


def test_dinov2_blocks_on_the_patch_grid_equal_hugging_faces_backbone(tmp_path):
    config = transformers.Dinov2WithRegistersConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=4, image_size=16, patch_size=4,
        num_register_tokens=2, out_features=["stage2", "stage4"], apply_layernorm=False,
    )  # fmt: skip
    reference = randomise(transformers.Dinov2WithRegistersBackbone(config), 1, scale=0.05)
    reference.save_pretrained(tmp_path)
    pixels = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = reference(pixel_values=pixels).feature_maps
    model, variables, _ = load_pretrained(tmp_path, verbose=False)
    maps = models.feature_maps(model, variables, jnp.asarray(_nchw_to_nhwc(pixels)), layers=[1, 3])
    assert [(name, fm.features.shape, fm.stride) for name, fm in maps.items()] == [
        ("block_1", (2, 4, 4, 32), 4),
        ("block_3", (2, 4, 4, 32), 4),
    ]
    for (name, fm), theirs in zip(maps.items(), expected, strict=True):
        np.testing.assert_allclose(fm.features, _nchw_to_nhwc(theirs), rtol=1e-5, atol=1e-5, err_msg=name)


def test_vit_and_vgg_defaults():
    vit = models.create("vit-testing", num_classes=0, num_layers=8, image_size=(16, 24))
    images = jax.random.normal(jax.random.PRNGKey(0), (1, 16, 24, 3))
    maps = models.feature_maps(vit, models.init(vit), images)
    # The last block of each quarter of the encoder, on the 4x6 grid of 4-pixel patches.
    assert {name: (fm.features.shape, fm.stride) for name, fm in maps.items()} == {
        f"block_{i}": ((1, 4, 6, 16), 4) for i in (1, 3, 5, 7)
    }
    vgg = models.create("vgg-testing", num_classes=0)
    (images,) = vgg.example_inputs()
    strides = [fm.stride for fm in models.feature_maps(vgg, models.init(vgg), images).values()]
    assert strides == [2**s for s in range(len(strides))] and len(strides) >= 2
    with pytest.raises(ValueError, match="the bert family offers no feature maps"):
        bert = models.create("bert-testing", num_classes=0)
        models.feature_maps(bert, models.init(bert), bert.example_inputs()[0])
