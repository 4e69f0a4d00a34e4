"""MobileNetV2 against Hugging Face's PyTorch model, converted from the file it writes, on random weights and
BatchNorm statistics that are never trivial: TensorFlow's 'SAME' padding on odd and even sizes, PyTorch's
symmetric padding, a depth multiplier below 1 (with and without the fine-grained last layer), an output stride
that turns the last strides into dilations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jtl import models  # noqa: E402
from jtl.weights import load_pretrained  # noqa: E402
from tests.parity import TOL, max_abs, nhwc, randomise, randomise_running_statistics  # noqa: E402


@pytest.mark.parametrize(
    "changes, size",
    [
        (dict(depth_multiplier=0.1, expand_ratio=2.0), (37, 34)),
        (dict(depth_multiplier=0.1, expand_ratio=3.0, tf_padding=False, finegrained_output=False,
              first_layer_is_expansion=False, hidden_act="relu", num_channels=1, layer_norm_eps=1e-5), (33, 35)),
        (dict(depth_multiplier=0.2, expand_ratio=1.5, output_stride=8), (32, 32)),
    ],
)  # fmt: skip
def test_mobilenet_v2_layer_by_layer(changes, size, tmp_path):
    config = transformers.MobileNetV2Config(num_labels=3, image_size=size[0], **changes)
    reference = randomise(transformers.MobileNetV2ForImageClassification(config), 0, scale=0.1)
    randomise_running_statistics(reference, 1)
    reference.save_pretrained(tmp_path)
    pixels = torch.randn(2, config.num_channels, *size)
    with torch.no_grad():
        expected = reference(pixel_values=pixels, output_hidden_states=True)

    model, variables, report = load_pretrained(tmp_path, verbose=False)
    assert not report.missing and not report.unexpected, report
    assert model.tf_padding == changes.get("tf_padding", True) and model.num_classes == 3
    logits, state = jax.jit(lambda v, x: model.apply(v, x, mutable=["intermediates"]))(
        variables, jnp.asarray(nhwc(pixels))
    )
    hidden = state["intermediates"]["encoder"]["hidden_states"]
    assert len(hidden) == len(expected.hidden_states) == 16
    for i, (ours, theirs) in enumerate(zip(hidden, expected.hidden_states, strict=True)):
        assert max_abs(ours, nhwc(theirs)) < TOL, f"hidden state {i}"
    assert max_abs(logits, expected.logits.numpy()) < TOL
    # Loaded variables are the file's after transposes only.
    saved = load_file(tmp_path / "model.safetensors")
    np.testing.assert_array_equal(
        variables["params"]["encoder"]["block_4"]["depthwise"]["conv"]["kernel"],
        saved["mobilenet_v2.layer.4.conv_3x3.convolution.weight"].transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(
        variables["batch_stats"]["top"]["bn"]["mean"], saved["mobilenet_v2.conv_1x1.normalization.running_mean"]
    )


def test_feature_maps_are_the_last_block_at_each_resolution():
    model = models.create("mobilenet_v2-testing", num_classes=0)
    images = jnp.zeros((1, 64, 64, 3))
    # The family's selection from a compiled forward pass (models.feature_maps runs the model op by op).
    _, state = jax.jit(lambda v, x: model.apply(v, x, mutable=["intermediates"]))(models.init(model), images)
    maps = models.family_of(model).feature_maps(model, state["intermediates"], None)
    blocks = state["intermediates"]["encoder"]["hidden_states"]
    assert [(name, 64 // x.shape[1]) for name, x in maps.items()] == [(f"stage_{s}", 2 ** (s + 1)) for s in range(5)]
    for x, end in zip(list(maps.values())[1:], (1, 4, 11, 15), strict=True):
        np.testing.assert_array_equal(x, blocks[end])
