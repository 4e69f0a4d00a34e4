"""jtl.models.zero_shot_model against Hugging Face's CLIPModel and SiglipModel: a checkpoint directory with its own
tiny word-level tokenizer, prompts tokenised as the Hugging Face zero-shot pipeline does (CLIP: padded to the
longest, with the attention mask; SigLIP: padded to the text tower's length, with what its tokenizer returns)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from jtl import data, models  # noqa: E402
from jtl.config import ConfigError, base_config  # noqa: E402
from jtl.train import train_and_evaluate  # noqa: E402
from jtl.weights import load_tokenizer  # noqa: E402
from tests.parity import TOL, max_abs, randomise  # noqa: E402

SPECIAL = ("<pad>", "<bos>", "<unk>", "<eos>")  # ids 0-3
WORDS = ("a", "photo", "of", "sketch", "the", "digit", ".", "cat", "dog", "emu", "zero", "one", "two")
CLASSES = ("cat", "dog", "emu")
VISION = dict(hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2, patch_size=4)
TEXT = dict(
    hidden_size=12,
    intermediate_size=20,
    num_hidden_layers=2,
    num_attention_heads=2,
    vocab_size=len(SPECIAL) + len(WORDS),
    max_position_embeddings=10,
)


def save_word_tokenizer(path, kind):
    """A word-level tokenizer in ``path`` that :func:`jtl.weights.load_tokenizer` reads offline: CLIP's wraps a
    prompt in ``<bos> ... <eos>`` and pads with ``<pad>``; SigLIP's ends it with ``<eos>`` and pads with ``<eos>`` too,
    returning the attention mask as ``transformers``' ``SiglipTokenizer`` does."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel

    vocab = {word: i for i, word in enumerate(SPECIAL + WORDS)}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    if kind == "clip":
        tok.post_processor = processors.TemplateProcessing(
            single="<bos> $A <eos>", special_tokens=[("<bos>", 1), ("<eos>", 3)]
        )
        pad, bos = "<pad>", "<bos>"
    else:
        tok.post_processor = processors.TemplateProcessing(single="$A <eos>", special_tokens=[("<eos>", 3)])
        pad, bos = "<eos>", None
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token="<eos>",
        pad_token=pad,
        unk_token="<unk>",
        model_input_names=["input_ids", "attention_mask"],
        model_max_length=TEXT["max_position_embeddings"],
    )
    fast.save_pretrained(path)


def _clip(path, seed, **vision):
    config = transformers.CLIPConfig(
        vision_config={**VISION, "image_size": 8, **vision},
        text_config={**TEXT, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 3},
        projection_dim=8,
        logit_scale_init_value=2.0,
    )
    reference = randomise(transformers.CLIPModel(config), seed)
    reference.save_pretrained(path)
    save_word_tokenizer(path, "clip")
    return reference


def _siglip(path, seed):
    config = transformers.SiglipConfig(
        vision_config={**VISION, "image_size": 8},
        text_config={**TEXT, "projection_size": 16, "pad_token_id": 3, "eos_token_id": 3},
    )
    reference = randomise(transformers.SiglipModel(config), seed)
    reference.save_pretrained(path)
    save_word_tokenizer(path, "siglip")
    return reference


