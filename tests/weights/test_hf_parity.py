"""Parity with Hugging Face's PyTorch models (the reference), converted from the files they write."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jtl.weights import load_pretrained  # noqa: E402
from tests.parity import TOL, jit_apply, max_abs, randomise  # noqa: E402


@pytest.fixture(scope="module")
def tiny_vit_config():
    return transformers.ViTConfig(
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        num_labels=5,
    )


def _save(model, tmp_path_factory, name):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp(name)
    model.eval()
    model.save_pretrained(path)
    return path


def _hidden_states(model, variables, *inputs):
    out, state = jit_apply(model, variables, *inputs, mutable=["intermediates"])
    return out, state["intermediates"]["encoder"]["hidden_states"]


def test_vit_for_image_classification_layer_by_layer(tiny_vit_config, tmp_path_factory):
    torch.manual_seed(0)
    reference = transformers.ViTForImageClassification(tiny_vit_config).eval()
    path = _save(reference, tmp_path_factory, "vit")
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = reference(pixel_values=pixels, output_hidden_states=True)

    model, variables, report = load_pretrained(path, verbose=False)
    assert not report.missing and not report.unexpected and model.num_classes == 5
    logits, hidden = _hidden_states(model, variables, jnp.asarray(pixels.numpy().transpose(0, 2, 3, 1)))
    assert len(hidden) == len(expected.hidden_states) == 4
    for i, (ours, theirs) in enumerate(zip(hidden, expected.hidden_states, strict=True)):
        assert max_abs(ours, theirs.numpy()) < TOL, f"hidden state {i}"
    assert max_abs(logits, expected.logits.numpy()) < TOL


def test_vit_model_pooler_becomes_pre_logits(tiny_vit_config, tmp_path_factory):
    torch.manual_seed(1)
    reference = transformers.ViTModel(tiny_vit_config, add_pooling_layer=True).eval()
    path = _save(reference, tmp_path_factory, "vit_in21k_like")
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = reference(pixel_values=pixels).pooler_output.numpy()
    model, variables, _ = load_pretrained(path, verbose=False)
    assert model.pre_logits_size == 32 and model.num_classes == 0
    pooled = jit_apply(model, variables, jnp.asarray(pixels.numpy().transpose(0, 2, 3, 1)))
    assert max_abs(pooled, expected) < TOL


def test_vit_without_qkv_bias_on_rectangular_images_and_at_a_new_resolution(tiny_vit_config, tmp_path_factory):
    pixels = torch.randn(2, 3, 32, 24)
    torch.manual_seed(2)
    config = transformers.ViTConfig(**{**tiny_vit_config.to_dict(), "qkv_bias": False, "image_size": [32, 24]})
    reference = transformers.ViTForImageClassification(config).eval()
    model, variables, report = load_pretrained(_save(reference, tmp_path_factory, "vit_rect"), verbose=False)
    assert not report.missing and not report.unexpected and model.image_size == (32, 24) and not model.qkv_bias
    assert "bias" not in variables["params"]["encoder"]["block_0"]["attn"]["query"]
    with torch.no_grad():
        expected = reference(pixel_values=pixels).logits.numpy()
    assert max_abs(jit_apply(model, variables, jnp.asarray(pixels.numpy().transpose(0, 2, 3, 1))), expected) < TOL

    # A square checkpoint run on 48x40 images: Hugging Face interpolates its position embeddings on every
    # call; jtl resamples them once, at load, the same way.
    torch.manual_seed(3)
    reference = transformers.ViTForImageClassification(tiny_vit_config).eval()
    path = _save(reference, tmp_path_factory, "vit_resized")
    pixels = torch.randn(2, 3, 48, 40)
    with torch.no_grad():
        expected = reference(pixel_values=pixels, interpolate_pos_encoding=True).logits.numpy()
    model, variables, report = load_pretrained(path, image_size=(48, 40), verbose=False)
    assert report.resized == [("params/embed/pos_embedding", (1, 17, 32), (1, 31, 32))]
    assert max_abs(jit_apply(model, variables, jnp.asarray(pixels.numpy().transpose(0, 2, 3, 1))), expected) < TOL
    # 16x64 images: a 2x8 grid holds as many patches as the checkpoint's 4x4, yet is another grid.
    pixels = torch.randn(2, 3, 16, 64)
    with torch.no_grad():
        expected = reference(pixel_values=pixels, interpolate_pos_encoding=True).logits.numpy()
    model, variables, report = load_pretrained(path, image_size=(16, 64), verbose=False)
    assert report.resized == [("params/embed/pos_embedding", (1, 17, 32), (1, 17, 32))]
    assert max_abs(jit_apply(model, variables, jnp.asarray(pixels.numpy().transpose(0, 2, 3, 1))), expected) < TOL


@pytest.mark.parametrize(
    "model_class", [transformers.DeiTForImageClassificationWithTeacher, transformers.DeiTForImageClassification]
)
def test_deit_with_its_distillation_token_layer_by_layer(model_class, tmp_path_factory):
    config = transformers.DeiTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=16,
        patch_size=4, num_labels=3, layer_norm_eps=1e-6,
    )  # fmt: skip
    torch.manual_seed(0)
    reference = randomise(model_class(config), 1)
    path = _save(reference, tmp_path_factory, model_class.__name__)
    pixels = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = reference(pixel_values=pixels, output_hidden_states=True)
    model, variables, report = load_pretrained(path, verbose=False)
    assert not report.missing and not report.unexpected and model.distillation_token
    # With the teacher's head, the two classifiers' logits are averaged; without it, the class token's alone.
    distilled = model_class is transformers.DeiTForImageClassificationWithTeacher
    assert model.pooling == ("cls+dist" if distilled else "cls")
    logits, hidden = _hidden_states(model, variables, jnp.asarray(pixels.numpy().transpose(0, 2, 3, 1)))
    for i, (ours, theirs) in enumerate(zip(hidden, expected.hidden_states, strict=True)):
        assert max_abs(ours, theirs.numpy()) < TOL, f"hidden state {i}"
    assert max_abs(logits, expected.logits.numpy()) < TOL


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    config = transformers.BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=16,
        num_labels=3,
    )
    torch.manual_seed(0)
    reference = transformers.BertForSequenceClassification(config).eval()
    return reference, _save(reference, tmp_path_factory, "bert")


def _bert_inputs():
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 100, size=(3, 10))
    mask = np.ones((3, 10), np.int64)
    mask[1, 6:] = 0  # padding in the second sequence
    mask[2, 3:] = 0
    ids[mask == 0] = 0
    types = np.zeros_like(ids)
    types[0, 5:] = 1
    return ids, mask, types


def test_bert_sequence_classification_layer_by_layer(tiny_bert):
    reference, path = tiny_bert
    ids, mask, types = _bert_inputs()
    with torch.no_grad():
        expected = reference(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            token_type_ids=torch.tensor(types),
            output_hidden_states=True,
        )
    model, variables, report = load_pretrained(path, verbose=False)
    assert not report.missing and not report.unexpected
    logits, hidden = _hidden_states(model, variables, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types))
    for i, (ours, theirs) in enumerate(zip(hidden, expected.hidden_states, strict=True)):
        real = mask.astype(bool)  # padded positions attend to garbage in both; compare real tokens
        assert max_abs(np.asarray(ours)[real], theirs.numpy()[real]) < TOL, f"hidden state {i}"
    assert max_abs(logits, expected.logits.numpy()) < TOL


def test_bert_outputs_tokens_cls_and_mean(tiny_bert):
    reference, path = tiny_bert
    ids, mask, _ = _bert_inputs()
    with torch.no_grad():
        tokens = reference.bert(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state
    tokens = tokens.numpy()
    expected_mean = (tokens * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    for output, expected in (("tokens", tokens), ("cls", tokens[:, 0]), ("mean", expected_mean)):
        model, variables, _ = load_pretrained(path, num_classes=0, output=output, verbose=False)
        ours = np.asarray(jit_apply(model, variables, jnp.asarray(ids), jnp.asarray(mask)))
        if output == "tokens":
            ours, expected = ours[mask.astype(bool)], expected[mask.astype(bool)]
        assert max_abs(ours, expected) < TOL, output


def test_load_is_jittable_and_deterministic(tiny_bert):
    _, path = tiny_bert
    model, variables, _ = load_pretrained(path, verbose=False)
    ids, mask, _ = _bert_inputs()
    eager = model.apply(variables, jnp.asarray(ids), jnp.asarray(mask))
    jitted = jax.jit(model.apply)(variables, jnp.asarray(ids), jnp.asarray(mask))
    np.testing.assert_allclose(eager, jitted, atol=1e-6)
