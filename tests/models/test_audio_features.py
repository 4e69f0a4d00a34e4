"""jtl's numpy feature extractors against Hugging Face's (AST's without torchaudio, Wav2Vec2's), with
non-default settings read back from the ``preprocessor_config.json`` the reference writes."""

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
pytest.importorskip("torch")  # Hugging Face's ASTFeatureExtractor needs it

from jtl.models import load_feature_extractor  # noqa: E402

# Measured: bit-identical here (0.0 max-abs at 8 kHz/24 bins and 16 kHz/128 bins/1024 frames); the tolerance only
# leaves room for another FFT build, on features of magnitude ~2.
AST_TOL = 1e-6


def _waveforms(rng):
    # One shorter than max_length frames (zero-padded), one longer (cropped), one with silence (the mel floor).
    return [
        rng.standard_normal(2400).astype(np.float32) * 0.3,
        np.sin(np.arange(9000) / 7.0).astype(np.float32) + 0.05 * rng.standard_normal(9000).astype(np.float32),
        np.concatenate([np.zeros(1200, np.float32), rng.standard_normal(2000).astype(np.float32)]),
    ]


def test_ast_fbank_equals_hugging_face(tmp_path):
    reference = transformers.ASTFeatureExtractor(sampling_rate=8000, num_mel_bins=24, max_length=30, mean=-3.0, std=2.5)
    reference.save_pretrained(tmp_path)
    ours = load_feature_extractor(tmp_path)
    assert (ours.sampling_rate, ours.num_mel_bins, ours.max_length, ours.mean, ours.std) == (8000, 24, 30, -3.0, 2.5)
    waveforms = _waveforms(np.random.default_rng(0))
    expected = np.stack(reference(waveforms, sampling_rate=8000)["input_values"])
    got = ours(waveforms)["audio"]
    assert got.shape == expected.shape == (3, 30, 24)
    error = np.max(np.abs(got.astype(np.float64) - expected))
    assert error < AST_TOL, error


@pytest.mark.parametrize("with_mask", [False, True])
def test_wav2vec2_normalisation_equals_hugging_face(tmp_path, with_mask):
    reference = transformers.Wav2Vec2FeatureExtractor(
        sampling_rate=8000, return_attention_mask=with_mask, padding_value=0.0, do_normalize=True
    )
    reference.save_pretrained(tmp_path)
    ours = load_feature_extractor(tmp_path, max_length=5000)
    waveforms = _waveforms(np.random.default_rng(1))
    expected = reference(waveforms, sampling_rate=8000, padding="max_length", max_length=5000, truncation=True)
    got = ours(waveforms)
    np.testing.assert_allclose(got["audio"], np.stack(expected["input_values"]), rtol=0, atol=1e-6)
    assert ("attention_mask" in got) == with_mask
    if with_mask:
        np.testing.assert_array_equal(got["attention_mask"], np.stack(expected["attention_mask"]))
