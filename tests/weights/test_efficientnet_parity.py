"""EfficientNet against Hugging Face's PyTorch model, converted from the file it writes, on random weights and
BatchNorm statistics that are never trivial; odd image sizes, so that the asymmetric padding shows."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jtl import models  # noqa: E402
from jtl.weights import load_pretrained  # noqa: E402
from tests.parity import TOL, jit_apply, max_abs, nhwc, randomise, randomise_running_statistics  # noqa: E402


@pytest.mark.parametrize(
    "changes",
    [
        # Blocks 2 and 7 (stride 2) pad symmetrically: b7's depthwise_padding.
        dict(depthwise_padding=[2, 7], drop_connect_rate=0.3),
        dict(hidden_act="relu", pooling_type="max", squeeze_expansion_ratio=0.5, batch_norm_eps=1e-5,
             num_channels=1, kernel_sizes=[3, 5, 5, 3, 5, 3, 3]),
    ],
)  # fmt: skip
def test_efficientnet_layer_by_layer(changes, tmp_path):
    config = transformers.EfficientNetConfig(
        width_coefficient=0.25, depth_coefficient=0.5, hidden_dim=320, image_size=35, num_labels=3, **changes
    )
    reference = randomise(transformers.EfficientNetForImageClassification(config), 0, scale=0.1)
    randomise_running_statistics(reference, 1)
    reference.save_pretrained(tmp_path)
    pixels = torch.randn(2, config.num_channels, 35, 33)
    with torch.no_grad():
        expected = reference(pixel_values=pixels, output_hidden_states=True)

    model, variables, report = load_pretrained(tmp_path, verbose=False)
    assert not report.missing and not report.unexpected, report
    assert model.depthwise_padding == tuple(changes.get("depthwise_padding", ())) and model.num_classes == 3
    logits, state = jit_apply(model, variables, jnp.asarray(nhwc(pixels)), mutable=["intermediates"])
    hidden = [*state["intermediates"]["hidden_states"], *state["intermediates"]["encoder"]["hidden_states"]]
    assert len(hidden) == len(expected.hidden_states) == 11
    for i, (ours, theirs) in enumerate(zip(hidden, expected.hidden_states, strict=True)):
        assert max_abs(ours, nhwc(theirs)) < TOL, f"hidden state {i}"
    assert max_abs(logits, expected.logits.numpy()) < TOL
    # Loaded variables are the file's after transposes only.
    saved = load_file(tmp_path / "model.safetensors")
    block = variables["params"]["encoder"]["block_3"]
    np.testing.assert_array_equal(
        block["se"]["reduce"]["kernel"],
        saved["efficientnet.encoder.blocks.3.squeeze_excite.reduce.weight"].transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(
        variables["batch_stats"]["encoder"]["block_3"]["depthwise"]["bn"]["var"],
        saved["efficientnet.encoder.blocks.3.depthwise_conv.depthwise_norm.running_var"],
    )


def test_feature_maps_are_the_stage_ends():
    model = models.create("efficientnet-testing", num_classes=0, depth_coefficient=1.0, num_block_repeats=(1, 2, 1, 1))
    images = jnp.zeros((1, 64, 64, 3))
    # The family's selection from a compiled forward pass (models.feature_maps runs the model op by op).
    _, state = jax.jit(lambda v, x: jit_apply(model, v, x, mutable=["intermediates"]))(models.init(model), images)
    maps = models.family_of(model).feature_maps(model, state["intermediates"], None)
    blocks = state["intermediates"]["encoder"]["hidden_states"]
    assert [(name, 64 // x.shape[1]) for name, x in maps.items()] == [
        ("stage_0", 2), ("stage_1", 4), ("stage_2", 8), ("stage_3", 16)
    ]  # fmt: skip
    for x, end in zip(maps.values(), (0, 2, 3, 4), strict=True):
        np.testing.assert_array_equal(x, blocks[end])