def _hf_tokens(path, prompts, kind):
    """The prompts tokenised as the Hugging Face zero-shot image classification pipeline does."""
    tokenizer = load_tokenizer(path)
    if kind == "siglip":
        kwargs = dict(padding="max_length", max_length=TEXT["max_position_embeddings"], truncation=True)
    else:
        kwargs = dict(padding=True)
    return dict(tokenizer(prompts, return_tensors="pt", **kwargs))


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_zero_shot_model_is_the_dual_models_logits_and_averages_templates(tmp_path, kind):
    reference = (_clip if kind == "clip" else _siglip)(tmp_path, 0)
    pixels = torch.rand(3, 3, 8, 8)
    nhwc = jnp.asarray(pixels.numpy().transpose(0, 2, 3, 1))

    # One template: the classifier's logits are the dual model's logits_per_image for the same prompts.
    model, variables, report = models.zero_shot_model(tmp_path, CLASSES, ("a photo of a {}.",), verbose=False)
    assert not report.missing and not report.unexpected, report
    assert model.num_classes == 3 and model.normalize
    tokens = _hf_tokens(tmp_path, [f"a photo of a {name}." for name in CLASSES], kind)
    assert tokens["input_ids"].shape[1] == (TEXT["max_position_embeddings"] if kind == "siglip" else 8)
    with torch.no_grad():
        expected = reference(pixel_values=pixels, **tokens).logits_per_image.numpy()
    assert max_abs(model.apply(variables, nhwc), expected) < TOL

    # Two templates: the head is the normalised mean of the prompts' normalised text embeddings, times the scale.
    templates = ("a photo of a {}.", "a sketch of the {}")
    _, variables, _ = models.zero_shot_model(tmp_path, CLASSES, templates, verbose=False)
    prompts = [template.format(name) for name in CLASSES for template in templates]
    with torch.no_grad():
        features = reference.get_text_features(**_hf_tokens(tmp_path, prompts, kind)).pooler_output
        features = torch.nn.functional.normalize(features, dim=-1).reshape(3, 2, -1).mean(1)
        kernel = reference.logit_scale.exp() * torch.nn.functional.normalize(features, dim=-1).T
    head = variables["params"]["head"]
    assert max_abs(head["kernel"], kernel.numpy()) < TOL
    bias = reference.logit_bias.item() if kind == "siglip" else 0.0
    np.testing.assert_allclose(head["bias"], np.full(3, bias, np.float32))


DIGITS = ("zero", "one", "two")


@pytest.fixture(scope="module")
def digits_clip(tmp_path_factory):
    """A tiny CLIP (random weights) on 8x8 one-channel images, as the digits give them."""
    path = tmp_path_factory.mktemp("digits_clip")
    _clip(path, 1, num_channels=1)
    return path


def _config(path, **changes):
    c = base_config()
    c.num_classes = 3
    c.model.pretrained = str(path)
    c.model.zero_shot.classes = DIGITS
    c.model.zero_shot.templates = ("a photo of the digit {}.", "{}")
    c.data.classes, c.data.shots = (0, 1, 2), 8
    c.optimizer, c.learning_rate = "adamw", 1e-3
    c.total_steps, c.batch_size, c.eval_batch_size = 3, 12, 32
    c.log_every, c.checkpoint_every, c.compilation_cache = 1, 0, ""
    for key, value in changes.items():
        node = c
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    return c


def test_train_starts_from_the_zero_shot_head_and_wise_ft_0_is_zero_shot(digits_clip, tmp_path):
    result = train_and_evaluate(_config(digits_clip, wise_ft=(0.0,)), tmp_path / "run")
    model, variables, _ = models.zero_shot_model(digits_clip, DIGITS, ("a photo of the digit {}.", "{}"), verbose=False)
    test = data.digits_task((0, 1, 2), shots=8)["test"]
    correct = [
        (np.argmax(model.apply(variables, b["image"]), -1) == b["label"])[b["mask"]]
        for b in data.eval_batches(test, 32)
    ]
    assert result["wise_ft/0/eval/accuracy"] == pytest.approx(np.concatenate(correct).mean(), rel=1e-6)
    # The fine-tuned weights moved away from the zero-shot start, the head included.
    moved = jax.tree_util.tree_map(lambda a, b: bool(np.any(a != b)), variables["params"], result["params"])
    assert moved["head"]["kernel"] and moved["embed"]["patch"]["kernel"]


def test_zero_shot_classes_must_match_the_classes_trained(digits_clip, tmp_path):
    with pytest.raises(ConfigError, match=r"zero_shot\.classes"):
        train_and_evaluate(_config(digits_clip, num_classes=4, **{"data.classes": (0, 1, 2, 3)}), tmp_path)
    with pytest.raises(ConfigError, match=r"zero_shot\.classes"):
        train_and_evaluate(_config(digits_clip, **{"model.pretrained": ""}), tmp_path)
