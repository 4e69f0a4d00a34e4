"""The EfficientNet family: the module, its named sizes (``efficientnet-b{0..7}``, ``efficientnet-testing``), layer
index and weight layout (Hugging Face ``efficientnet``)."""

from jtl.models._registry import Family, register
from jtl.models.efficientnet._model import CONFIGS, EfficientNet, efficientnet_config, feature_maps, layer_index
from jtl.models.efficientnet._weights import HF_EFFICIENTNET

FAMILY = register(Family("efficientnet", EfficientNet, CONFIGS, layer_index, "image", (HF_EFFICIENTNET,), feature_maps))

__all__ = ["FAMILY", "HF_EFFICIENTNET", "EfficientNet", "efficientnet_config"]
