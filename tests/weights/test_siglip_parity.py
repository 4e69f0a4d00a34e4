"""SigLIP and SigLIP 2 (both towers, the dual model's sigmoid logits, the zero-shot head, the image classifier at a
new resolution, NaFlex inputs) against Hugging Face's PyTorch models, converted from the files they write, on random
weights that are never zero."""

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jtl import models  # noqa: E402
from jtl.models import siglip  # noqa: E402
from jtl.weights import load_pretrained  # noqa: E402
from tests.parity import TOL, assert_hidden_states_match, jit_apply, max_abs, nhwc, randomise  # noqa: E402

VISION = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, patch_size=4)
TEXT = dict(
    hidden_size=24,
    intermediate_size=40,
    num_hidden_layers=2,
    num_attention_heads=3,
    vocab_size=40,
    max_position_embeddings=8,
    projection_size=32,
)
TEXT_IDS = [[5, 6, 7, 8, 1, 1], [9, 10, 1, 1, 1, 1], [11, 12, 13, 14, 15, 16]]


def test_siglip_dual_model_towers_and_zero_shot_head(tmp_path):
    config = transformers.SiglipConfig(
        vision_config={**VISION, "image_size": 16, "layer_norm_eps": 1e-5},
        text_config={**TEXT, "hidden_act": "gelu"},
    )
    reference = randomise(transformers.SiglipModel(config), 0)
    reference.save_pretrained(tmp_path)
    pixels, ids = torch.randn(2, 3, 16, 16), torch.tensor(TEXT_IDS)
    mask = (ids != 1).long()
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask, pixel_values=pixels, output_hidden_states=True)

    model, variables, report = siglip.load_dual(tmp_path, verbose=False)
    assert not report.missing and not report.unexpected, report
    assert model.text.projection_dim == 32 and not model.text.gelu_approximate and model.vision.layer_norm_eps == 1e-5
    args = (nhwc(pixels), jnp.asarray(ids), jnp.asarray(mask))
    logits, state = jit_apply(model, variables, *args, mutable=["intermediates"])
    vision_states = state["intermediates"]["vision"]["encoder"]["hidden_states"]
    assert_hidden_states_match(vision_states, expected.vision_model_output.hidden_states, "vision")
    text_states = state["intermediates"]["text"]["encoder"]["hidden_states"]
    assert_hidden_states_match(text_states, expected.text_model_output.hidden_states, "text")
    assert max_abs(logits, expected.logits_per_image.numpy()) < TOL

    vision, vision_variables = siglip.zero_shot_classifier(model, variables, jnp.asarray(ids), jnp.asarray(mask))
    assert max_abs(jit_apply(vision, vision_variables, nhwc(pixels)), expected.logits_per_image.numpy()) < TOL

    saved = load_file(tmp_path / "model.safetensors")
    params = variables["params"]
    pool = params["vision"]["pool"]
    np.testing.assert_array_equal(pool["attn_qkv"]["kernel"], saved["vision_model.head.attention.in_proj_weight"].T)
    np.testing.assert_array_equal(pool["probe"], saved["vision_model.head.probe"])
    np.testing.assert_array_equal(params["text"]["proj"]["bias"], saved["text_model.head.bias"])
    np.testing.assert_array_equal(params["logit_bias"], saved["logit_bias"][0])


def test_siglip_image_classifier_at_a_new_resolution_and_feature_maps(tmp_path):
    config = transformers.SiglipConfig(vision_config={**VISION, "image_size": 16}, text_config=TEXT, num_labels=3)
    reference = randomise(transformers.SiglipForImageClassification(config), 1)
    reference.save_pretrained(tmp_path)
    pixels = torch.randn(2, 3, 24, 20)  # Hugging Face interpolates the 4x4 position grid to 6x5
    with torch.no_grad():
        expected = reference(pixel_values=pixels, output_hidden_states=True, interpolate_pos_encoding=True)

    model, variables, report = load_pretrained(tmp_path, image_size=(24, 20), verbose=False)
    assert not report.missing and not report.unexpected, report
    assert report.resized == [("params/embed/pos_embedding", (1, 16, 32), (1, 30, 32))]
    assert model.pooling == "mean" and model.num_classes == 3
    logits, state = jit_apply(model, variables, nhwc(pixels), mutable=["intermediates"])
    assert_hidden_states_match(state["intermediates"]["encoder"]["hidden_states"], expected.hidden_states, "vision")
    assert max_abs(logits, expected.logits.numpy()) < TOL
    maps = models.feature_maps(model, variables, nhwc(pixels), layers=[0])
    tokens = expected.hidden_states[1].numpy().reshape(2, 6, 5, 32)
    assert maps["block_0"].stride == 4 and max_abs(maps["block_0"].features, tokens) < TOL


