"""The Swin families: Swin (``swin-{tiny,small,base,large}-{224,384}``, ``swin-testing``) and Swin V2, which builds
on it (``swinv2-{tiny,small,base}-256``, ``swinv2-{base,large}-384``, ``swinv2-testing``): the modules, named sizes,
layer index, feature maps and weight layouts (Hugging Face ``swin``, ``swinv2``)."""

from jtl.models._registry import Family, register
from jtl.models.swin._model import CONFIGS, Swin, feature_maps, layer_index, swin_config
from jtl.models.swin._v2_model import CONFIGS as V2_CONFIGS
from jtl.models.swin._v2_model import Swinv2, swinv2_config
from jtl.models.swin._v2_weights import HF_SWINV2
from jtl.models.swin._weights import HF_SWIN

FAMILY = register(Family("swin", Swin, CONFIGS, layer_index, "image", (HF_SWIN,), feature_maps))
V2_FAMILY = register(Family("swinv2", Swinv2, V2_CONFIGS, layer_index, "image", (HF_SWINV2,), feature_maps))

__all__ = ["FAMILY", "HF_SWIN", "HF_SWINV2", "V2_FAMILY", "Swin", "Swinv2", "swin_config", "swinv2_config"]
