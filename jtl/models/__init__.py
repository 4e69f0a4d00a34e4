"""jtl's Flax models, with uniform parameter names (``embed/...``, ``encoder/block_{i}/...``, ``head/...``).

Each family is one package (``vit``, ``bert``, ``resnet``, ..., the README's model table lists them all) that
registers itself, with its named configurations, layer index, input kind and weight layouts, when it is imported
here. Audio families also give their feature extractors (:func:`load_feature_extractor`).
"""

from jtl.models._audio import load_feature_extractor, read_preprocessor_config
from jtl.models._dual import zero_shot_model
from jtl.models._layers import MEMORY_FIELDS, REMAT
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
from jtl.models.ast import AST
from jtl.models.beit import Beit
from jtl.models.bert import Albert, Bert, mean_pool
from jtl.models.clip import Clip, ClipModel, ClipText
from jtl.models.convnext import ConvNeXt
from jtl.models.deberta import Deberta
from jtl.models.dinov2 import Dinov2
from jtl.models.efficientnet import EfficientNet
from jtl.models.mobilenet_v2 import MobileNetV2
from jtl.models.modernbert import ModernBert
from jtl.models.resnet import ResNet
from jtl.models.siglip import Siglip, SiglipText
from jtl.models.swin import Swin, Swinv2
from jtl.models.vgg import VGG, adaptive_avg_pool
from jtl.models.vit import ViT
from jtl.models.wav2vec2 import Wav2Vec2

__all__ = [
    "AST",
    "MEMORY_FIELDS",
    "REMAT",
    "VGG",
    "Albert",
    "Beit",
    "Bert",
    "Clip",
    "ClipModel",
    "ClipText",
    "ConvNeXt",
    "Deberta",
    "Dinov2",
    "EfficientNet",
    "Family",
    "FeatureMap",
    "MobileNetV2",
    "ModernBert",
    "ResNet",
    "Siglip",
    "SiglipText",
    "Swin",
    "Swinv2",
    "ViT",
    "Wav2Vec2",
    "adaptive_avg_pool",
    "available",
    "create",
    "families",
    "family_of",
    "feature_maps",
    "init",
    "input_kind",
    "layer_index",
    "load_feature_extractor",
    "mean_pool",
    "model_inputs",
    "read_preprocessor_config",
    "register",
    "to_nnx",
    "top_layers",
    "unregister",
    "zero_shot_model",
]
