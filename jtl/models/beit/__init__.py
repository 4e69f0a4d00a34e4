"""The BEiT family: the module, its named sizes (``beit-{base,large}-patch16-224``, ``beit-testing``), layer index
and weight layout (Hugging Face ``beit``)."""

from jtl.models._registry import Family, register
from jtl.models.beit._model import CONFIGS, Beit, beit_config, feature_maps, layer_index
from jtl.models.beit._weights import HF_BEIT

FAMILY = register(Family("beit", Beit, CONFIGS, layer_index, "image", (HF_BEIT,), feature_maps))

__all__ = ["FAMILY", "HF_BEIT", "Beit", "beit_config"]