def test_siglip2_naflex_and_fixed_resolution(tmp_path):
    config = transformers.Siglip2Config(
        vision_config={**VISION, "num_patches": 16, "hidden_act": "gelu_new"}, text_config=TEXT
    )
    reference = randomise(transformers.Siglip2Model(config), 2)
    reference.save_pretrained(tmp_path)
    model, variables, report = siglip.load_dual(tmp_path, verbose=False)
    assert not report.missing and not report.unexpected, report
    assert model.vision.naflex and model.vision.num_positions == 16
    ids = torch.tensor(TEXT_IDS)

    # NaFlex: two images of different patch grids (3x5 and 6x2), padded to 16 patches.
    shapes = torch.tensor([[3, 5], [6, 2]])
    patches = torch.randn(2, 16, 48)
    pixel_mask = torch.zeros(2, 16, dtype=torch.long)
    pixel_mask[0, :15], pixel_mask[1, :12] = 1, 1
    with torch.no_grad():
        expected = reference(
            input_ids=ids,
            pixel_values=patches,
            pixel_attention_mask=pixel_mask,
            spatial_shapes=shapes,
            output_hidden_states=True,
        )
    inputs = tuple(jnp.asarray(x.numpy()) for x in (patches, pixel_mask, shapes))
    embeds, state = jit_apply(
        model.vision, {"params": variables["params"]["vision"]}, *inputs, mutable=["intermediates"]
    )
    assert_hidden_states_match(
        state["intermediates"]["encoder"]["hidden_states"], expected.vision_model_output.hidden_states, "vision"
    )
    image = embeds / np.linalg.norm(embeds, axis=-1, keepdims=True)
    text = jit_apply(model, variables, jnp.asarray(ids), method="encode_text")
    logits = np.exp(variables["params"]["logit_scale"]) * image @ text.T + variables["params"]["logit_bias"]
    assert max_abs(logits, expected.logits_per_image.numpy()) < TOL

    # NHWC images: every image on the same grid, as the processor would patchify them.
    pixels = torch.randn(2, 3, 12, 20)
    flat = torch.tensor(np.array(siglip.patchify(nhwc(pixels), 4)))
    with torch.no_grad():
        expected = reference.get_image_features(
            pixel_values=flat,
            pixel_attention_mask=torch.ones(2, 15, dtype=torch.long),
            spatial_shapes=torch.tensor([[3, 5]] * 2),
        )
    image = jit_apply(model, variables, nhwc(pixels), method="encode_image")
    expected = expected.pooler_output.numpy() if hasattr(expected, "pooler_output") else expected.numpy()
    assert max_abs(image, expected / np.linalg.norm(expected, axis=-1, keepdims=True)) < TOL

    # The classifier pools the mean of the real patches.
    config.num_labels = 3
    classifier = randomise(transformers.Siglip2ForImageClassification(config), 3)
    classifier.save_pretrained(tmp_path / "classifier")
    with torch.no_grad():
        expected = classifier(pixel_values=patches, pixel_attention_mask=pixel_mask, spatial_shapes=shapes).logits
    model, variables, report = load_pretrained(tmp_path / "classifier", verbose=False)
    assert not report.missing and not report.unexpected, report
    assert model.pooling == "mean" and model.num_classes == 3
    assert max_abs(jit_apply(model, variables, *inputs), expected.numpy()) < TOL

    # One input channel: the linear patch embedding summed over its input channels, patch by patch.
    grey, grey_variables, _ = load_pretrained(tmp_path / "classifier", num_channels=1, verbose=False)
    images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 12, 20, 1)), jnp.float32)
    rgb = jit_apply(model, variables, jnp.repeat(images, 3, axis=-1))
    assert max_abs(jit_apply(grey, grey_variables, images), rgb) < TOL
