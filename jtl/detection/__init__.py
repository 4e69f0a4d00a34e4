"""Object detection by transfer: box operations, Faster R-CNN with FPN and DETR over a jtl backbone's feature
maps, their weight layouts, and COCO evaluation."""

from jtl.detection._boxes import anchors, batched_nms, box_iou, clip_boxes, decode_boxes, encode_boxes, nms
from jtl.detection._faster_rcnn import FasterRCNN, faster_rcnn_detect, faster_rcnn_loss
from jtl.detection._roi_align import multiscale_roi_align, roi_align
from jtl.detection._sampling import match, sample
from jtl.detection._torchvision import faster_rcnn_from_torchvision

__all__ = [
    "FasterRCNN",
    "anchors",
    "batched_nms",
    "box_iou",
    "clip_boxes",
    "decode_boxes",
    "encode_boxes",
    "faster_rcnn_detect",
    "faster_rcnn_from_torchvision",
    "faster_rcnn_loss",
    "match",
    "multiscale_roi_align",
    "nms",
    "roi_align",
    "sample",
]
