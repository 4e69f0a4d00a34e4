"""DINOv2 (with SwiGLU, with registers, at a new resolution) against Hugging Face's PyTorch models, converted from
the files they write, on random weights that are never zero."""

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jtl.weights import load_pretrained  # noqa: E402
from tests.parity import TOL, jit_apply, max_abs, randomise  # noqa: E402


def _nhwc(pixels):
    return jnp.asarray(pixels.numpy().transpose(0, 2, 3, 1))


def _config(cls, **changes):
    fields = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, image_size=16, patch_size=4)
    return cls(**fields, **changes)


def test_dinov2_swiglu_classifier_layer_by_layer(tmp_path):
    config = _config(transformers.Dinov2Config, use_swiglu_ffn=True, layerscale_value=0.3, num_labels=3)
    reference = randomise(transformers.Dinov2ForImageClassification(config), 0)
    reference.save_pretrained(tmp_path)
    pixels = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = reference(pixel_values=pixels, output_hidden_states=True)

    model, variables, report = load_pretrained(tmp_path, verbose=False)
    assert not report.missing and not report.unexpected, report
    assert model.swiglu and model.mlp_dim == 88 and model.num_classes == 3
    logits, state = jit_apply(model, variables, _nhwc(pixels), mutable=["intermediates"])
    hidden = state["intermediates"]["encoder"]["hidden_states"]
    assert len(hidden) == len(expected.hidden_states) == 3
    for i, (ours, theirs) in enumerate(zip(hidden, expected.hidden_states, strict=True)):
        assert max_abs(ours, theirs.numpy()) < TOL, f"hidden state {i}"
    assert max_abs(logits, expected.logits.numpy()) < TOL
    # Loaded parameters are the file's after transposes only.
    saved = load_file(tmp_path / "model.safetensors")
    block_1, block_0 = variables["params"]["encoder"]["block_1"], variables["params"]["encoder"]["block_0"]
    np.testing.assert_array_equal(
        block_1["mlp"]["fc1"]["kernel"], saved["dinov2.encoder.layer.1.mlp.weights_in.weight"].T
    )
    np.testing.assert_array_equal(block_0["scale2"]["scale"], saved["dinov2.encoder.layer.0.layer_scale2.lambda1"])


def test_dinov2_with_registers_at_a_new_resolution(tmp_path):
    config = _config(
        transformers.Dinov2WithRegistersConfig,
        num_register_tokens=3,
        layer_norm_eps=1e-5,
        hidden_act="gelu_new",
        drop_path_rate=0.1,
        num_labels=4,
    )
    reference = randomise(transformers.Dinov2WithRegistersForImageClassification(config), 1)
    reference.save_pretrained(tmp_path)
    pixels = torch.randn(2, 3, 24, 20)  # Hugging Face interpolates the 4x4 position grid to 6x5 on every call
    with torch.no_grad():
        expected = reference(pixel_values=pixels).logits.numpy()

    model, variables, report = load_pretrained(tmp_path, image_size=(24, 20), verbose=False)
    assert not report.missing and not report.unexpected, report
    assert report.resized == [("params/embed/pos_embedding", (1, 17, 32), (1, 31, 32))]
    assert model.num_registers == 3 and model.gelu_approximate and model.layer_norm_eps == 1e-5
    assert max_abs(jit_apply(model, variables, _nhwc(pixels)), expected) < TOL

    # The backbone alone (the hub's facebook/dinov2-* checkpoints have no classifier): the pooled features are
    # the class token beside the mean of the patch tokens, registers left out.
    backbone, backbone_variables, _ = load_pretrained(tmp_path, num_classes=0, image_size=(24, 20), verbose=False)
    with torch.no_grad():
        tokens = reference.dinov2_with_registers(pixel_values=pixels).last_hidden_state.numpy()
    pooled = np.concatenate([tokens[:, 0], tokens[:, 4:].mean(axis=1)], axis=-1)
    assert max_abs(jit_apply(backbone, backbone_variables, _nhwc(pixels)), pooled) < TOL
