"""The ModernBERT family: the module, its named sizes (``modernbert-{base,large}``, ``modernbert-testing``), layer
index and weight layout (Hugging Face ``modernbert``); it takes text."""

from jtl.models._registry import Family, register
from jtl.models.modernbert._model import CONFIGS, ModernBert, layer_index, modernbert_config, rope_tables
from jtl.models.modernbert._weights import HF_MODERNBERT, split_qkv

FAMILY = register(Family("modernbert", ModernBert, CONFIGS, layer_index, "text", (HF_MODERNBERT,)))

__all__ = ["FAMILY", "HF_MODERNBERT", "ModernBert", "modernbert_config", "rope_tables", "split_qkv"]
