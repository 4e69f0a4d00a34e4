"""ELECTRA's discriminator (the BERT family with an embedding projection and a GELU classification head)
against Hugging Face's PyTorch model, converted from the file it writes, on random weights that are never zero."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from safetensors.numpy import load_file  # noqa: E402

from jtl.weights import load_pretrained, load_tokenizer  # noqa: E402
from tests.parity import assert_text_classifier_matches, randomise, text_classification_inputs  # noqa: E402


def test_sequence_classification_layer_by_layer(tmp_path):
    config = transformers.ElectraConfig(
        vocab_size=100,
        embedding_size=16,  # != hidden_size: the embeddings are projected (embeddings_project)
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=16,
        hidden_act="gelu_new",  # in the blocks only; the classification head's GELU is always the exact one
        layer_norm_eps=1e-6,
        num_labels=3,
    )
    torch.manual_seed(0)
    reference = randomise(transformers.ElectraForSequenceClassification(config), 2)
    reference.save_pretrained(tmp_path)

    model, variables, report = load_pretrained(tmp_path, verbose=False)
    assert not report.missing and not report.unexpected, report
    assert model.embedding_size == 16 and model.gelu_approximate and model.layer_norm_eps == 1e-6
    params, saved = variables["params"], load_file(tmp_path / "model.safetensors")
    np.testing.assert_array_equal(params["embed"]["project"]["kernel"], saved["electra.embeddings_project.weight"].T)
    np.testing.assert_array_equal(
        params["encoder"]["block_1"]["attn"]["key"]["bias"], saved["electra.encoder.layer.1.attention.self.key.bias"]
    )
    np.testing.assert_array_equal(params["pooler"]["kernel"], saved["classifier.dense.weight"].T)
    assert_text_classifier_matches(reference, model, variables, *text_classification_inputs())


def test_a_saved_tokenizer_loads(tmp_path):
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world"]
    transformers.ElectraTokenizerFast(vocab={w: i for i, w in enumerate(words)}).save_pretrained(tmp_path)
    transformers.ElectraConfig().save_pretrained(tmp_path)
    assert load_tokenizer(tmp_path)("hello world")["input_ids"] == [2, 5, 6, 3]
