"""Object detection by transfer: box operations, Faster R-CNN with FPN and DETR over a jtl backbone's feature
maps, their weight layouts, and COCO evaluation."""

from jtl.detection._coco import coco_evaluate, to_coco_results, write_results

__all__ = ["coco_evaluate", "to_coco_results", "write_results"]
