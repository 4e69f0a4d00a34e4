"""jtl's Flax models, with uniform parameter names (``embed/...``, ``encoder/block_{i}/...``, ``head/...``)."""

from jtl.models.bert import Bert, mean_pool
from jtl.models.vit import ViT

__all__ = ["Bert", "ViT", "mean_pool"]
