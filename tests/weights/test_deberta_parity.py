"""DeBERTa-v3 (log-bucketed relative positions, shared keys, normalised table) and DeBERTa-v2 (own position
projections, absolute positions, convolution, narrower embeddings) against Hugging Face's PyTorch models,
converted from the files they write, on random weights that are never zero."""

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jtl.models.deberta import log_bucket_positions  # noqa: E402
from jtl.weights import load_pretrained  # noqa: E402
from tests.parity import TOL, jit_apply, max_abs, randomise  # noqa: E402


def _inputs(types: bool = False):
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 100, size=(3, 12))
    mask = np.ones((3, 12), np.int64)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    ids[mask == 0] = 0
    token_types = (np.arange(12)[None] >= 5).astype(np.int64) * mask if types else None
    return ids, mask, token_types


def _compare(tmp_path, config, seed, types=False):
    torch.manual_seed(0)
    reference = randomise(transformers.DebertaV2ForSequenceClassification(config), seed)
    reference.save_pretrained(tmp_path)
    ids, mask, token_types = _inputs(types)
    inputs = {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}
    if types:
        inputs["token_type_ids"] = torch.tensor(token_types)
    with torch.no_grad():
        expected = reference(**inputs, output_hidden_states=True)

    model, variables, report = load_pretrained(tmp_path, verbose=False)
    assert not report.missing and not report.unexpected, report
    extra = (jnp.asarray(token_types),) if types else ()
    logits, state = jit_apply(model, variables, jnp.asarray(ids), jnp.asarray(mask), *extra, mutable=["intermediates"])
    hidden = state["intermediates"]["encoder"]["hidden_states"]
    assert len(hidden) == len(expected.hidden_states) == config.num_hidden_layers + 1
    # Every position, padding included: both zero the padded embeddings and mask queries as well as keys.
    for i, (ours, theirs) in enumerate(zip(hidden, expected.hidden_states, strict=True)):
        assert max_abs(ours, theirs.numpy()) < TOL, f"hidden state {i}"
    assert max_abs(logits, expected.logits.numpy()) < TOL
    return model, variables["params"], load_file(tmp_path / "model.safetensors")


def test_deberta_v3_layer_by_layer(tmp_path):
    config = transformers.DebertaV2Config(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        relative_attention=True,
        position_buckets=6,  # 12 tokens: distances beyond 3 share log-spaced buckets
        max_relative_positions=10,
        pos_att_type="p2c|c2p",
        share_att_key=True,
        norm_rel_ebd="layer_norm",
        position_biased_input=False,
        type_vocab_size=0,
        num_labels=3,
    )
    model, params, saved = _compare(tmp_path, config, 1)
    assert model.position_buckets == 6 and model.share_att_key and model.rel_norm and not model.position_biased_input
    assert set(params["encoder"]["block_0"]["attn"]) == {"query", "key", "value", "out"}
    np.testing.assert_array_equal(params["encoder"]["rel_embeddings"], saved["deberta.encoder.rel_embeddings.weight"])
    np.testing.assert_array_equal(
        params["encoder"]["block_1"]["attn"]["key"]["kernel"],
        saved["deberta.encoder.layer.1.attention.self.key_proj.weight"].T,
    )


def test_deberta_v2_own_position_projections_convolution_and_narrow_embeddings(tmp_path):
    config = transformers.DebertaV2Config(
        vocab_size=100,
        hidden_size=32,
        embedding_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=16,
        relative_attention=True,
        max_relative_positions=4,  # no buckets: distances clamp at 4
        pos_att_type=["c2p", "p2c"],
        share_att_key=False,
        position_biased_input=True,
        type_vocab_size=2,
        conv_kernel_size=3,
        conv_act="gelu",
        layer_norm_eps=1e-5,
        num_labels=2,
    )
    model, params, saved = _compare(tmp_path, config, 2, types=True)
    assert model.conv_kernel_size == 3 and model.embedding_size == 16 and not model.rel_norm
    np.testing.assert_array_equal(
        params["encoder"]["conv"]["conv"]["kernel"], saved["deberta.encoder.conv.conv.weight"].transpose(2, 1, 0)
    )
    np.testing.assert_array_equal(
        params["encoder"]["block_0"]["attn"]["pos_query"]["kernel"],
        saved["deberta.encoder.layer.0.attention.self.pos_query_proj.weight"].T,
    )


def test_log_buckets_equal_transformers_at_deberta_v3_sizes():
    from transformers.models.deberta_v2.modeling_deberta_v2 import make_log_bucket_position

    relative = np.arange(-4096, 4097)
    for buckets, max_position in ((256, 512), (6, 10)):
        expected = make_log_bucket_position(torch.tensor(relative), buckets, max_position).long().numpy()
        np.testing.assert_array_equal(log_bucket_positions(relative, buckets, max_position), expected)


def test_the_hubs_deberta_v3_base_config_gives_the_registrys_deberta_v3_base():
    from jtl.models import create
    from jtl.models.deberta import HF_DEBERTA_V2

    hub_config = {  # microsoft/deberta-v3-base's config.json (pos_att_type written as a string)
        "model_type": "deberta-v2", "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
        "intermediate_size": 3072, "hidden_act": "gelu", "max_position_embeddings": 512, "relative_attention": True,
        "position_buckets": 256, "norm_rel_ebd": "layer_norm", "share_att_key": True, "pos_att_type": "p2c|c2p",
        "layer_norm_eps": 1e-7, "max_relative_positions": -1, "position_biased_input": False, "type_vocab_size": 0,
        "vocab_size": 128100, "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
    }  # fmt: skip
    fields = HF_DEBERTA_V2.fields(hub_config, {})
    assert fields["pos_att_type"] == ("p2c", "c2p")
    assert type(create("deberta-v3-base"))(**fields) == create("deberta-v3-base", num_classes=0)
