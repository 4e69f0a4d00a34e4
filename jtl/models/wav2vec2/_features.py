"""Wav2Vec2's (and HuBERT's) feature extractor in numpy: Hugging Face's ``Wav2Vec2FeatureExtractor`` with
``padding="max_length", truncation=True`` (or ``padding=True`` without a ``max_length``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class Wav2Vec2FeatureExtractor:
    """Waveforms -> the model's input: cropped to ``max_length`` samples and zero-padded to it (or to the longest
    waveform when ``max_length`` is ``None``), each normalised to zero mean and unit variance
    (``(x - mean) / sqrt(var + 1e-7)``).

    As Hugging Face's, with ``return_attention_mask`` the statistics are the real samples' and padding is set to
    ``padding_value`` after normalising, and the mask is returned; without it (the base checkpoints, trained
    without masks) the statistics include the padding and no mask is returned.

    Attributes:
      sampling_rate: the rate the waveforms must have.
      do_normalize: whether to normalise.
      return_attention_mask: whether to return (and normalise with) the attention mask.
      padding_value: the value of padded samples.
      max_length: the samples every output has (``None``: the longest input's).

    >>> extract = Wav2Vec2FeatureExtractor(return_attention_mask=True, max_length=6)
    >>> out = extract([np.array([1.0, 2.0, 3.0]), np.arange(8.0)])
    >>> out["audio"].shape, out["attention_mask"].tolist()
    ((2, 6), [[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    >>> np.round(out["audio"][0], 3).tolist()
    [-1.225, 0.0, 1.225, 0.0, 0.0, 0.0]
    """

    sampling_rate: int = 16000
    do_normalize: bool = True
    return_attention_mask: bool = False
    padding_value: float = 0.0
    max_length: int | None = None

    @classmethod
    def from_config(cls, config: dict[str, Any], **overrides: Any) -> Wav2Vec2FeatureExtractor:
        """From a parsed ``preprocessor_config.json`` (its sampling_rate, do_normalize, return_attention_mask and
        padding_value), with ``overrides`` on top."""
        fields = {f.name: config[f.name] for f in dataclasses.fields(cls) if f.name in config}
        return cls(**{**fields, **overrides})

    def __call__(self, waveforms: Sequence[np.ndarray] | np.ndarray) -> dict[str, np.ndarray]:
        """Features for a batch of mono waveforms at ``sampling_rate``.

        Args:
          waveforms: 1-D arrays (any lengths), or an (N, samples) array.

        Returns:
          ``{"audio": (N, length) float32}``, and ``"attention_mask"`` (N, length) int32 with
          ``return_attention_mask``.
        """
        waveforms = [np.asarray(w, np.float32).reshape(-1) for w in waveforms]
        length = self.max_length or max(len(w) for w in waveforms)
        audio = np.full((len(waveforms), length), self.padding_value, np.float32)
        mask = np.zeros((len(waveforms), length), np.int32)
        for i, waveform in enumerate(waveforms):
            waveform = waveform[:length]
            audio[i, : len(waveform)] = waveform
            mask[i, : len(waveform)] = 1
        if self.do_normalize:
            for i, row in enumerate(audio):
                valid = int(mask[i].sum()) if self.return_attention_mask else length
                normed = (row - row[:valid].mean()) / np.sqrt(row[:valid].var() + 1e-7)
                normed[valid:] = self.padding_value
                audio[i] = normed
        return {"audio": audio, "attention_mask": mask} if self.return_attention_mask else {"audio": audio}
