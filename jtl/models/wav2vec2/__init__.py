"""The Wav2Vec2 family, serving Wav2Vec2 and HuBERT (one architecture): the module, its named sizes
(``wav2vec2-base``, ``wav2vec2-large-lv60``, ``hubert-base``, ``hubert-large``, ``wav2vec2-testing``,
``wav2vec2-stable-testing``), layer index, weight layouts (Hugging Face ``wav2vec2``, ``hubert``) and feature
extractor."""

from jtl.models._registry import Family, register
from jtl.models.wav2vec2._features import Wav2Vec2FeatureExtractor
from jtl.models.wav2vec2._model import CONFIGS, Wav2Vec2, frame_lengths, layer_index
from jtl.models.wav2vec2._weights import HF_HUBERT, HF_WAV2VEC2

FAMILY = register(Family("wav2vec2", Wav2Vec2, CONFIGS, layer_index, "audio", (HF_WAV2VEC2, HF_HUBERT)))

__all__ = ["FAMILY", "HF_HUBERT", "HF_WAV2VEC2", "Wav2Vec2", "Wav2Vec2FeatureExtractor", "frame_lengths"]
