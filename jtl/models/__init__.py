"""jtl's Flax models, with uniform parameter names (``embed/...``, ``encoder/block_{i}/...``, ``head/...``).

Each family is one package (``vit``, ``dinov2``, ``bert``, ``resnet``, ``vgg``, ``convnext``, ``efficientnet``,
``mobilenet_v2``) that registers itself, with its named configurations, layer index, input kind and weight layouts,
when it is imported here.
"""

from jtl.models._nnx import to_nnx
from jtl.models._registry import (
    Family,
    FeatureMap,
    available,
    create,
    families,
    family_of,
    feature_maps,
    init,
    input_kind,
    layer_index,
    model_inputs,
    register,
    top_layers,
    unregister,
)
from jtl.models.bert import Bert, mean_pool
from jtl.models.convnext import ConvNeXt
from jtl.models.dinov2 import Dinov2
from jtl.models.efficientnet import EfficientNet
from jtl.models.mobilenet_v2 import MobileNetV2
from jtl.models.resnet import ResNet
from jtl.models.vgg import VGG, adaptive_avg_pool
from jtl.models.vit import ViT

__all__ = [
    "VGG",
    "Bert",
    "ConvNeXt",
    "Dinov2",
    "EfficientNet",
    "Family",
    "FeatureMap",
    "MobileNetV2",
    "ResNet",
    "ViT",
    "adaptive_avg_pool",
    "available",
    "create",
    "families",
    "family_of",
    "feature_maps",
    "init",
    "input_kind",
    "layer_index",
    "mean_pool",
    "model_inputs",
    "register",
    "to_nnx",
    "top_layers",
    "unregister",
]
