"""The DeBERTa family (v2 and v3): the module, its named sizes (``deberta-v3-{xsmall,small,base,large}``,
``deberta-testing``), layer index and weight layout (Hugging Face ``deberta-v2``); it takes text."""

from jtl.models._registry import Family, register
from jtl.models.deberta._model import CONFIGS, Deberta, deberta_config, layer_index, log_bucket_positions
from jtl.models.deberta._weights import HF_DEBERTA_V2

FAMILY = register(Family("deberta", Deberta, CONFIGS, layer_index, "text", (HF_DEBERTA_V2,)))

__all__ = ["FAMILY", "HF_DEBERTA_V2", "Deberta", "deberta_config", "log_bucket_positions"]
