"""The MobileNetV2 family: the module, its named sizes (``mobilenet_v2-{1.4-224,1.0-224,0.75-160,0.35-96}``,
``mobilenet_v2-testing``), layer index and weight layout (Hugging Face ``mobilenet_v2``)."""

from jtl.models._registry import Family, register
from jtl.models.mobilenet_v2._model import CONFIGS, MobileNetV2, feature_maps, layer_index, mobilenet_v2_config
from jtl.models.mobilenet_v2._weights import HF_MOBILENET_V2

FAMILY = register(Family("mobilenet_v2", MobileNetV2, CONFIGS, layer_index, "image", (HF_MOBILENET_V2,), feature_maps))

__all__ = ["FAMILY", "HF_MOBILENET_V2", "MobileNetV2", "mobilenet_v2_config"]
