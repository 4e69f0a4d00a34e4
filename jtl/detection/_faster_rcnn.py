"""Faster R-CNN with a feature pyramid (torchvision's ``fasterrcnn_resnet50_fpn`` and ``_v2``) over a jtl
backbone's feature maps, as a flax module and two pure functions: the training loss and the detections.

The backbone is not part of the module: :func:`faster_rcnn_loss` and :func:`faster_rcnn_detect` take its NHWC
maps (finest first, e.g. ResNet's ``stage_0..stage_3``) and the (square, padded) image size.

Where this differs from torchvision (static shapes, so that everything runs under ``jit``/``vmap``/``pmap``):

- Proposals: each level keeps its ``min(pre_nms_top_n, anchors)`` best anchors as torchvision does, NMS runs
  over all levels at once with per-level offsets, and exactly ``post_nms_top_n`` proposals come out with a mask
  of the real ones (torchvision's lists are shorter where NMS removed more).
- Sampling: the balanced sampler draws with random priorities and ``top_k`` (:mod:`._sampling`); the box head
  runs on exactly ``box_batch_size_per_image`` rows per image, the unfilled ones masked out of the losses.
- Ground truth is padded (``box_mask``); crowd boxes make the boxes that they best match ignored (torchvision
  has no crowd handling); ground-truth boxes are appended to the proposals (``add_gt_proposals``), padded rows
  masked.
- Detections: per-class NMS runs class by class (``vmap``) rather than over all ``proposals x classes`` boxes
  at once (the same result, without the quadratic IoU matrix over all of them); exactly
  ``detections_per_img`` rows come out with ``valid``.
- Losses are normalised by the number of sampled boxes in the batch as torchvision does (over all images of
  the batch on one device; under ``pmap`` each device normalises its own share).
- v2's BatchNorms (FPN, box head) always run in inference mode with their stored statistics (``batch_stats``),
  as the frozen backbone does: they are not updated during fine-tuning.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jtl.detection._boxes import anchors, batched_nms, clip_boxes, decode_boxes, encode_boxes, nms, remove_small_boxes
from jtl.detection._roi_align import multiscale_roi_align
from jtl.detection._sampling import BETWEEN_THRESHOLDS, match, sample

# torchvision's initialisations: FPN convs kaiming_uniform(a=1), RPN normal(0.01), nn.Linear's default, v2's box
# head convs kaiming_normal(fan_out, relu).
_FPN_INIT = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")
_RPN_INIT = nn.initializers.normal(0.01)
_LINEAR_INIT = nn.initializers.variance_scaling(1.0 / 3, "fan_in", "uniform")
_HEAD_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
_BN = dict(use_running_average=True, epsilon=1e-5)


class _ConvNorm(nn.Module):
    """A convolution, with a BatchNorm (and then no bias) for v2."""

    features: int
    kernel: int
    norm: bool
    init: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        pad = self.kernel // 2
        x = nn.Conv(
            self.features,
            (self.kernel, self.kernel),
            padding=((pad, pad), (pad, pad)),
            use_bias=not self.norm,
            kernel_init=self.init,
            name="conv",
        )(x)
        return nn.BatchNorm(**_BN, name="bn")(x) if self.norm else x


def _upsample_nearest(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """PyTorch's ``interpolate(mode="nearest")`` of ``(..., H, W, C)`` to ``size``: source ``floor(i * in / out)``."""
    rows = np.minimum(np.floor(np.arange(size[0]) * (x.shape[-3] / size[0])).astype(np.int32), x.shape[-3] - 1)
    cols = np.minimum(np.floor(np.arange(size[1]) * (x.shape[-2] / size[1])).astype(np.int32), x.shape[-2] - 1)
    return x[..., rows, :, :][..., cols, :]


