"""Wav2Vec2 (group-norm feature encoder, post-norm blocks) and HuBERT (layer-norm feature encoder, pre-norm
"stable" blocks) against Hugging Face's PyTorch sequence classifiers on a padded batch, converted from the files
they write (both spellings of the weight-normalised positional convolution), on random weights never zero."""

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jtl.weights import load_pretrained  # noqa: E402
from tests.parity import TOL, jit_apply, max_abs, randomise  # noqa: E402

_FIELDS = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=48,
    conv_dim=(16, 12, 8),
    conv_kernel=(10, 3, 2),
    conv_stride=(5, 2, 2),
    num_conv_pos_embeddings=6,
    num_conv_pos_embedding_groups=4,
    classifier_proj_size=12,
    num_labels=3,
)


def _compare(reference, tmp_path, waveform, mask):
    with torch.no_grad():
        expected = reference(input_values=waveform, attention_mask=mask, output_hidden_states=True)
    model, variables, report = load_pretrained(tmp_path, verbose=False)
    assert not report.missing and not report.unexpected, report
    logits, state = jit_apply(model, variables, waveform.numpy(), mask.numpy(), mutable=["intermediates"])
    hidden = state["intermediates"]["encoder"]["hidden_states"]
    assert len(hidden) == len(expected.hidden_states) == 3
    for i, (ours, theirs) in enumerate(zip(hidden, expected.hidden_states, strict=True)):
        # Padded frames are compared too: Hugging Face computes them (zeroed only before the positional conv).
        assert max_abs(ours, theirs.numpy()) < TOL, f"hidden state {i}"
    assert hidden[0].shape[1] == 19  # 400 samples (300 real in the second) -> 19 frames (14 real)
    assert max_abs(logits, expected.logits.numpy()) < TOL
    return model, variables


def _batch():
    waveform = torch.randn(2, 400)
    mask = torch.ones(2, 400, dtype=torch.long)
    mask[1, 300:] = 0
    waveform[1, 300:] = 0.0
    return waveform, mask


def test_wav2vec2_group_norm_post_norm_padded_batch(tmp_path):
    config = transformers.Wav2Vec2Config(**_FIELDS, feat_extract_norm="group", conv_bias=False)
    reference = randomise(transformers.Wav2Vec2ForSequenceClassification(config), 0)
    reference.save_pretrained(tmp_path)
    # The hub's older files spell the weight norm weight_g / weight_v: rewrite this one that way.
    path = tmp_path / "model.safetensors"
    saved = load_file(path)
    prefix = "wav2vec2.encoder.pos_conv_embed.conv."
    saved[prefix + "weight_g"] = saved.pop(prefix + "parametrizations.weight.original0")
    saved[prefix + "weight_v"] = saved.pop(prefix + "parametrizations.weight.original1")
    save_file(saved, path, metadata={"format": "pt"})
    model, variables = _compare(reference, tmp_path, *_batch())
    assert model.feat_extract_norm == "group" and not model.stable_layer_norm and model.pos_conv_kernel == 6
    params = variables["params"]
    np.testing.assert_array_equal(params["embed"]["pos_conv"]["weight_g"], saved[prefix + "weight_g"].reshape(-1))
    np.testing.assert_array_equal(
        params["embed"]["conv_1"]["kernel"], saved["wav2vec2.feature_extractor.conv_layers.1.conv.weight"].T
    )
    np.testing.assert_array_equal(params["head"]["projector"]["kernel"], saved["projector.weight"].T)


def test_hubert_layer_norm_stable_padded_batch(tmp_path):
    config = transformers.HubertConfig(
        **_FIELDS, feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True, layer_norm_eps=1e-6
    )
    reference = randomise(transformers.HubertForSequenceClassification(config), 1)
    reference.save_pretrained(tmp_path)
    model, variables = _compare(reference, tmp_path, *_batch())
    assert model.feat_extract_norm == "layer" and model.stable_layer_norm and model.conv_bias
    saved = load_file(tmp_path / "model.safetensors")
    np.testing.assert_array_equal(
        variables["params"]["embed"]["pos_conv"]["weight_v"],
        saved["hubert.encoder.pos_conv_embed.conv.parametrizations.weight.original1"].transpose(2, 1, 0),
    )
    np.testing.assert_array_equal(variables["params"]["norm"]["scale"], saved["hubert.encoder.layer_norm.weight"])
