"""The Swin V2 family: the module, its named sizes (``swinv2-{tiny,small,base}-256``, ``swinv2-{base,large}-384``,
``swinv2-testing``), layer index and feature maps (Swin's) and weight layout (Hugging Face ``swinv2``)."""

from jtl.models._registry import Family, register
from jtl.models.swin._model import feature_maps, layer_index
from jtl.models.swinv2._model import CONFIGS, Swinv2, swinv2_config
from jtl.models.swinv2._weights import HF_SWINV2

FAMILY = register(Family("swinv2", Swinv2, CONFIGS, layer_index, "image", (HF_SWINV2,), feature_maps))

__all__ = ["FAMILY", "HF_SWINV2", "Swinv2", "swinv2_config"]
