"""Swin V2 (cosine attention, the continuous position bias MLP with pretrained window sizes, post-norm blocks,
shifted windows with padding, the backbone's feature maps) against Hugging Face's PyTorch models, converted from
the files they write, on random weights that are never zero."""

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


def test_swinv2_classifier_stage_by_stage_and_backbone_maps(tmp_path):
    # 22 px in 2-px patches: an 11x11 grid, padded to whole 3x3 windows; merged (padded) to 6x6, then 3x3, where
    # Hugging Face fixes a 2x2 unshifted window (from the configured grid, 11 // 4).
    fields = dict(
        image_size=22, patch_size=2, embed_dim=8, depths=[2, 2, 1], num_heads=[2, 2, 4], window_size=3,
        pretrained_window_sizes=[2, 0, 4], mlp_ratio=2.0, layer_norm_eps=1e-6, drop_path_rate=0.3,
    )  # fmt: skip
    reference = randomise(
        transformers.Swinv2ForImageClassification(transformers.Swinv2Config(**fields, num_labels=3)), 0
    )
    reference.save_pretrained(tmp_path)
    torch.manual_seed(0)
    pixels = torch.randn(2, 3, 22, 22)
    with torch.no_grad():
        expected = reference(pixel_values=pixels).logits.numpy()
    model, variables, report = load_pretrained(tmp_path, verbose=False)
    assert not report.missing and not report.unexpected, report
    assert model.pretrained_window_sizes == (2, 0, 4) and model.num_classes == 3
    assert max_abs(jax.jit(model.apply)(variables, _nhwc(pixels)), expected) < TOL
    # Loaded parameters are the file's after transposes only; the key projection has no bias.
    saved = load_file(tmp_path / "model.safetensors")
    attn, prefix = variables["params"]["stage_1"]["block_1"]["attn"], "swinv2.encoder.layers.1.blocks.1.attention.self."
    np.testing.assert_array_equal(attn["logit_scale"], saved[prefix + "logit_scale"])
    np.testing.assert_array_equal(
        attn["cpb_mlp"]["fc2"]["kernel"], saved[prefix + "continuous_position_bias_mlp.2.weight"].T
    )
    assert set(attn["key"]) == {"kernel"}

    # Stage by stage in float64: float32 rounding, amplified by the cosine attention's ~10x logit scale and the
    # post-norm residual stream, reaches 2e-5 in the last stage's outputs; in float64 the port agrees to 1e-14.
    reference = reference.double()
    backbone = transformers.Swinv2Backbone(
        transformers.Swinv2Config(**fields, out_features=["stage1", "stage2", "stage3"])
    ).double().eval()  # fmt: skip
    state_dict = {k.removeprefix("swinv2."): v for k, v in reference.state_dict().items()}
    assert not backbone.load_state_dict(state_dict, strict=False).missing_keys
    with torch.no_grad():
        expected = reference(pixel_values=pixels.double(), output_hidden_states=True).reshaped_hidden_states
        expected_maps = backbone(pixel_values=pixels.double()).feature_maps
    with jax.enable_x64(True):
        model64 = model.clone(dtype=jnp.float64)
        images = jnp.asarray(pixels.double().numpy().transpose(0, 2, 3, 1))
        _, state = jax.jit(lambda v, x: model64.apply(v, x, mutable=["intermediates"]))(variables, images)
        maps = models.feature_maps(model64, variables, images, layers=[0, 1, 2])
    hidden = state["intermediates"]["hidden_states"]
    assert len(hidden) == len(expected) == 4
    for i, (ours, theirs) in enumerate(zip(hidden, expected, strict=True)):
        assert max_abs(ours, theirs.numpy().transpose(0, 2, 3, 1)) < 1e-12, f"hidden state {i}"
    # The backbone's feature maps: each stage before patch merging (no norms of its own).
    assert [(name, fm.features.shape[1:]) for name, fm in maps.items()] == [
        ("stage_0", (11, 11, 8)),
        ("stage_1", (6, 6, 16)),
        ("stage_2", (3, 3, 32)),
    ]
    for (name, fm), theirs in zip(maps.items(), expected_maps, strict=True):
        assert max_abs(fm.features, theirs.numpy().transpose(0, 2, 3, 1)) < 1e-12, name