class FPN(nn.Module):
    """torchvision's ``FeaturePyramidNetwork`` with ``LastLevelMaxPool``."""

    channels: int
    norm: bool

    @nn.compact
    def __call__(self, maps: Sequence[jax.Array]) -> list[jax.Array]:
        n = len(maps)
        inner = [_ConvNorm(self.channels, 1, self.norm, _FPN_INIT, name=f"inner_{i}") for i in range(n)]
        layer = [_ConvNorm(self.channels, 3, self.norm, _FPN_INIT, name=f"layer_{i}") for i in range(n)]
        last = inner[-1](maps[-1])
        out = [layer[-1](last)]
        for i in range(n - 2, -1, -1):
            last = inner[i](maps[i]) + _upsample_nearest(last, maps[i].shape[-3:-1])
            out.insert(0, layer[i](last))
        # max_pool2d(kernel 1, stride 2) keeps every other pixel.
        return [*out, out[-1][..., ::2, ::2, :]]


class RPNHead(nn.Module):
    """torchvision's ``RPNHead``: ``conv_depth`` 3x3 convs with ReLU, then objectness and box deltas per anchor."""

    num_anchors: int
    conv_depth: int

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        channels = x.shape[-1]
        for k in range(self.conv_depth):
            conv = nn.Conv(channels, (3, 3), padding=((1, 1), (1, 1)), kernel_init=_RPN_INIT, name=f"conv_{k}")
            x = nn.relu(conv(x))
        logits = nn.Conv(self.num_anchors, (1, 1), kernel_init=_RPN_INIT, name="cls_logits")(x)
        deltas = nn.Conv(4 * self.num_anchors, (1, 1), kernel_init=_RPN_INIT, name="bbox_pred")(x)
        return logits, deltas


class BoxHead(nn.Module):
    """torchvision's ``TwoMLPHead`` (v1: ``fc6``, ``fc7``) or ``FastRCNNConvFCHead`` (v2: four 3x3 conv+BN+ReLU,
    then one FC); flattens the NHWC ``(7, 7, C)`` crops in that order."""

    version: str
    representation_size: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.version == "v1":
            x = x.reshape(x.shape[0], -1)
            x = nn.relu(nn.Dense(self.representation_size, kernel_init=_LINEAR_INIT, name="fc6")(x))
            return nn.relu(nn.Dense(self.representation_size, kernel_init=_LINEAR_INIT, name="fc7")(x))
        for k in range(4):
            x = nn.relu(_ConvNorm(256, 3, True, _HEAD_CONV_INIT, name=f"conv_{k}")(x))
        x = x.reshape(x.shape[0], -1)
        return nn.relu(nn.Dense(self.representation_size, kernel_init=_LINEAR_INIT, name="fc")(x))


class BoxPredictor(nn.Module):
    """torchvision's ``FastRCNNPredictor``: class logits and per-class box deltas (background at 0)."""

    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        logits = nn.Dense(self.num_classes, kernel_init=_LINEAR_INIT, name="cls_score")(x)
        deltas = nn.Dense(4 * self.num_classes, kernel_init=_LINEAR_INIT, name="bbox_pred")(x)
        return logits, deltas.reshape(x.shape[0], self.num_classes, 4)


