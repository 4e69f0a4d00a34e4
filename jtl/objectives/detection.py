"""Object detection on a pretrained backbone: the model is a jtl vision backbone (its multi-scale feature maps),
the detector (Faster R-CNN with FPN, or DETR) is the objective's own params, and evaluation is COCO mAP through
pycocotools.

The backbone runs with its BatchNorm layers in inference mode (frozen statistics, as torchvision's v1 detectors'
``FrozenBatchNorm2d`` and DETR's ``DetrFrozenBatchNorm2d``); which of its weights train is the usual
``config.frozen``/``config.trainable`` rules (:func:`jtl.detection.backbone_frozen` turns torchvision's
``trainable_backbone_layers`` into them). A detector's own BatchNorm statistics (Faster R-CNN v2) are constants
of the objective, as its starting weights or initialisation gave them: frozen, like the backbone's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jtl import detection, models
from jtl.config import ConfigError
from jtl.masking import named_leaves
from jtl.objectives._base import Load, Objective, Stream, Sums, check_unset

DETECTORS = ("faster_rcnn", "detr")


def backbone_maps(model: Any, variables: dict, images: jax.Array, layers: tuple[int, ...] | None) -> list[jax.Array]:
    """The backbone's feature maps that a detector reads, finest first, with BatchNorm in inference mode.

    Args:
      model: a jtl vision backbone with feature maps (:func:`jtl.models.feature_maps`).
      variables: its variables.
      images: (N, H, W, C).
      layers: the stages (CNNs) or blocks (transformers) to read; None: every stage (a ResNet's stem left out).

    Returns:
      The maps, (N, h, w, c) each.

    >>> model = models.create("resnet-testing", num_classes=0)
    >>> [m.shape for m in backbone_maps(model, models.init(model), jnp.zeros((1, 64, 64, 3)), None)]
    [(1, 16, 16, 8), (1, 8, 8, 16)]
    """
    maps = models.feature_maps(model, variables, images, layers)
    return [fm.features for name, fm in maps.items() if name != "stem"]


class Detection(Objective):
    """Trains a detector on a backbone's feature maps; evaluates COCO AP on the test split.

    Args:
      detector: ``"faster_rcnn"`` or ``"detr"``.
      num_classes: foreground classes.
      data: the dataset config (detection data: ``data.max_boxes > 0``).
      fields: the detector's fields (:class:`jtl.detection.FasterRCNN` / :class:`jtl.detection.DETR`). With
        ``weights``, Faster R-CNN's set its settings over the checkpoint's (proposal counts, thresholds, anchor
        sizes), and DETR takes everything from its checkpoint (fields are an error).
      weights: a torchvision Faster R-CNN state dict or a Hugging Face DETR directory: the detector's starting
        weights (its class head re-initialised when ``num_classes`` differs); "" starts from scratch.
      layers: the backbone stages the detector reads (None: every stage for Faster R-CNN, the last for DETR).

    The backbone runs in inference mode inside the loss too: frozen BatchNorm statistics, and no dropout or drop
    path in a transformer backbone.

    >>> from jtl.config import data_config
    >>> from jtl.data import load_splits
    >>> data = data_config()
    >>> data.source, data.max_boxes, data.canvases.train, data.canvases.test = "canvases", 4, 4, 2
    >>> fields = {"fpn_channels": 8, "representation_size": 8, "anchor_sizes": (8, 16, 32)}
    >>> objective = Detection("faster_rcnn", 10, data=data, fields=fields)
    >>> model = models.create("resnet-testing", num_classes=0)
    >>> objective.load(lambda d: load_splits(d, "image", 32))
    >>> params, _ = objective.init(jax.random.PRNGKey(0), model, models.init(model))
    >>> objective.image_size, sorted(params)
    (32, ['box_head', 'box_predictor', 'fpn', 'rpn'])
    """

    metric = "eval/AP"

    def __init__(
        self,
        detector: str,
        num_classes: int,
        *,
        data: ml_collections.ConfigDict | None = None,
        fields: dict[str, Any] | None = None,
        weights: str = "",
        layers: tuple[int, ...] | None = None,
    ) -> None:
        if detector not in DETECTORS:
            raise ValueError(f"detector={detector!r}; known: {', '.join(DETECTORS)}")
        self.detector_kind, self.num_classes, self.data = detector, num_classes, data
        self.fields, self.weights, self.layers = dict(fields or {}), weights, layers
        self.results: list[dict] = []
        self.constants: dict = {}

    # --- host side: set-up ------------------------------------------------------------------------------------------
    def load(self, load: Load) -> None:
        self.primary = load(self.data)
        self.image_size = int(self.primary["image_size"])
        classes = self.primary["train"].classes
        if len(classes) != self.num_classes:
            raise ConfigError(
                f"config.num_classes={self.num_classes}, but the training data has {len(classes)} classes "
                f"({', '.join(map(str, classes[:10]))}{', ...' if len(classes) > 10 else ''})"
            )

    def train_stream(self, stream: Stream) -> Iterator[dict]:
        return stream(self.primary["train"], self.primary["train_transform"], 0)

    def init(self, rng: jax.Array, model: Any, variables: dict) -> tuple[Any, Any]:
        if models.input_kind(model) != "image":
            raise ConfigError(
                f"detection needs a vision backbone; {type(model).__name__} takes {models.input_kind(model)}"
            )
        if self.layers is None and self.detector_kind == "detr":
            self.layers = (len(model.depths) - 1,) if hasattr(model, "depths") else None
        images = jnp.zeros((1, self.image_size, self.image_size, model.num_channels), jnp.float32)
        maps = jax.eval_shape(lambda v, x: backbone_maps(model, v, x, self.layers), variables, images)
        uneven = [m.shape[1:3] for m in maps if self.image_size % m.shape[1] or self.image_size % m.shape[2]]
        if self.detector_kind == "faster_rcnn" and uneven:
            # Anchor strides and RoIAlign's level scales are image size / map size: both must be exact.
            raise ConfigError(
                f"data.image_size={self.image_size} is not a multiple of every backbone stride (feature maps "
                f"{[m.shape[1:3] for m in maps]}): use a multiple of {self.image_size // maps[-1].shape[1] or 1}"
            )
        if self.weights:
            self.detector, detector_variables = self._load_detector()
            self._check_fits(detector_variables, rng, maps)
        else:
            self.detector = self._create_detector()
            detector_variables = self._init_detector(rng, maps)
        self.constants = {k: v for k, v in detector_variables.items() if k != "params"}
        return detector_variables["params"], ()

    def _create_detector(self) -> Any:
        cls = detection.FasterRCNN if self.detector_kind == "faster_rcnn" else detection.DETR
        try:
            return cls(num_classes=self.num_classes, **self.fields)
        except TypeError as e:
            raise ConfigError(f"config.detection.fields: {e}") from e

    def _init_detector(self, rng: jax.Array, maps: list) -> dict:
        zeros = [jnp.zeros(m.shape, m.dtype) for m in maps]
        return dict(self.detector.init(rng, zeros if self.detector_kind == "faster_rcnn" else zeros[-1]))

    def _load_detector(self) -> tuple[Any, dict]:
        if self.detector_kind == "faster_rcnn":
            detector, variables, _ = detection.faster_rcnn_from_torchvision(
                self.weights, num_classes=self.num_classes, **self.fields
            )
        else:
            if self.fields:
                raise ConfigError(
                    f"config.detection.fields={sorted(self.fields)}: DETR takes its fields from "
                    f"config.detection.weights={self.weights!r}; leave them empty"
                )
            detector, variables, _ = detection.detr_from_hf(self.weights, num_classes=self.num_classes)
        return detector, dict(variables)

    def _check_fits(self, loaded: dict, rng: jax.Array, maps: list) -> None:
        """A loaded detector must take the backbone's maps: its shapes are those it would initialise with."""
        expected = dict(named_leaves(jax.eval_shape(lambda r: self._init_detector(r, maps), rng)))
        found = dict(named_leaves(loaded))
        wrong = [
            f"{name} {found.get(name, jnp.zeros(0)).shape} (expected {leaf.shape})"
            for name, leaf in expected.items()
            if name not in found or found[name].shape != leaf.shape
        ]
        if wrong:
            raise ConfigError(
                f"config.detection.weights={self.weights!r} does not fit the backbone's feature maps "
                f"{[m.shape[1:] for m in maps]} (config.model, config.detection.layers): {'; '.join(wrong[:5])}"
            )

    # --- pure -------------------------------------------------------------------------------------------------------
    def _inputs(self, forward: Any, params: Any, batch: dict) -> tuple[list, dict]:
        """The backbone's maps and the detector's variables."""
        maps = backbone_maps(forward.model, forward.variables, batch["image"], self.layers)
        return maps, {"params": params, **self.constants}

    def loss(self, forward: Any, params: Any, state: Any, batch: dict, step: jax.Array) -> tuple:
        del state, step
        maps, variables = self._inputs(forward, params, batch)
        # The step's key drives both the detector's sampling (Faster R-CNN) and its dropout (DETR).
        rng = forward.rng if forward.rng is not None else jax.random.PRNGKey(0)
        if self.detector_kind == "faster_rcnn":
            loss, metrics = detection.faster_rcnn_loss(self.detector, variables, maps, self.image_size, batch, rng)
        else:
            mask = detection.detr_pixel_mask(batch["size"], self.image_size, self.image_size)
            outputs = self.detector.apply(variables, maps[-1], mask, train=True, rngs={"dropout": rng})
            loss, metrics = detection.detr_loss_from_batch(outputs, batch)
        return loss, (forward.batch_stats, metrics)

    def predict(self, forward: Any, params: Any, batch: dict) -> dict[str, jax.Array]:
        """The detections of each image: ``boxes`` (B, D, 4) in the padded image's pixels, ``scores``,
        ``classes`` and ``valid``."""
        maps, variables = self._inputs(forward, params, batch)
        if self.detector_kind == "faster_rcnn":
            return detection.faster_rcnn_detect(self.detector, variables, maps, self.image_size, batch["size"])
        mask = detection.detr_pixel_mask(batch["size"], self.image_size, self.image_size)
        outputs = self.detector.apply(variables, maps[-1], mask)
        return detection.detr_detect(outputs, batch["size"])

    def eval_sums(self, forward: Any, params: Any, batch: dict) -> dict[str, jax.Array]:
        """The test images and their ground-truth boxes (within ``max_boxes``), reported beside COCO AP over
        :meth:`predict`'s detections."""
        del forward, params
        mask = batch["mask"]
        return {"images": jnp.sum(mask), "boxes": jnp.sum(batch["box_mask"] & mask[:, None])}

    # --- host side: evaluation --------------------------------------------------------------------------------------
    def evaluate(self, sums: Sums, model: Any, variables: Callable[[], dict]) -> dict[str, float]:
        del model, variables
        split = self.primary
        self.results = []
        for batch, outputs in sums.predictions(split["test"], split["eval_transform"]):
            real = np.asarray(batch["mask"])
            self.results += detection.to_coco_results(
                *(np.asarray(outputs[key])[real] for key in ("boxes", "scores", "classes", "valid")),
                image_ids=np.asarray(batch["image_id"])[real],
                scales=np.asarray(batch["scale"])[real],
                category_ids=split["test"].category_ids,
            )
        metrics = detection.coco_evaluate(split["test"].ground_truth(), self.results, split["test"].classes)
        metrics.update(sums(split["test"], split["eval_transform"]))
        return {f"eval/{key}": value for key, value in metrics.items()}

    def summarize(self, history: list[dict], final: dict, workdir: Path, is_chief: bool) -> dict[str, Any]:
        """Writes the last evaluation's detections as COCO results JSON (``workdir/detections.json``)."""
        del history, final
        if is_chief:
            detection.write_results(workdir / "detections.json", self.results)
        return {}


def from_config(config: ml_collections.ConfigDict) -> Detection:
    """The detection objective of a config (``config.detection``, ``config.num_classes``, ``config.data``).

    Args:
      config: the experiment config.

    Returns:
      The objective.

    >>> from jtl.config import base_config
    >>> config = base_config()
    >>> config.objective, config.detection.detector, config.data.max_boxes = "detection", "detr", 10
    >>> from_config(config).detector_kind
    'detr'
    """
    unsupported = ("mixup_alpha", "hyperrule", "transferability", "tasks", "target.source", "model.zero_shot.classes")
    check_unset(config, unsupported, "classification settings, not with config.objective='detection'")
    d = config.detection
    if d.detector not in DETECTORS:
        raise ConfigError(f"config.detection.detector={d.detector!r}; known: {', '.join(DETECTORS)}")
    if config.data.max_boxes <= 0:
        raise ConfigError(f"config.data.max_boxes={config.data.max_boxes}: detection data needs a box budget > 0")
    fields = d.fields.to_dict()
    return Detection(
        d.detector,
        config.num_classes,
        data=config.data,
        fields=fields,
        weights=d.weights,
        layers=tuple(d.layers) or None,
    )


__all__ = ["DETECTORS", "Detection", "backbone_maps", "from_config"]
