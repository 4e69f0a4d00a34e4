"""RoBERTa and XLM-RoBERTa (the BERT family with position ids that start after the padding id) against Hugging
Face's PyTorch models, converted from the files they write, on random weights that are never zero."""

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jtl.weights import load_pretrained  # noqa: E402
from tests.parity import TOL, jit_apply, max_abs, randomise  # noqa: E402

PAD = 1


def _inputs():
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 100, size=(3, 10))
    mask = np.ones((3, 10), np.int64)
    mask[1, 6:] = 0  # right padding: the padding tokens take position PAD, the others count from PAD + 1
    mask[2, 3:] = 0
    ids[mask == 0] = PAD
    return ids, mask


@pytest.mark.parametrize(
    ("model_class", "config_class"),
    [
        (transformers.RobertaForSequenceClassification, transformers.RobertaConfig),
        (transformers.XLMRobertaForSequenceClassification, transformers.XLMRobertaConfig),
    ],
    ids=["roberta", "xlm-roberta"],
)
def test_sequence_classification_layer_by_layer(tmp_path, model_class, config_class):
    config = config_class(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=16,
        pad_token_id=PAD,
        type_vocab_size=1,
        layer_norm_eps=1e-5,  # roberta-base's (the config class defaults to BERT's 1e-12)
        num_labels=3,
    )
    torch.manual_seed(0)
    reference = randomise(model_class(config), 1)
    reference.save_pretrained(tmp_path)
    ids, mask = _inputs()
    with torch.no_grad():
        expected = reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), output_hidden_states=True)

    model, variables, report = load_pretrained(tmp_path, verbose=False)
    assert not report.missing and not report.unexpected, report
    assert model.position_padding_idx == PAD and model.layer_norm_eps == 1e-5 and model.num_classes == 3
    logits, state = jit_apply(model, variables, jnp.asarray(ids), jnp.asarray(mask), mutable=["intermediates"])
    hidden = state["intermediates"]["encoder"]["hidden_states"]
    real = mask.astype(bool)  # padded positions attend to garbage in both; compare real tokens
    for i, (ours, theirs) in enumerate(zip(hidden, expected.hidden_states, strict=True)):
        assert max_abs(np.asarray(ours)[real], theirs.numpy()[real]) < TOL, f"hidden state {i}"
    assert max_abs(logits, expected.logits.numpy()) < TOL
