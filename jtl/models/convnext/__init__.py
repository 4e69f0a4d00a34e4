"""The ConvNeXt family (V1 and V2): the module, its named sizes (``convnext-{tiny,small,base,large}``,
``convnextv2-{atto,femto,pico,nano,tiny,base,large,huge}``, ``convnext-testing``, ``convnextv2-testing``), layer
index and weight layouts (Hugging Face ``convnext``, ``convnextv2``)."""

from jtl.models._registry import Family, register
from jtl.models.convnext._model import CONFIGS, ConvNeXt, convnext_config, feature_maps, layer_index
from jtl.models.convnext._weights import HF_CONVNEXT, HF_CONVNEXTV2

FAMILY = register(
    Family("convnext", ConvNeXt, CONFIGS, layer_index, "image", (HF_CONVNEXT, HF_CONVNEXTV2), feature_maps)
)

__all__ = ["FAMILY", "HF_CONVNEXT", "HF_CONVNEXTV2", "ConvNeXt", "convnext_config"]
