"""Object detection by transfer: box operations, Faster R-CNN with FPN and DETR over a jtl backbone's feature
maps, their weight layouts, and COCO evaluation."""

from jtl.detection._coco import coco_evaluate, to_coco_results, write_results
from jtl.detection._freeze import backbone_frozen

__all__ = ["backbone_frozen", "coco_evaluate", "to_coco_results", "write_results"]
