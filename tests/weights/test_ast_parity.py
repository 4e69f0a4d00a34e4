"""AST (overlapping patches with non-default strides, length and mel bins) against Hugging Face's PyTorch
``ASTForAudioClassification``, converted from the file it writes, on random weights that are never zero."""

import numpy as np
import pytest
from safetensors.numpy import load_file

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jtl.weights import load_pretrained  # noqa: E402
from tests.parity import TOL, jit_apply, max_abs, randomise  # noqa: E402


def test_ast_classifier_layer_by_layer(tmp_path):
    config = transformers.ASTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        patch_size=4,
        frequency_stride=3,
        time_stride=2,
        max_length=13,
        num_mel_bins=10,
        layer_norm_eps=1e-6,
        num_labels=3,
    )
    reference = randomise(transformers.ASTForAudioClassification(config), 0)
    reference.save_pretrained(tmp_path)
    features = torch.randn(2, 13, 10)
    with torch.no_grad():
        expected = reference(input_values=features, output_hidden_states=True)

    model, variables, report = load_pretrained(tmp_path, verbose=False)
    assert not report.missing and not report.unexpected, report
    assert model.grid == (3, 5) and model.num_classes == 3 and model.layer_norm_eps == 1e-6
    logits, state = jit_apply(model, variables, features.numpy(), mutable=["intermediates"])
    hidden = state["intermediates"]["encoder"]["hidden_states"]
    assert len(hidden) == len(expected.hidden_states) == 3
    for i, (ours, theirs) in enumerate(zip(hidden, expected.hidden_states, strict=True)):
        assert max_abs(ours, theirs.numpy()) < TOL, f"hidden state {i}"
    assert max_abs(logits, expected.logits.numpy()) < TOL
    with torch.no_grad():
        pooled = reference.audio_spectrogram_transformer(input_values=features).pooler_output.numpy()
    assert max_abs(state["intermediates"]["features"][0], pooled) < TOL
    # Loaded parameters are the file's after transposes only.
    saved = load_file(tmp_path / "model.safetensors")
    params = variables["params"]
    np.testing.assert_array_equal(
        params["embed"]["patch"]["kernel"],
        saved["audio_spectrogram_transformer.embeddings.patch_embeddings.projection.weight"].transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(
        params["encoder"]["block_1"]["attn"]["key"]["bias"],
        saved["audio_spectrogram_transformer.encoder.layer.1.attention.attention.key.bias"],
    )
    np.testing.assert_array_equal(params["head_norm"]["scale"], saved["classifier.layernorm.weight"])
