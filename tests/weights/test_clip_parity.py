"""CLIP (both towers, the dual model, the zero-shot head, the image classifier at a new resolution) against Hugging
Face's PyTorch models, converted from the files they write, on random weights that are never zero."""

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jtl import models  # noqa: E402
from jtl.models import clip  # noqa: E402
from jtl.weights import load_pretrained  # noqa: E402
from tests.parity import TOL, assert_hidden_states_match, jit_apply, max_abs, nhwc, randomise  # noqa: E402

VISION = dict(
    hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, image_size=16, patch_size=4
)
TEXT = dict(hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=3, vocab_size=40)
TEXT_IDS = [[38, 5, 6, 39, 1, 1], [38, 7, 39, 1, 1, 1], [38, 9, 10, 11, 12, 39]]  # bos ... eos, then padding


def test_clip_dual_model_towers_and_zero_shot_head(tmp_path):
    config = transformers.CLIPConfig(
        vision_config={**VISION, "layer_norm_eps": 1e-6},
        text_config={
            **TEXT,
            "hidden_act": "gelu",
            "max_position_embeddings": 8,
            "eos_token_id": 39,
            "bos_token_id": 38,
        },
        projection_dim=12,
        logit_scale_init_value=2.0,
    )
    reference = randomise(transformers.CLIPModel(config), 0)
    reference.save_pretrained(tmp_path)
    pixels, ids = torch.randn(2, 3, 16, 16), torch.tensor(TEXT_IDS)
    mask = (ids != 1).long()
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask, pixel_values=pixels, output_hidden_states=True)

    model, variables, report = clip.load_dual(tmp_path, verbose=False)
    assert not report.missing and not report.unexpected, report
    assert model.vision.projection_dim == model.text.projection_dim == 12 and model.text.hidden_act == "gelu"
    assert model.vision.layer_norm_eps == 1e-6 and model.text.eos_token_id == 39
    logits, state = jit_apply(
        model, variables, nhwc(pixels), jnp.asarray(ids), jnp.asarray(mask), mutable=["intermediates"]
    )
    assert_hidden_states_match(
        state["intermediates"]["vision"]["encoder"]["hidden_states"],
        expected.vision_model_output.hidden_states,
        "vision",
    )
    assert_hidden_states_match(
        state["intermediates"]["text"]["encoder"]["hidden_states"], expected.text_model_output.hidden_states, "text"
    )
    assert max_abs(logits, expected.logits_per_image.numpy()) < TOL
    image_embeds = jit_apply(model, variables, nhwc(pixels), method="encode_image")
    assert max_abs(image_embeds, expected.image_embeds.numpy()) < TOL

    # The zero-shot classifier (one prompt a class) is the dual model's logits_per_image.
    vision, vision_variables = clip.zero_shot_classifier(model, variables, jnp.asarray(ids), jnp.asarray(mask))
    assert max_abs(jit_apply(vision, vision_variables, nhwc(pixels)), expected.logits_per_image.numpy()) < TOL
    # Two templates a class: embeddings normalised, averaged, renormalised, times the scale.
    two = jnp.asarray(np.stack([TEXT_IDS, TEXT_IDS[1:] + TEXT_IDS[:1]], axis=1))
    head = clip.zero_shot_head(model, variables, two, (two != 1).astype(jnp.int32))
    text = expected.text_embeds.numpy()
    mean = text + np.roll(text, -1, axis=0)
    mean /= np.linalg.norm(mean, axis=-1, keepdims=True)
    assert max_abs(head["kernel"], np.exp(float(reference.logit_scale.detach())) * mean.T) < TOL

    # The vision tower alone is what load_pretrained gives; the text tower comes through its layout.
    tower, tower_variables, tower_report = load_pretrained(tmp_path, verbose=False)
    assert isinstance(tower, clip.Clip) and not tower_report.missing
    embeds = jit_apply(tower, tower_variables, nhwc(pixels))
    assert max_abs(embeds / np.linalg.norm(embeds, axis=-1, keepdims=True), expected.image_embeds.numpy()) < TOL
    text_tower, text_variables, _ = load_pretrained(tmp_path, layout="hf-clip-text", num_classes=5, verbose=False)
    assert isinstance(text_tower, clip.ClipText) and text_tower.num_classes == 5
    assert jit_apply(text_tower, text_variables, jnp.asarray(ids), jnp.asarray(mask)).shape == (3, 5)

    saved = load_file(tmp_path / "model.safetensors")
    params = variables["params"]
    np.testing.assert_array_equal(
        params["vision"]["embed"]["cls"][0, 0], saved["vision_model.embeddings.class_embedding"]
    )
    np.testing.assert_array_equal(params["vision"]["embed"]["norm"]["scale"], saved["vision_model.pre_layrnorm.weight"])
    np.testing.assert_array_equal(
        params["text"]["encoder"]["block_1"]["attn"]["key"]["bias"],
        saved["text_model.encoder.layers.1.self_attn.k_proj.bias"],
    )
    np.testing.assert_array_equal(params["text"]["proj"]["kernel"], saved["text_projection.weight"].T)
    np.testing.assert_array_equal(params["logit_scale"], saved["logit_scale"])


