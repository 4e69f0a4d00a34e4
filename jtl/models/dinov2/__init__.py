"""The DINOv2 family: the module (with and without register tokens), its named sizes (``dinov2-{s,b,l,g}14``,
``-reg`` for registers, ``dinov2-testing``), layer index and weight layout (Hugging Face ``dinov2``,
``dinov2_with_registers``)."""

from jtl.models._registry import Family, register
from jtl.models.dinov2._model import CONFIGS, Dinov2, dinov2_config, feature_maps, layer_index
from jtl.models.dinov2._weights import HF_DINOV2, HF_DINOV2_REGISTERS

FAMILY = register(
    Family("dinov2", Dinov2, CONFIGS, layer_index, "image", (HF_DINOV2, HF_DINOV2_REGISTERS), feature_maps)
)

__all__ = ["FAMILY", "HF_DINOV2", "HF_DINOV2_REGISTERS", "Dinov2", "dinov2_config"]
