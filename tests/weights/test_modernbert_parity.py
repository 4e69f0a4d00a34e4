"""ModernBERT (global and sliding-window layers with their own rope bases, GeGLU, no biases; then with biases and
mean pooling) against Hugging Face's PyTorch model (eager attention), converted from the files it writes, on
random weights that are never zero and padded batches longer than the local window."""

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jtl.weights import load_pretrained  # noqa: E402
from tests.parity import TOL, jit_apply, max_abs, randomise  # noqa: E402

HIDDEN = 32


def _compare(tmp_path, seed, **changes):
    config = transformers.ModernBertConfig(
        vocab_size=100,
        hidden_size=HIDDEN,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        global_attn_every_n_layers=2,
        local_attention=4,  # the local layer sees 2 tokens either side of 12
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        cls_token_id=1,
        sep_token_id=2,
        num_labels=3,
        attn_implementation="eager",
        **changes,
    )
    torch.manual_seed(0)
    reference = randomise(transformers.ModernBertForSequenceClassification(config), seed)
    reference.save_pretrained(tmp_path)
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 100, size=(3, 12))
    mask = np.ones((3, 12), np.int64)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    ids[mask == 0] = 0
    last = {}  # Hugging Face's last hidden state is after the final norm; the last block's own output, hooked
    reference.model.layers[-1].register_forward_hook(lambda module, args, output: last.update(x=output))
    with torch.no_grad():
        expected = reference(
            input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), output_hidden_states=True
        )  # fmt: skip
    expected_hidden = [h.numpy() for h in expected.hidden_states[:-1]] + [last["x"].numpy()]

    model, variables, report = load_pretrained(tmp_path, verbose=False)
    assert not report.missing and not report.unexpected, report
    assert model.attention_types() == ("full_attention", "sliding_attention", "full_attention")
    logits, state = jit_apply(model, variables, jnp.asarray(ids), jnp.asarray(mask), mutable=["intermediates"])
    hidden = state["intermediates"]["encoder"]["hidden_states"]
    assert len(hidden) == len(expected_hidden) == 4
    # Every position, padding included: both mask the padding keys only.
    for i, (ours, theirs) in enumerate(zip(hidden, expected_hidden, strict=True)):
        assert max_abs(ours, theirs) < TOL, f"hidden state {i}"
    assert max_abs(logits, expected.logits.numpy()) < TOL
    return model, variables["params"], load_file(tmp_path / "model.safetensors")


def test_modernbert_layer_by_layer(tmp_path):
    model, params, saved = _compare(tmp_path, 1)
    assert not model.norm_bias and model.pooling == "cls" and "norm1" not in params["encoder"]["block_0"]
    assert "bias" not in params["encoder"]["block_1"]["attn"]["query"]
    fused = saved["model.layers.1.attn.Wqkv.weight"]  # query, key, value stacked on the output axis
    attn = params["encoder"]["block_1"]["attn"]
    for i, name in enumerate(("query", "key", "value")):
        np.testing.assert_array_equal(attn[name]["kernel"], fused[i * HIDDEN : (i + 1) * HIDDEN].T)
    np.testing.assert_array_equal(params["pooler"]["norm"]["scale"], saved["head.norm.weight"])


def test_modernbert_with_biases_mean_pooling_and_other_rope_bases(tmp_path):
    model, params, saved = _compare(
        tmp_path,
        2,
        norm_bias=True,
        attention_bias=True,
        mlp_bias=True,
        classifier_bias=True,
        classifier_pooling="mean",
        hidden_activation="gelu_new",
        global_rope_theta=1000.0,
        local_rope_theta=50.0,
    )
    assert model.pooling == "mean" and model.global_rope_theta == 1000.0 and model.local_rope_theta == 50.0
    np.testing.assert_array_equal(
        params["encoder"]["block_2"]["attn"]["value"]["bias"], saved["model.layers.2.attn.Wqkv.bias"][2 * HIDDEN :]
    )


def test_the_hubs_older_config_reads_as_transformers_reads_it():
    from jtl.models import create
    from jtl.models.modernbert import HF_MODERNBERT

    hub_config = {  # answerdotai/ModernBERT-base's config.json, written before rope_parameters and layer_types
        "model_type": "modernbert", "hidden_size": 768, "num_hidden_layers": 22, "num_attention_heads": 12,
        "intermediate_size": 1152, "global_attn_every_n_layers": 3, "global_rope_theta": 160000.0,
        "local_rope_theta": 10000.0, "local_attention": 128, "hidden_activation": "gelu", "norm_bias": False,
        "norm_eps": 1e-5, "classifier_pooling": "mean", "vocab_size": 50368, "max_position_embeddings": 8192,
    }  # fmt: skip
    fields = HF_MODERNBERT.fields(hub_config, {})
    theirs = transformers.ModernBertConfig(**{k: v for k, v in hub_config.items() if k != "model_type"})
    assert fields["layer_types"] == tuple(theirs.layer_types)
    assert fields["global_rope_theta"] == theirs.rope_parameters["full_attention"]["rope_theta"] == 160000.0
    assert fields["local_rope_theta"] == theirs.rope_parameters["sliding_attention"]["rope_theta"] == 10000.0
    model = create("modernbert-base", num_classes=0, pooling="mean")
    assert model.attention_types() == tuple(theirs.layer_types)
    assert type(model)(**fields).attention_types() == model.attention_types()
