"""The Swin family: the module, its named sizes (``swin-{tiny,small,base,large}-{224,384}``, ``swin-testing``),
layer index and weight layout (Hugging Face ``swin``)."""

from jtl.models._registry import Family, register
from jtl.models.swin._model import CONFIGS, Swin, feature_maps, layer_index, swin_config
from jtl.models.swin._weights import HF_SWIN

FAMILY = register(Family("swin", Swin, CONFIGS, layer_index, "image", (HF_SWIN,), feature_maps))

__all__ = ["FAMILY", "HF_SWIN", "Swin", "swin_config"]
