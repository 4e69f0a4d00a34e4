"""The ViT family: the module, its named sizes (``vit-{ti,s,b,l}{8,14,16,32}``, ``vit-testing``,
``vit-digits``), layer index and weight layouts (Hugging Face ViT/DeiT, big_vision/vit_jax ``.npz``)."""

from jtl.models._registry import Family, register
from jtl.models.vit._model import CONFIGS, ViT, feature_maps, layer_index, vit_config
from jtl.models.vit._weights import BIG_VISION_VIT, HF_VIT

FAMILY = register(Family("vit", ViT, CONFIGS, layer_index, "image", (HF_VIT, BIG_VISION_VIT), feature_maps))

__all__ = ["BIG_VISION_VIT", "FAMILY", "HF_VIT", "ViT", "vit_config"]
