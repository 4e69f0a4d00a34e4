"""BEiT (shared and per-block relative position tables, LayerScale, both poolings, at a new resolution, the
backbone's feature maps) against Hugging Face's PyTorch models, converted from the files they write, on random
weights that are never zero."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jtl import models  # noqa: E402
from jtl.weights import load_pretrained  # noqa: E402
from tests.parity import TOL, max_abs, randomise  # noqa: E402


def _nhwc(pixels):
    return jnp.asarray(pixels.numpy().transpose(0, 2, 3, 1))


def _config(**changes):
    fields = dict(
        hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48, image_size=16, patch_size=4,
        layer_norm_eps=1e-6, drop_path_rate=0.2, use_relative_position_bias=True,
    )  # fmt: skip
    return transformers.BeitConfig(**{**fields, **changes})


def test_beit_classifier_layer_by_layer(tmp_path):
    config = _config(
        use_shared_relative_position_bias=True, use_absolute_position_embeddings=True, layer_scale_init_value=0.3,
        num_labels=3,
    )  # fmt: skip
    reference = randomise(transformers.BeitForImageClassification(config), 0)
    reference.save_pretrained(tmp_path)
    pixels = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = reference(pixel_values=pixels, output_hidden_states=True)

    model, variables, report = load_pretrained(tmp_path, verbose=False)
    assert not report.missing and not report.unexpected, report
    assert model.shared_relative_position_bias and model.relative_position_bias and model.mean_pooling
    logits, state = jax.jit(lambda v, x: model.apply(v, x, mutable=["intermediates"]))(variables, _nhwc(pixels))
    hidden = state["intermediates"]["encoder"]["hidden_states"]
    assert len(hidden) == len(expected.hidden_states) == 4
    for i, (ours, theirs) in enumerate(zip(hidden, expected.hidden_states, strict=True)):
        assert max_abs(ours, theirs.numpy()) < TOL, f"hidden state {i}"
    assert max_abs(logits, expected.logits.numpy()) < TOL
    # Loaded parameters are the file's after transposes only; the key projection has no bias.
    saved = load_file(tmp_path / "model.safetensors")
    params, prefix = variables["params"], "beit.encoder."
    table = "relative_position_bias.relative_position_bias_table"
    attn = params["encoder"]["block_2"]["attn"]
    assert set(attn["key"]) == {"kernel"}
    np.testing.assert_array_equal(attn["key"]["kernel"], saved[prefix + "layer.2.attention.attention.key.weight"].T)
    np.testing.assert_array_equal(attn["rel_pos_embedding"], saved[prefix + f"layer.2.attention.attention.{table}"])
    np.testing.assert_array_equal(params["embed"]["rel_pos_embedding"], saved[prefix + table])
    np.testing.assert_array_equal(params["encoder"]["block_1"]["scale2"]["scale"], saved[prefix + "layer.1.lambda_2"])


def test_beit_class_token_pooling_at_a_new_resolution_from_one_channel(tmp_path):
    config = _config(
        layer_scale_init_value=0.0, use_mean_pooling=False, use_absolute_position_embeddings=True,
        hidden_act="gelu_new", num_labels=2,
    )  # fmt: skip
    reference = randomise(transformers.BeitForImageClassification(config), 1)
    reference.save_pretrained(tmp_path)
    grey = torch.randn(2, 1, 24, 20)
    with torch.no_grad():  # Hugging Face interpolates the 7x7 tables to 11x9 offsets on every call at 6x5 patches
        expected = reference(pixel_values=grey.repeat(1, 3, 1, 1), interpolate_pos_encoding=True).logits.numpy()
    model, variables, report = load_pretrained(tmp_path, image_size=(24, 20), num_channels=1, verbose=False)
    assert not report.missing and not report.unexpected, report
    assert sorted(name for name, _, _ in report.resized) == [
        "params/embed/patch/kernel",
        "params/embed/pos_embedding",
        *(f"params/encoder/block_{i}/attn/rel_pos_embedding" for i in range(3)),
    ]
    assert model.layer_scale is None and not model.mean_pooling and model.gelu_approximate
    assert max_abs(jax.jit(model.apply)(variables, _nhwc(grey)), expected) < TOL


def test_beit_feature_maps_equal_hugging_faces_backbone(tmp_path):
    config = _config(use_mean_pooling=False, out_features=["stage1", "stage3"])
    reference = randomise(transformers.BeitBackbone(config), 2)
    reference.save_pretrained(tmp_path)
    pixels = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = reference(pixel_values=pixels).feature_maps
    model, variables, report = load_pretrained(tmp_path, verbose=False)
    assert not report.missing and not report.unexpected, report
    maps = models.feature_maps(model, variables, _nhwc(pixels), layers=[0, 2])
    assert [(name, fm.features.shape, fm.stride) for name, fm in maps.items()] == [
        ("block_0", (2, 4, 4, 32), 4),
        ("block_2", (2, 4, 4, 32), 4),
    ]
    for (name, fm), theirs in zip(maps.items(), expected, strict=True):
        assert max_abs(fm.features, theirs.numpy().transpose(0, 2, 3, 1)) < TOL, name
