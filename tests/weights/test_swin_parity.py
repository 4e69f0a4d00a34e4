"""Swin (shifted windows with padding, absolute position embeddings at a new resolution, the backbone's feature
maps) against Hugging Face's PyTorch models, converted from the files they write, on never-zero random weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jtl import models  # noqa: E402
from jtl.weights import WeightLoadError, load_pretrained  # noqa: E402
from tests.parity import TOL, max_abs, randomise  # noqa: E402


def _nhwc(pixels):
    return jnp.asarray(pixels.numpy().transpose(0, 2, 3, 1))


def _config(**changes):
    # 22 px in 2-px patches: an 11x11 grid, padded to whole 3x3 windows; merged (padded to even) to 6x6, then
    # 3x3, where the window covers the whole map and Hugging Face stops shifting.
    fields = dict(
        image_size=22, patch_size=2, embed_dim=8, depths=[2, 2, 1], num_heads=[2, 2, 4], window_size=3,
        mlp_ratio=2.0, layer_norm_eps=1e-6, drop_path_rate=0.3, use_absolute_embeddings=True,
    )  # fmt: skip
    return transformers.SwinConfig(**{**fields, **changes})


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("swin")
    reference = randomise(transformers.SwinForImageClassification(_config(num_labels=3)), 0)
    reference.save_pretrained(path)
    return path, reference


def test_swin_classifier_layer_by_layer(checkpoint):
    path, reference = checkpoint
    pixels = torch.randn(2, 3, 22, 22)
    with torch.no_grad():
        expected = reference(pixel_values=pixels, output_hidden_states=True)

    model, variables, report = load_pretrained(path, verbose=False)
    assert not report.missing and not report.unexpected, report
    assert model.window_size == 3 and model.depths == (2, 2, 1) and model.num_classes == 3
    logits, state = jax.jit(lambda v, x: model.apply(v, x, mutable=["intermediates"]))(variables, _nhwc(pixels))
    hidden = state["intermediates"]["hidden_states"]
    assert len(hidden) == len(expected.reshaped_hidden_states) == 4
    for i, (ours, theirs) in enumerate(zip(hidden, expected.reshaped_hidden_states, strict=True)):
        assert max_abs(ours, theirs.numpy().transpose(0, 2, 3, 1)) < TOL, f"hidden state {i}"
    assert max_abs(logits, expected.logits.numpy()) < TOL
    # Loaded parameters are the file's after transposes only.
    saved = load_file(path / "model.safetensors")
    block = variables["params"]["stage_1"]["block_1"]
    np.testing.assert_array_equal(
        block["attn"]["rel_pos_embedding"],
        saved["swin.encoder.layers.1.blocks.1.attention.self.relative_position_bias_table"],
    )
    np.testing.assert_array_equal(
        variables["params"]["stage_0"]["downsample"]["reduction"]["kernel"],
        saved["swin.encoder.layers.0.downsample.reduction.weight"].T,
    )
    np.testing.assert_array_equal(
        block["attn"]["key"]["bias"], saved["swin.encoder.layers.1.blocks.1.attention.self.key.bias"]
    )


def test_swin_at_a_new_resolution_from_one_channel(checkpoint):
    path, _ = checkpoint
    # A fresh reference: Hugging Face's blocks keep the window and shift they clamped on an earlier call.
    reference = transformers.SwinForImageClassification.from_pretrained(path).eval()
    grey = torch.randn(2, 1, 26, 30)
    with torch.no_grad():  # Hugging Face interpolates the 11x11 position grid to 13x15 on request
        expected = reference(pixel_values=grey.repeat(1, 3, 1, 1), interpolate_pos_encoding=True).logits.numpy()
    model, variables, report = load_pretrained(path, image_size=(26, 30), num_channels=1, verbose=False)
    assert [name for name, _, _ in report.resized] == ["params/embed/patch/kernel", "params/embed/pos_embedding"]
    assert max_abs(jax.jit(model.apply)(variables, _nhwc(grey)), expected) < TOL
    with pytest.raises(WeightLoadError, match="cannot change the window size"):
        load_pretrained(path, window_size=4, image_size=32, verbose=False)


def test_swin_feature_maps_equal_hugging_faces_backbone(tmp_path):
    # A 4x4 last stage under a 4x4 window: the backbone still shifts it (always_partition), the classifier not.
    config = _config(
        image_size=32, window_size=4, use_absolute_embeddings=False, out_features=["stage1", "stage2", "stage3"]
    )
    reference = randomise(transformers.SwinBackbone(config), 1)
    reference.save_pretrained(tmp_path)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = reference(pixel_values=pixels, output_hidden_states=True).hidden_states
    model, variables, report = load_pretrained(tmp_path, always_partition=True, verbose=False)
    assert not report.missing
    assert {key for key, _ in report.unexpected} == {
        f"hidden_states_norms.stage{s}.{p}" for s in (1, 2, 3) for p in ("weight", "bias")
    }  # the backbone's own per-stage norms, which a detection head brings
    maps = models.feature_maps(model, variables, _nhwc(pixels))
    assert [(name, fm.features.shape[1:], fm.stride) for name, fm in maps.items()] == [
        ("stem", (16, 16, 8), 2),
        ("stage_0", (16, 16, 8), 2),
        ("stage_1", (8, 8, 16), 4),
        ("stage_2", (4, 4, 32), 8),
    ]
    for (name, fm), theirs in zip(maps.items(), expected, strict=True):
        assert max_abs(fm.features, theirs.numpy().transpose(0, 2, 3, 1)) < TOL, name