class FasterRCNN(nn.Module):
    """Faster R-CNN's FPN, RPN and box heads (torchvision's design) over a backbone's feature maps.

    ``init`` with :meth:`__call__` (the maps of a batch); train with :func:`faster_rcnn_loss`, predict with
    :func:`faster_rcnn_detect`.

    Attributes:
      num_classes: foreground classes; the predictor has ``num_classes + 1`` outputs, background at 0.
      version: ``"v1"`` (``fasterrcnn_resnet50_fpn``) or ``"v2"`` (``fasterrcnn_resnet50_fpn_v2``: BatchNorm in
        the FPN and a 4-conv + 1-FC box head, two RPN convs).
      fpn_channels: the pyramid's channels.
      anchor_sizes: one anchor size per pyramid level (the backbone's maps, then the max-pooled one).
      aspect_ratios: the anchors' height / width ratios at every level.
      representation_size: the box head's width.
      rpn_pre_nms_top_n_train: anchors per level kept before NMS, training.
      rpn_pre_nms_top_n_test: the same, detection.
      rpn_post_nms_top_n_train: proposals per image after NMS, training.
      rpn_post_nms_top_n_test: the same, detection.
      rpn_nms_thresh: the proposals' NMS IoU.
      rpn_fg_iou_thresh: anchor IoU from which it is a positive.
      rpn_bg_iou_thresh: anchor IoU below which it is a negative.
      rpn_batch_size_per_image: anchors sampled per image.
      rpn_positive_fraction: the largest share of positives among them.
      box_fg_iou_thresh: proposal IoU from which it is a positive.
      box_bg_iou_thresh: proposal IoU below which it is a background.
      box_batch_size_per_image: proposals sampled per image.
      box_positive_fraction: the largest share of positives among them.
      box_score_thresh: detections scoring at most this are dropped.
      box_nms_thresh: the per-class NMS IoU of detections.
      detections_per_img: detections per image.
      bbox_reg_weights: the box head's box-coder weights.
      smooth_l1_beta: both box losses' smooth-L1 beta.
      sampling_ratio: RoIAlign's points per bin side.
      pool_size: RoIAlign's output size.

    >>> detector = FasterRCNN(num_classes=3, fpn_channels=8, representation_size=16)
    >>> maps = [jnp.zeros((1, 16, 16, 4)), jnp.zeros((1, 8, 8, 4)), jnp.zeros((1, 4, 4, 4)), jnp.zeros((1, 2, 2, 4))]
    >>> variables = jax.jit(detector.init)(jax.random.PRNGKey(0), maps)
    >>> variables["params"]["box_predictor"]["cls_score"]["kernel"].shape
    (16, 4)
    """

    num_classes: int
    version: str = "v1"
    fpn_channels: int = 256
    anchor_sizes: tuple[float, ...] = (32, 64, 128, 256, 512)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    representation_size: int = 1024
    rpn_pre_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_test: int = 1000
    rpn_nms_thresh: float = 0.7
    rpn_fg_iou_thresh: float = 0.7
    rpn_bg_iou_thresh: float = 0.3
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    box_fg_iou_thresh: float = 0.5
    box_bg_iou_thresh: float = 0.5
    box_batch_size_per_image: int = 512
    box_positive_fraction: float = 0.25
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    detections_per_img: int = 100
    bbox_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    smooth_l1_beta: float = 1.0 / 9
    sampling_ratio: int = 2
    pool_size: int = 7

    def setup(self) -> None:
        if self.version not in ("v1", "v2"):
            raise ValueError(f"FasterRCNN.version={self.version!r}: expected 'v1' or 'v2'")
        v2 = self.version == "v2"
        self.fpn = FPN(self.fpn_channels, v2)
        self.rpn = RPNHead(len(self.aspect_ratios), 2 if v2 else 1)
        self.box_head = BoxHead(self.version, self.representation_size)
        self.box_predictor = BoxPredictor(self.num_classes + 1)

    def pyramid(self, maps: Sequence[jax.Array]) -> tuple[list[jax.Array], list[jax.Array], list[jax.Array]]:
        """The FPN levels and the RPN's objectness logits ``(B, H, W, A)`` and deltas ``(B, H, W, 4A)`` on each."""
        if len(maps) + 1 != len(self.anchor_sizes):
            raise ValueError(
                f"FasterRCNN.anchor_sizes has {len(self.anchor_sizes)} sizes for {len(maps)} feature maps + 1 "
                "max-pooled level: give one size per level"
            )
        levels = self.fpn(maps)
        heads = [self.rpn(x) for x in levels]
        return levels, [h[0] for h in heads], [h[1] for h in heads]

    def box_outputs(self, crops: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Class logits ``(R, C + 1)`` and per-class deltas ``(R, C + 1, 4)`` of ``(R, 7, 7, F)`` crops."""
        return self.box_predictor(self.box_head(crops))

    def __call__(self, maps: Sequence[jax.Array]) -> tuple[jax.Array, jax.Array]:
        """Runs every layer once (for ``init``): the box outputs of an all-zero crop.

        Args:
          maps: the backbone's ``(B, H_l, W_l, C_l)`` maps, finest first.

        Returns:
          ``(logits (1, C + 1), deltas (1, C + 1, 4))``.
        """
        self.pyramid(maps)
        return self.box_outputs(jnp.zeros((1, self.pool_size, self.pool_size, self.fpn_channels)))


def _forward(detector: FasterRCNN, variables: dict, maps: Sequence[jax.Array], image_size: int) -> dict[str, Any]:
    levels, logits, deltas = detector.apply(variables, list(maps), method=FasterRCNN.pyramid)
    shapes = [x.shape[1:3] for x in levels]
    grid = anchors(
        shapes,
        [(image_size // h, image_size // w) for h, w in shapes],
        [(s,) for s in detector.anchor_sizes],
        detector.aspect_ratios,
    )
    batch = levels[0].shape[0]
    return {
        "levels": levels[:-1],
        "logits": [x.reshape(batch, -1) for x in logits],
        "deltas": [x.reshape(batch, -1, 4) for x in deltas],
        "anchors": jnp.asarray(grid),
        "counts": [h * w * len(detector.aspect_ratios) for h, w in shapes],
    }


def _proposals(
    detector: FasterRCNN,
    logits: list[jax.Array],
    deltas: list[jax.Array],
    grid: jax.Array,
    counts: list[int],
    size: jax.Array,
    pre_nms: int,
    post_nms: int,
) -> tuple[jax.Array, jax.Array]:
    """One image's proposals ``(post_nms, 4)`` and their mask (torchvision's ``RPN.filter_proposals``)."""
    starts = np.cumsum([0, *counts[:-1]])
    picked_logits, picked_deltas, picked_anchors, picked_levels = [], [], [], []
    for level, (lg, dl, start, count) in enumerate(zip(logits, deltas, starts, counts, strict=True)):
        top, index = jax.lax.top_k(lg, min(pre_nms, count))
        picked_logits.append(top)
        picked_deltas.append(dl[index])
        picked_anchors.append(grid[start + index])
        picked_levels.append(jnp.full(index.shape, level, jnp.int32))
    scores = jax.nn.sigmoid(jax.lax.stop_gradient(jnp.concatenate(picked_logits)))
    deltas_ = jax.lax.stop_gradient(jnp.concatenate(picked_deltas))
    boxes = clip_boxes(decode_boxes(deltas_, jnp.concatenate(picked_anchors), (1.0, 1.0, 1.0, 1.0)), size)
    valid = remove_small_boxes(boxes, 1e-3)
    index, keep = batched_nms(boxes, scores, jnp.concatenate(picked_levels), valid, detector.rpn_nms_thresh, post_nms)
    return boxes[index], keep


def _smooth_l1(x: jax.Array, beta: float) -> jax.Array:
    n = jnp.abs(x)
    return jnp.where(n < beta, 0.5 * n**2 / beta, n - 0.5 * beta)


# NumPy, not jnp: a jax array at import would start the XLA backend before jax.distributed.initialize.
_UNIT_BOX = np.array([0.0, 0.0, 1.0, 1.0], np.float32)


def _rpn_terms(
    detector: FasterRCNN, logits: jax.Array, deltas: jax.Array, grid: jax.Array, target: dict, rng: jax.Array
) -> jax.Array:
    """One image's RPN loss sums ``(objectness, box, sampled count)``."""
    gt = jnp.where(target["box_mask"][:, None], target["boxes"], _UNIT_BOX)
    matched = match(
        target["boxes"],
        target["box_mask"],
        target["crowd"],
        grid,
        detector.rpn_fg_iou_thresh,
        detector.rpn_bg_iou_thresh,
        True,
    )
    labels = jnp.where(matched >= 0, 1, jnp.where(matched == BETWEEN_THRESHOLDS, -1, 0))
    pos, neg = sample(rng, labels, detector.rpn_batch_size_per_image, detector.rpn_positive_fraction)
    targets = encode_boxes(gt[jnp.maximum(matched, 0)], grid, (1.0, 1.0, 1.0, 1.0))
    targets = jnp.where(pos[:, None], targets, 0.0)
    box = jnp.where(pos[:, None], _smooth_l1(deltas - targets, detector.smooth_l1_beta), 0.0).sum()
    bce = _sigmoid_bce(logits, pos.astype(logits.dtype))
    objectness = jnp.where(pos | neg, bce, 0.0).sum()
    return jnp.stack([objectness, box, (pos | neg).sum().astype(logits.dtype)])


