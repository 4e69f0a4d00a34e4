"""jtl's Flax models, with uniform parameter names (``embed/...``, ``encoder/block_{i}/...``, ``head/...``)."""

from jtl.models._registry import available, create, init, layer_index, model_inputs, top_layers
from jtl.models.bert import Bert, mean_pool
from jtl.models.resnet import ResNet
from jtl.models.vgg import VGG, adaptive_avg_pool
from jtl.models.vit import ViT

__all__ = [
    "VGG",
    "Bert",
    "ResNet",
    "ViT",
    "adaptive_avg_pool",
    "available",
    "create",
    "init",
    "layer_index",
    "mean_pool",
    "model_inputs",
    "top_layers",
]
