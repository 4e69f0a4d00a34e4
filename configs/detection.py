"""Object detection by transfer: a detector on a backbone's feature maps, trained and evaluated by COCO AP.

Offline, on the synthetic testbed (scikit-learn's digits pasted onto 64x64 canvases, several per canvas, some
overlapping, some canvases empty; 10 classes):

    python -m jtl.train --config configs/detection.py:faster_rcnn
    python -m jtl.train --config configs/detection.py:faster_rcnn_v2
    python -m jtl.train --config configs/detection.py:detr
    python -m jtl.train --config configs/detection.py:faster_rcnn,frozen --config.model.pretrained=DIR

On a COCO-format folder (instances JSON + image directory; ``num_classes`` = its categories):

    python -m jtl.train --config configs/detection.py:faster_rcnn --config.data.source=coco \\
        --config.data.train_annotations=train.json --config.data.train_dir=images/ \\
        --config.data.test_annotations=val.json --config.data.test_dir=images/ --config.num_classes=3

From COCO-trained detectors (with your data's flags as above):

    python -m jtl.train --config configs/detection.py:faster_rcnn,weights=fasterrcnn_resnet50_fpn.pth,layers=3
    python -m jtl.train --config configs/detection.py:detr,weights=facebook/detr-resnet-50

Arguments: a detector (``faster_rcnn``, ``faster_rcnn_v2``, ``detr``), then options after commas: ``frozen`` (the
backbone frozen, only the detector trains), ``layers=N`` (torchvision's ``trainable_backbone_layers``: the last N
backbone stages train), ``weights=PATH`` (a torchvision ``fasterrcnn_resnet50_fpn[_v2]`` state dict or a Hugging
Face DETR directory: the backbone goes to the model, the rest to the detector, its class head re-initialised for
``num_classes``; the checkpoint's architecture and torchvision's detector settings, 800-pixel images). Without
``weights`` or ``--config.model.pretrained`` the backbone starts from scratch.
``python -m benchmarks.detection`` pretrains the backbone on digit classification and compares scratch, frozen and
fine-tuned starts over three seeds (BENCHMARKS.md): Faster R-CNN reaches COCO AP about 0.30 from scratch, 0.41
with the pretrained backbone frozen and 0.42 fine-tuned; DETR stays near 0 in these 400 steps.
"""

from jtl.config import base_config
from jtl.detection import backbone_frozen

DETECTORS = ("faster_rcnn", "faster_rcnn_v2", "detr")
# A small ResNet for 64x64 canvases: four stages at strides 4 to 32, as resnet-50's but narrow.
BACKBONE = {"depths": (1, 1, 1, 1), "hidden_sizes": (16, 32, 64, 128), "embedding_size": 16, "image_size": 64}


def _detector_fields(detector):
    if detector == "detr":
        return {
            "d_model": 64,
            "encoder_layers": 2,
            "decoder_layers": 2,
            "encoder_attention_heads": 4,
            "decoder_attention_heads": 4,
            "encoder_ffn_dim": 128,
            "decoder_ffn_dim": 128,
            "num_queries": 16,
            "dropout": 0.0,
        }
    return {
        "version": "v2" if detector == "faster_rcnn_v2" else "v1",
        "fpn_channels": 32,
        "anchor_sizes": (8, 16, 32, 64, 128),
        "representation_size": 128,
        "rpn_pre_nms_top_n_train": 300,
        "rpn_post_nms_top_n_train": 150,
        "rpn_pre_nms_top_n_test": 300,
        "rpn_post_nms_top_n_test": 150,
        "box_batch_size_per_image": 128,
        "detections_per_img": 20,
    }


def get_config(arg=None):
    detector, *options = (arg or "faster_rcnn").split(",")
    if detector not in DETECTORS:
        raise ValueError(f"configs/detection.py:{detector}: expected one of {DETECTORS}")
    c = base_config()
    c.objective = "detection"
    c.num_classes = 10
    c.model.name = "resnet-18"
    c.model.overrides = dict(BACKBONE)
    c.detection.detector = "detr" if detector == "detr" else "faster_rcnn"
    c.detection.fields = _detector_fields(detector)

    c.data.source = "canvases"
    c.data.max_boxes = 8
    c.data.image_size = 64
    c.data.canvases.train = 200
    c.data.canvases.test = 100
    c.data.canvases.half = 1  # the other half of the digits than benchmarks/detection.py's pretraining uses
    c.data.mean, c.data.std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    c.data.crop = False  # canvases: every digit stays whole; scale jitter augments
    c.data.flip = False  # a mirrored digit is not the same digit
    c.data.scale_jitter = (0.8, 1.2)

    for option in options:
        if option.startswith("weights="):
            c.model.pretrained = c.detection.weights = option.removeprefix("weights=")
            c.model.overrides, c.detection.fields = {}, {}
            c.data.image_size = 800
        elif option == "frozen":
            c.frozen = backbone_frozen(0, len(BACKBONE["depths"]))
        elif option.startswith("layers="):
            c.frozen = backbone_frozen(int(option.removeprefix("layers=")), len(BACKBONE["depths"]))
        else:
            raise ValueError(f"configs/detection.py: unknown option {option!r}; known: frozen, layers=N, weights=PATH")

    c.optimizer = "adamw"
    c.learning_rate = 1e-3 if detector == "detr" else 3e-3
    c.weight_decay = 1e-4
    c.warmup_steps = 50
    c.total_steps = 400
    c.batch_size = 16
    c.eval_batch_size = 32
    c.log_every = 50
    c.eval_every = 0
    c.checkpoint_every = 200
    return c
