"""DistilBERT (the BERT family without token types, with a ReLU pre-classifier as the pooler) against Hugging
Face's PyTorch model, converted from the file it writes, on random weights that are never zero."""

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from safetensors.numpy import load_file  # noqa: E402

from jtl import models  # noqa: E402
from jtl.weights import load_pretrained, load_tokenizer  # noqa: E402
from tests.parity import TOL, jit_apply, max_abs, randomise  # noqa: E402


def test_sequence_classification_layer_by_layer(tmp_path):
    config = transformers.DistilBertConfig(
        vocab_size=100,
        dim=32,
        n_layers=2,
        n_heads=4,
        hidden_dim=64,
        max_position_embeddings=16,
        activation="gelu_new",  # the tanh GELU: a port that reads BERT's hidden_act would take the exact one
        sinusoidal_pos_embds=True,
        num_labels=3,
    )
    torch.manual_seed(0)
    reference = randomise(transformers.DistilBertForSequenceClassification(config), 1)
    reference.save_pretrained(tmp_path)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 100, size=(3, 10))
    mask = np.ones((3, 10), np.int64)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    with torch.no_grad():
        expected = reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), output_hidden_states=True)

    model, variables, report = load_pretrained(tmp_path, verbose=False)
    assert not report.missing and not report.unexpected, report
    assert model.type_vocab_size == 0 and model.gelu_approximate and model.num_classes == 3
    params, saved = variables["params"], load_file(tmp_path / "model.safetensors")
    np.testing.assert_array_equal(
        params["encoder"]["block_1"]["attn"]["key"]["kernel"],
        saved["distilbert.transformer.layer.1.attention.k_lin.weight"].T,
    )
    np.testing.assert_array_equal(params["pooler"]["bias"], saved["pre_classifier.bias"])
    logits, state = jit_apply(model, variables, jnp.asarray(ids), jnp.asarray(mask), mutable=["intermediates"])
    hidden = state["intermediates"]["encoder"]["hidden_states"]
    real = mask.astype(bool)  # padded positions attend to garbage in both; compare real tokens
    for i, (ours, theirs) in enumerate(zip(hidden, expected.hidden_states, strict=True)):
        assert max_abs(np.asarray(ours)[real], theirs.numpy()[real]) < TOL, f"hidden state {i}"
    assert max_abs(logits, expected.logits.numpy()) < TOL


def test_sinusoidal_positions_initialise_as_distilbert_does():
    config = transformers.DistilBertConfig(dim=32, n_heads=4, max_position_embeddings=16, sinusoidal_pos_embds=True)
    expected = transformers.DistilBertModel(config).embeddings.position_embeddings.weight.detach().numpy()
    model = models.create("distilbert-testing", hidden_size=32, max_position_embeddings=16, sinusoidal_positions=True)
    table = models.init(model)["params"]["embed"]["position"]["embedding"]
    assert max_abs(table, expected) < 1e-6
    assert "token_type" not in models.init(model)["params"]["embed"]


def test_a_saved_tokenizer_loads(tmp_path):
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world"]
    transformers.DistilBertTokenizerFast(vocab={w: i for i, w in enumerate(words)}).save_pretrained(tmp_path / "saved")
    tokenizer = load_tokenizer(tmp_path / "saved")
    assert tokenizer("hello world")["input_ids"] == [2, 5, 6, 3]
    assert "token_type_ids" not in tokenizer("hello")  # DistilBERT's model_input_names
