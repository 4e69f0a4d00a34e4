"""ALBERT (factorised embeddings, layers shared across depth) against Hugging Face's PyTorch model, converted from
the file it writes, on random weights that are never zero, with several groups of several layers."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from safetensors.numpy import load_file  # noqa: E402

from jtl import models  # noqa: E402
from jtl.weights import load_pretrained, load_tokenizer  # noqa: E402
from tests.parity import assert_text_classifier_matches, randomise, text_classification_inputs  # noqa: E402


def test_sequence_classification_layer_by_layer(tmp_path):
    config = transformers.AlbertConfig(
        vocab_size=100,
        embedding_size=16,
        hidden_size=32,
        num_hidden_layers=5,  # over 2 groups: steps 0-2 run group 0, steps 3-4 group 1 (int(i / 2.5))
        num_hidden_groups=2,
        inner_group_num=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=16,
        hidden_act="gelu",  # the exact GELU (AlbertConfig's default is gelu_new)
        layer_norm_eps=1e-6,
        num_labels=3,
    )
    torch.manual_seed(0)
    reference = randomise(transformers.AlbertForSequenceClassification(config), 3)
    reference.save_pretrained(tmp_path)

    model, variables, report = load_pretrained(tmp_path, verbose=False)
    assert not report.missing and not report.unexpected, report
    assert (model.num_hidden_groups, model.inner_group_num, model.gelu_approximate) == (2, 2, False)
    params, saved = variables["params"], load_file(tmp_path / "model.safetensors")
    assert sorted(params["encoder"]) == ["block_0", "block_1", "block_2", "block_3"]
    np.testing.assert_array_equal(
        params["encoder"]["block_2"]["attn"]["key"]["bias"],  # group 1, layer 0
        saved["albert.encoder.albert_layer_groups.1.albert_layers.0.attention.key.bias"],
    )
    np.testing.assert_array_equal(
        params["embed"]["project"]["kernel"], saved["albert.encoder.embedding_hidden_mapping_in.weight"].T
    )
    hidden = assert_text_classifier_matches(reference, model, variables, *text_classification_inputs())
    assert len(hidden) == 1 + 5 * 2  # every layer application, as Hugging Face records them


def test_layer_index_counts_the_shared_blocks_once():
    model = models.create("albert-base-v2", num_classes=2)
    layer_of, top = models.layer_index(model)
    assert (layer_of("embed/project/kernel"), layer_of("encoder/block_0/attn/query/kernel"), top) == (0, 1, 2)
    assert layer_of("pooler/kernel") == layer_of("head/kernel") == 2


def test_a_saved_sentencepiece_style_tokenizer_loads(tmp_path):
    pieces = ["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]", "\u2581hello", "\u2581world"]
    transformers.AlbertTokenizer(vocab=[(p, -1.0) for p in pieces]).save_pretrained(tmp_path)
    assert load_tokenizer(tmp_path)("hello world")["input_ids"] == [2, 5, 6, 3]