def _sigmoid_bce(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """PyTorch's ``binary_cross_entropy_with_logits`` without reduction, in its stable form."""
    return jnp.maximum(logits, 0) - logits * labels + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def _roi_samples(
    detector: FasterRCNN, proposals: jax.Array, valid: jax.Array, target: dict, rng: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """One image's sampled boxes ``(S, 4)``, labels (0 background), regression targets and mask
    (torchvision's ``RoIHeads.select_training_samples``)."""
    boxes = jnp.concatenate([proposals, target["boxes"]])
    valid = jnp.concatenate([valid, target["box_mask"]])
    boxes = jnp.where(valid[:, None], boxes, _UNIT_BOX)
    matched = match(
        target["boxes"],
        target["box_mask"],
        target["crowd"],
        boxes,
        detector.box_fg_iou_thresh,
        detector.box_bg_iou_thresh,
        False,
    )
    labels = jnp.where(matched >= 0, target["labels"][jnp.maximum(matched, 0)] + 1, 0)
    labels = jnp.where((matched == BETWEEN_THRESHOLDS) | ~valid, -1, labels)
    pos, neg = sample(rng, labels, detector.box_batch_size_per_image, detector.box_positive_fraction)
    sampled = pos | neg
    count = min(detector.box_batch_size_per_image, sampled.shape[0])
    _, index = jax.lax.top_k(sampled.astype(jnp.float32), count)
    gt = jnp.where(target["box_mask"][:, None], target["boxes"], _UNIT_BOX)
    chosen = boxes[index]
    targets = encode_boxes(gt[jnp.maximum(matched[index], 0)], chosen, detector.bbox_reg_weights)
    labels = jnp.where(sampled[index], labels[index], 0)
    targets = jnp.where((labels > 0)[:, None], targets, 0.0)
    return chosen, labels, targets, sampled[index]


def faster_rcnn_loss(
    detector: FasterRCNN,
    variables: dict,
    feature_maps: Sequence[jax.Array],
    image_size: int,
    batch: dict[str, jax.Array],
    rng: jax.Array,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Faster R-CNN's training loss: the RPN's objectness and box losses plus the box head's classification and
    box-regression losses, as torchvision sums them.

    Args:
      detector: the module.
      variables: its variables (``{"params"}``; v2 also ``{"batch_stats"}``).
      feature_maps: the backbone's ``(B, H_l, W_l, C_l)`` maps, finest first.
      image_size: the padded square images' side in pixels.
      batch: ``boxes (B, M, 4)``, ``labels (B, M)`` (``0..C-1``), ``box_mask (B, M)``, ``crowd (B, M)`` and
        ``size (B, 2)`` (each image's real height, width).
      rng: a PRNG key (the samplers).

    Returns:
      ``(loss, {"rpn_objectness", "rpn_box", "classifier", "box_reg"})``.

    >>> detector = FasterRCNN(num_classes=2, fpn_channels=8, representation_size=16, rpn_pre_nms_top_n_train=20,
    ...                       rpn_post_nms_top_n_train=10, box_batch_size_per_image=8)
    >>> maps = [jnp.ones((1, 8, 8, 4)), jnp.ones((1, 4, 4, 4)), jnp.ones((1, 2, 2, 4)), jnp.ones((1, 1, 1, 4))]
    >>> variables = jax.jit(detector.init)(jax.random.PRNGKey(0), maps)
    >>> batch = {"boxes": jnp.array([[[2.0, 2, 20, 20]]]), "labels": jnp.array([[1]]),
    ...          "box_mask": jnp.array([[True]]), "crowd": jnp.array([[False]]), "size": jnp.array([[32, 32]])}
    >>> loss_fn = jax.jit(lambda v, m, b, r: faster_rcnn_loss(detector, v, m, 32, b, r))
    >>> loss, metrics = loss_fn(variables, maps, batch, jax.random.PRNGKey(1))
    >>> sorted(metrics), bool(jnp.isfinite(loss))
    (['box_reg', 'classifier', 'rpn_box', 'rpn_objectness'], True)
    """
    out = _forward(detector, variables, feature_maps, image_size)
    grid, counts = out["anchors"], out["counts"]
    targets = {k: batch[k] for k in ("boxes", "labels", "box_mask", "crowd")}
    rpn_rng, box_rng = jax.random.split(rng)
    b = out["levels"][0].shape[0]

    def per_image(logits, deltas, target, size, rng_rpn, rng_box):
        all_logits, all_deltas = jnp.concatenate(logits), jnp.concatenate(deltas)
        rpn = _rpn_terms(detector, all_logits, all_deltas, grid, target, rng_rpn)
        proposals, valid = _proposals(
            detector,
            logits,
            deltas,
            grid,
            counts,
            size,
            detector.rpn_pre_nms_top_n_train,
            detector.rpn_post_nms_top_n_train,
        )
        return rpn, _roi_samples(detector, proposals, valid, target, rng_box)

    rpn, (boxes, labels, box_targets, sampled) = jax.vmap(per_image)(
        out["logits"], out["deltas"], targets, batch["size"], jax.random.split(rpn_rng, b), jax.random.split(box_rng, b)
    )
    crops = jax.vmap(
        lambda levels, bx: multiscale_roi_align(levels, bx, detector.pool_size, detector.sampling_ratio, image_size)
    )(out["levels"], boxes)
    class_logits, box_deltas = detector.apply(
        variables, crops.reshape(-1, *crops.shape[2:]), method=FasterRCNN.box_outputs
    )
    labels, sampled, box_targets = labels.reshape(-1), sampled.reshape(-1), box_targets.reshape(-1, 4)
    n_sampled = jnp.maximum(sampled.sum(), 1).astype(class_logits.dtype)
    ce = -jnp.take_along_axis(jax.nn.log_softmax(class_logits), labels[:, None], axis=1)[:, 0]
    classifier = jnp.where(sampled, ce, 0.0).sum() / n_sampled
    own = jnp.take_along_axis(box_deltas, labels[:, None, None], axis=1)[:, 0]
    positive = (sampled & (labels > 0))[:, None]
    box_reg = jnp.where(positive, _smooth_l1(own - box_targets, detector.smooth_l1_beta), 0.0).sum() / n_sampled
    rpn = rpn.sum(axis=0)
    rpn_count = jnp.maximum(rpn[2], 1.0)
    metrics = {
        "rpn_objectness": rpn[0] / rpn_count,
        "rpn_box": rpn[1] / rpn_count,
        "classifier": classifier,
        "box_reg": box_reg,
    }
    return sum(metrics.values()), metrics


def faster_rcnn_detect(
    detector: FasterRCNN, variables: dict, feature_maps: Sequence[jax.Array], image_size: int, sizes: jax.Array
) -> dict[str, jax.Array]:
    """Detections of a batch (torchvision's ``RoIHeads.postprocess_detections``): softmax scores, per-class boxes
    clipped to each image, background dropped, scores above ``box_score_thresh``, per-class NMS, the best
    ``detections_per_img``.

    Args:
      detector: the module.
      variables: its variables.
      feature_maps: the backbone's ``(B, H_l, W_l, C_l)`` maps, finest first.
      image_size: the padded square images' side in pixels.
      sizes: ``(B, 2)`` each image's real (height, width).

    Returns:
      ``{"boxes" (B, D, 4), "scores" (B, D), "classes" (B, D) int32 0..C-1, "valid" (B, D)}`` by decreasing
      score, ``D = detections_per_img``.

    >>> detector = FasterRCNN(num_classes=2, fpn_channels=8, representation_size=16, rpn_pre_nms_top_n_test=20,
    ...                       rpn_post_nms_top_n_test=10, detections_per_img=5)
    >>> maps = [jnp.ones((1, 8, 8, 4)), jnp.ones((1, 4, 4, 4)), jnp.ones((1, 2, 2, 4)), jnp.ones((1, 1, 1, 4))]
    >>> variables = jax.jit(detector.init)(jax.random.PRNGKey(0), maps)
    >>> detect = jax.jit(lambda v, m, s: faster_rcnn_detect(detector, v, m, 32, s))
    >>> out = detect(variables, maps, jnp.array([[32, 32]]))
    >>> out["boxes"].shape, out["valid"].shape
    ((1, 5, 4), (1, 5))
    """
    out = _forward(detector, variables, feature_maps, image_size)
    grid, counts = out["anchors"], out["counts"]
    pre, post = detector.rpn_pre_nms_top_n_test, detector.rpn_post_nms_top_n_test
    proposals, valid = jax.vmap(lambda lg, dl, size: _proposals(detector, lg, dl, grid, counts, size, pre, post))(
        out["logits"], out["deltas"], sizes
    )
    crops = jax.vmap(
        lambda levels, bx: multiscale_roi_align(levels, bx, detector.pool_size, detector.sampling_ratio, image_size)
    )(out["levels"], proposals)
    class_logits, box_deltas = detector.apply(
        variables, crops.reshape(-1, *crops.shape[2:]), method=FasterRCNN.box_outputs
    )
    b, r = proposals.shape[:2]
    num = detector.detections_per_img
    scores = jax.nn.softmax(class_logits).reshape(b, r, -1)[:, :, 1:]
    boxes = decode_boxes(box_deltas.reshape(b, r, -1, 4), proposals[:, :, None], detector.bbox_reg_weights)
    boxes = jax.vmap(clip_boxes)(boxes, sizes)[:, :, 1:]
    keep = valid[:, :, None] & (scores > detector.box_score_thresh) & remove_small_boxes(boxes, 1e-2)
    per_class = min(r, num)

    def image(boxes, scores, keep):
        # (R, C, ...) -> class by class, then the best `num` over all classes' survivors.
        index, kept = jax.vmap(
            lambda bx, sc, kp: nms(bx, sc, kp, detector.box_nms_thresh, per_class), in_axes=(1, 1, 1)
        )(boxes, scores, keep)
        classes = jnp.broadcast_to(jnp.arange(scores.shape[1])[:, None], index.shape)
        cand_scores = jnp.where(kept, scores[index, classes], -jnp.inf).reshape(-1)
        top, flat = jax.lax.top_k(cand_scores, min(num, cand_scores.shape[0]))
        rows, cls = index.reshape(-1)[flat], classes.reshape(-1)[flat]
        ok = top > -jnp.inf
        return {
            "boxes": jnp.where(ok[:, None], boxes[rows, cls], 0.0),
            "scores": jnp.where(ok, top, 0.0),
            "classes": jnp.where(ok, cls, 0).astype(jnp.int32),
            "valid": ok,
        }

    result = jax.vmap(image)(boxes, scores, keep)
    pad = num - result["valid"].shape[1]
    if pad:
        result = {k: jnp.pad(v, [(0, 0), (0, pad)] + [(0, 0)] * (v.ndim - 2)) for k, v in result.items()}
    return result
