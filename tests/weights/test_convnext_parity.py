"""ConvNeXt and ConvNeXt V2 against Hugging Face's PyTorch models, converted from the files they write, on random
weights that are never zero; feature maps against ``ConvNextV2Backbone``."""

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jtl import models  # noqa: E402
from jtl.weights import load_pretrained  # noqa: E402
from tests.parity import TOL, jit_apply, max_abs, randomise  # noqa: E402


def _nhwc(x):
    return np.asarray(x.numpy().transpose(0, 2, 3, 1))


@pytest.mark.parametrize(
    "version, changes",
    [
        # LayerScale at a non-default value, stochastic depth (off in eval), a tanh GELU, one input channel,
        # 2-pixel patches, three stages.
        ("convnext", dict(layer_scale_init_value=0.5, drop_path_rate=0.1, hidden_act="gelu_new", num_channels=1,
                          patch_size=2, depths=[1, 2, 1], hidden_sizes=[8, 16, 24], num_stages=3)),
        # No LayerScale parameter at all (init value 0), ReLU.
        ("convnext", dict(layer_scale_init_value=0.0, hidden_act="relu", depths=[1, 2], hidden_sizes=[8, 16],
                          num_stages=2, layer_norm_eps=1e-6)),
        ("convnextv2", dict(drop_path_rate=0.2, depths=[1, 2], hidden_sizes=[8, 16], num_stages=2)),
    ],
)  # fmt: skip
def test_convnext_layer_by_layer(version, changes, tmp_path):
    v2 = version == "convnextv2"
    config_cls = transformers.ConvNextV2Config if v2 else transformers.ConvNextConfig
    model_cls = transformers.ConvNextV2ForImageClassification if v2 else transformers.ConvNextForImageClassification
    reference = randomise(model_cls(config_cls(num_labels=3, **changes)), 0)
    reference.save_pretrained(tmp_path)
    pixels = torch.randn(2, changes.get("num_channels", 3), 40, 36)
    with torch.no_grad():
        expected = reference(pixel_values=pixels, output_hidden_states=True)

    model, variables, report = load_pretrained(tmp_path, verbose=False)
    assert not report.missing and not report.unexpected, report
    assert model.grn == v2 and model.num_classes == 3
    logits, state = jit_apply(model, variables, jnp.asarray(_nhwc(pixels)), mutable=["intermediates"])
    hidden = state["intermediates"]["hidden_states"]
    assert len(hidden) == len(expected.hidden_states) == len(changes["depths"]) + 1
    for i, (ours, theirs) in enumerate(zip(hidden, expected.hidden_states, strict=True)):
        assert max_abs(ours, _nhwc(theirs)) < TOL, f"hidden state {i}"
    assert max_abs(logits, expected.logits.numpy()) < TOL
    # Loaded parameters are the file's after transposes (and GRN's reshape) only.
    saved = load_file(tmp_path / "model.safetensors")
    block = variables["params"]["stage_1"]["block_1"]
    np.testing.assert_array_equal(
        block["dwconv"]["kernel"], saved[f"{version}.encoder.stages.1.layers.1.dwconv.weight"].transpose(2, 3, 1, 0)
    )
    if v2:
        np.testing.assert_array_equal(
            block["grn"]["scale"], saved["convnextv2.encoder.stages.1.layers.1.grn.weight"].reshape(-1)
        )
        assert model.layer_scale is None
    elif changes["layer_scale_init_value"]:
        np.testing.assert_array_equal(
            block["scale"]["scale"], saved["convnext.encoder.stages.1.layers.1.layer_scale_parameter"]
        )
    else:
        assert model.layer_scale is None and "scale" not in block


def test_feature_maps_equal_hugging_faces_backbone(tmp_path):
    config = transformers.ConvNextV2Config(
        depths=[1, 1, 2], hidden_sizes=[8, 16, 24], num_stages=3, out_features=["stem", "stage1", "stage2", "stage3"]
    )
    reference = randomise(transformers.ConvNextV2Backbone(config), 1, scale=0.05)
    reference.save_pretrained(tmp_path)
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference(pixel_values=pixels).feature_maps
    # The backbone has neither the final norm nor a classifier, and LayerNorms each map it returns with norms
    # of its own (a detection neck's, outside jtl's feature maps: applied to them below).
    model, variables, report = load_pretrained(tmp_path, strict=False, verbose=False)
    assert [name for name, _ in report.missing] == ["params/norm/bias", "params/norm/scale"], report.missing
    assert all(name.startswith("hidden_states_norms.") for name, _ in report.unexpected), report.unexpected
    maps = models.feature_maps(model, variables, jnp.asarray(_nhwc(pixels)))
    assert [(name, fm.stride) for name, fm in maps.items()] == [
        ("stem", 4),
        ("stage_0", 4),
        ("stage_1", 8),
        ("stage_2", 16),
    ]
    for (name, fm), stage, theirs in zip(maps.items(), config.out_features, expected, strict=True):
        with torch.no_grad():
            normed = reference.hidden_states_norms[stage](
                torch.from_numpy(np.asarray(fm.features).transpose(0, 3, 1, 2).copy())
            )
        assert max_abs(_nhwc(normed), _nhwc(theirs)) < TOL, name
