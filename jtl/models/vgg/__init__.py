"""The VGG family: the module, its named sizes (``vgg16``, ``vgg19``, ``vgg-testing``), layer index and weight
layout (torchvision ``vgg16``/``vgg19`` state dicts)."""

from jtl.models._registry import Family, register
from jtl.models.vgg._model import CONFIGS, VGG, adaptive_avg_pool, feature_maps, layer_index, vgg_config
from jtl.models.vgg._weights import TORCHVISION_VGG

FAMILY = register(Family("vgg", VGG, CONFIGS, layer_index, "image", (TORCHVISION_VGG,), feature_maps))

__all__ = ["FAMILY", "TORCHVISION_VGG", "VGG", "adaptive_avg_pool", "vgg_config"]
