"""The AST family (Audio Spectrogram Transformer): the module, its named sizes (``ast-base``, ``ast-testing``),
layer index, weight layout (Hugging Face ``audio-spectrogram-transformer``) and feature extractor."""

from jtl.models._registry import Family, register
from jtl.models.ast._features import ASTFeatureExtractor, kaldi_mel_filters
from jtl.models.ast._model import AST, CONFIGS, layer_index
from jtl.models.ast._weights import HF_AST

FAMILY = register(Family("ast", AST, CONFIGS, layer_index, "audio", (HF_AST,)))

__all__ = ["AST", "FAMILY", "HF_AST", "ASTFeatureExtractor", "kaldi_mel_filters"]
