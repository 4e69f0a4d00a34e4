"""Object detection by transfer: box operations, Faster R-CNN with FPN and DETR over a jtl backbone's feature
maps, their weight layouts, and COCO evaluation."""

from jtl.detection._coco import coco_evaluate, to_coco_results, write_results
from jtl.detection._detr import DETR, detr_detect, detr_loss_from_batch, detr_pixel_mask, sine_position_embedding
from jtl.detection._detr_weights import detr_from_hf
from jtl.detection._freeze import backbone_frozen
from jtl.detection._set_loss import (
    box_cxcywh_to_xyxy,
    box_xyxy_to_cxcywh,
    detr_loss,
    generalized_box_iou,
    hungarian_match,
)

__all__ = [
    "DETR",
    "backbone_frozen",
    "box_cxcywh_to_xyxy",
    "box_xyxy_to_cxcywh",
    "coco_evaluate",
    "detr_detect",
    "detr_from_hf",
    "detr_loss",
    "detr_loss_from_batch",
    "detr_pixel_mask",
    "generalized_box_iou",
    "hungarian_match",
    "sine_position_embedding",
    "to_coco_results",
    "write_results",
]
