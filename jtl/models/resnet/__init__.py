"""The ResNet family: the module, its named sizes (``resnet-{18,34,50,101,152}``, ``resnet-testing``), layer
index and weight layouts (Hugging Face ``microsoft/resnet-*``, torchvision ``resnet*`` state dicts, the ResNet
inside torchvision's ``fasterrcnn_resnet50_fpn[_v2]`` ones, and the backbone of Hugging Face's
``facebook/detr-resnet-*``)."""

from jtl.models._registry import Family, register
from jtl.models.resnet._model import CONFIGS, ResNet, feature_maps, layer_index, resnet_config
from jtl.models.resnet._weights import DETR_RESNET, HF_RESNET, TORCHVISION_FASTERRCNN_RESNET, TORCHVISION_RESNET

FAMILY = register(
    Family(
        "resnet",
        ResNet,
        CONFIGS,
        layer_index,
        "image",
        (HF_RESNET, TORCHVISION_RESNET, TORCHVISION_FASTERRCNN_RESNET, DETR_RESNET),
        feature_maps,
    )
)

__all__ = [
    "DETR_RESNET",
    "FAMILY",
    "HF_RESNET",
    "TORCHVISION_FASTERRCNN_RESNET",
    "TORCHVISION_RESNET",
    "ResNet",
    "resnet_config",
]
