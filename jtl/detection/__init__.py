"""Object detection by transfer: box operations, Faster R-CNN with FPN and DETR over a jtl backbone's feature
maps, their weight layouts, and COCO evaluation."""

from jtl.detection._boxes import (
    anchors,
    batched_nms,
    box_cxcywh_to_xyxy,
    box_iou,
    box_xyxy_to_cxcywh,
    clip_boxes,
    decode_boxes,
    encode_boxes,
    generalized_box_iou,
    nms,
)
from jtl.detection._coco import coco_evaluate, to_coco_results, write_results
from jtl.detection._detr import DETR, detr_detect, detr_loss_from_batch, detr_pixel_mask, sine_position_embedding
from jtl.detection._detr_weights import detr_from_hf
from jtl.detection._faster_rcnn import FasterRCNN, faster_rcnn_detect, faster_rcnn_loss
from jtl.detection._freeze import backbone_frozen
from jtl.detection._roi_align import multiscale_roi_align, roi_align
from jtl.detection._sampling import match, sample
from jtl.detection._set_loss import detr_loss, hungarian_match
from jtl.detection._torchvision import faster_rcnn_from_torchvision

__all__ = [
    "DETR",
    "FasterRCNN",
    "anchors",
    "backbone_frozen",
    "batched_nms",
    "box_cxcywh_to_xyxy",
    "box_iou",
    "box_xyxy_to_cxcywh",
    "clip_boxes",
    "coco_evaluate",
    "decode_boxes",
    "detr_detect",
    "detr_from_hf",
    "detr_loss",
    "detr_loss_from_batch",
    "detr_pixel_mask",
    "encode_boxes",
    "faster_rcnn_detect",
    "faster_rcnn_from_torchvision",
    "faster_rcnn_loss",
    "generalized_box_iou",
    "hungarian_match",
    "match",
    "multiscale_roi_align",
    "nms",
    "roi_align",
    "sample",
    "sine_position_embedding",
    "to_coco_results",
    "write_results",
]
