"""The ALBERT family: the module (factorised embeddings, blocks shared across depth), its named sizes
(``albert-{base,large,xlarge,xxlarge}``, each also ``-v2``, ``albert-testing``), layer index and weight layout
(Hugging Face ``albert``); it takes text."""

from jtl.models._registry import Family, register
from jtl.models.albert._model import CONFIGS, Albert, albert_config, layer_index
from jtl.models.albert._weights import HF_ALBERT

FAMILY = register(Family("albert", Albert, CONFIGS, layer_index, "text", (HF_ALBERT,)))

__all__ = ["FAMILY", "HF_ALBERT", "Albert", "albert_config"]
