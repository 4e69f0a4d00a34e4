"""AST's feature extractor in numpy: the Kaldi-compatible log-mel filterbank that Hugging Face's
``ASTFeatureExtractor`` computes without torchaudio (``transformers.audio_utils``), padded or cropped to
``max_length`` frames and normalised with the dataset's mean and standard deviation."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

_FRAME, _HOP, _FFT = 400, 160, 512  # 25 ms windows every 10 ms at 16 kHz, as Kaldi's fbank
_PREEMPHASIS = 0.97
_MEL_FLOOR = 1.192092955078125e-07  # float32's epsilon, Kaldi's floor


def _kaldi_mel(hertz: np.ndarray) -> np.ndarray:
    return 1127.0 * np.log(1.0 + hertz / 700.0)


def kaldi_mel_filters(num_mel_bins: int, sampling_rate: int, low: float = 20.0) -> np.ndarray:
    """Kaldi's triangular mel filters (triangles in mel space), (``_FFT // 2 + 1``, num_mel_bins).

    Args:
      num_mel_bins: the filters.
      sampling_rate: the audio's rate; the filters span ``low`` to its Nyquist frequency.
      low: the lowest frequency, in Hz.

    Returns:
      The float64 filter matrix.

    >>> kaldi_mel_filters(8, 16000).shape
    (257, 8)
    """
    bins = _FFT // 2 + 1
    mel = np.linspace(_kaldi_mel(low), _kaldi_mel(sampling_rate // 2), num_mel_bins + 2)
    fft_mel = _kaldi_mel(sampling_rate / ((bins - 1) * 2) * np.arange(bins))
    slopes = mel[None, :] - fft_mel[:, None]
    diff = np.diff(mel)
    return np.maximum(0.0, np.minimum(-slopes[:, :-2] / diff[:-1], slopes[:, 2:] / diff[1:]))


@dataclasses.dataclass(frozen=True)
class ASTFeatureExtractor:
    """Waveforms -> AST's input: a Kaldi log-mel filterbank (25 ms Hann windows every 10 ms, DC offset removed,
    pre-emphasis 0.97, a 512-point power spectrum, mel filters from 20 Hz), zero-padded or cropped to
    ``max_length`` frames, then ``(x - mean) / (2 * std)``; as Hugging Face's ``ASTFeatureExtractor`` without
    torchaudio.

    Attributes:
      sampling_rate: the rate the waveforms must have.
      num_mel_bins: the filterbank's bins.
      max_length: the frames every output has.
      mean: the filterbank mean to subtract (AudioSet's by default).
      std: the filterbank standard deviation (normalised by twice it).
      do_normalize: whether to normalise.

    >>> extract = ASTFeatureExtractor(num_mel_bins=16, max_length=20)
    >>> features = extract([np.sin(np.arange(3200) / 5.0), np.zeros(1600)])
    >>> features["audio"].shape, features["audio"].dtype
    ((2, 20, 16), dtype('float32'))
    """

    sampling_rate: int = 16000
    num_mel_bins: int = 128
    max_length: int = 1024
    mean: float = -4.2677393
    std: float = 4.5689974
    do_normalize: bool = True

    @classmethod
    def from_config(cls, config: dict[str, Any], **overrides: Any) -> ASTFeatureExtractor:
        """From a parsed ``preprocessor_config.json`` (its sampling_rate, num_mel_bins, max_length, mean, std and
        do_normalize), with ``overrides`` on top."""
        fields = {f.name: config[f.name] for f in dataclasses.fields(cls) if f.name in config}
        return cls(**{**fields, **overrides})

    def fbank(self, waveform: np.ndarray) -> np.ndarray:
        """One waveform's (frames, num_mel_bins) log-mel filterbank, before padding and normalisation."""
        waveform = np.asarray(waveform, np.float32).reshape(-1).astype(np.float64)
        count = 1 + (waveform.size - _FRAME) // _HOP
        if count < 1:
            return np.zeros((0, self.num_mel_bins), np.float32)
        frames = np.lib.stride_tricks.sliding_window_view(waveform, _FRAME)[::_HOP][:count].copy()
        frames -= frames.mean(axis=1, keepdims=True)
        frames[:, 1:] -= _PREEMPHASIS * frames[:, :-1].copy()
        frames[:, 0] *= 1 - _PREEMPHASIS
        frames *= np.hanning(_FRAME)
        # Hugging Face keeps the spectrum in complex64; the power in float64.
        spectrum = np.fft.rfft(frames, _FFT).astype(np.complex64)
        power = np.abs(spectrum, dtype=np.float64) ** 2
        filters = kaldi_mel_filters(self.num_mel_bins, self.sampling_rate)
        return np.log(np.maximum(_MEL_FLOOR, power @ filters)).astype(np.float32)

    def __call__(self, waveforms: Sequence[np.ndarray] | np.ndarray) -> dict[str, np.ndarray]:
        """Features for a batch of mono waveforms at ``sampling_rate``.

        Args:
          waveforms: 1-D arrays (any lengths), or an (N, samples) array.

        Returns:
          ``{"audio": (N, max_length, num_mel_bins) float32}``.
        """
        out = np.zeros((len(waveforms), self.max_length, self.num_mel_bins), np.float32)
        for i, waveform in enumerate(waveforms):
            fbank = self.fbank(waveform)[: self.max_length]
            out[i, : len(fbank)] = fbank
        if self.do_normalize:
            out = ((out - np.float32(self.mean)) / np.float32(self.std * 2)).astype(np.float32)
        return {"audio": out}