def test_clip_text_tower_legacy_eos_pools_at_the_largest_id(tmp_path):
    # eos_token_id == 2 (openai/clip-* configs): Hugging Face pools at argmax(input_ids), not at the first eos.
    config = transformers.CLIPTextConfig(**TEXT, eos_token_id=2, hidden_act="quick_gelu", layer_norm_eps=1e-6)
    reference = randomise(transformers.CLIPTextModelWithProjection(config), 1)
    reference.save_pretrained(tmp_path)
    ids = torch.tensor([[3, 2, 39, 5, 2], [4, 30, 2, 1, 1]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask, output_hidden_states=True)

    model, variables, report = load_pretrained(tmp_path, verbose=False)
    assert not report.missing and not report.unexpected, report
    assert isinstance(model, clip.ClipText) and model.projection_dim == 512 and model.eos_token_id == 2
    embeds, state = jit_apply(model, variables, jnp.asarray(ids), jnp.asarray(mask), mutable=["intermediates"])
    assert_hidden_states_match(state["intermediates"]["encoder"]["hidden_states"], expected.hidden_states, "text")
    assert max_abs(embeds, expected.text_embeds.numpy()) < TOL


def test_clip_image_classifier_at_a_new_resolution_and_feature_maps(tmp_path):
    config = transformers.CLIPConfig(vision_config={**VISION, "hidden_act": "gelu_new"}, text_config=TEXT, num_labels=3)
    reference = randomise(transformers.CLIPForImageClassification(config), 2)
    reference.save_pretrained(tmp_path)
    pixels = torch.randn(2, 3, 24, 20)  # Hugging Face interpolates the 4x4 position grid to 6x5
    with torch.no_grad():
        expected = reference(pixel_values=pixels, output_hidden_states=True, interpolate_pos_encoding=True)

    model, variables, report = load_pretrained(tmp_path, image_size=(24, 20), verbose=False)
    assert not report.missing and not report.unexpected, report
    assert report.resized == [("params/embed/pos_embedding", (1, 17, 32), (1, 31, 32))]
    assert model.pooling == "mean" and model.num_classes == 3 and model.hidden_act == "gelu_new"
    logits, state = jit_apply(model, variables, nhwc(pixels), mutable=["intermediates"])
    assert_hidden_states_match(state["intermediates"]["encoder"]["hidden_states"], expected.hidden_states, "vision")
    assert max_abs(logits, expected.logits.numpy()) < TOL

    maps = models.feature_maps(model, variables, nhwc(pixels), layers=[0, 1])
    assert [(name, fm.features.shape, fm.stride) for name, fm in maps.items()] == [
        ("block_0", (2, 6, 5, 32), 4),
        ("block_1", (2, 6, 5, 32), 4),
    ]
    tokens = expected.hidden_states[2].numpy()[:, 1:].reshape(2, 6, 5, 32)
    assert max_abs(maps["block_1"].features, tokens) < TOL

    # One input channel: the RGB patch embedding summed over its input channels.
    grey, grey_variables, _ = load_pretrained(tmp_path, num_channels=1, verbose=False)
    with torch.no_grad():
        expected_grey = reference(pixel_values=pixels[:, :1, :16, :16].repeat(1, 3, 1, 1)).logits.numpy()
    assert max_abs(jit_apply(grey, grey_variables, nhwc(pixels[:, :1, :16, :16])), expected_grey) < TOL
