"""Box operations with static shapes, as torchvision's ``ops.boxes``, ``BoxCoder`` and ``AnchorGenerator``, and DETR's
box formats and generalized IoU.

Boxes are ``(x0, y0, x1, y1)`` in pixels, widths ``x1 - x0`` (no ``+ 1``). Where torchvision returns lists of
dynamic length (NMS), these return a fixed number of indices and a mask of the real ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_CLIP = math.log(1000.0 / 16)


def box_area(boxes: jax.Array) -> jax.Array:
    """The areas of ``(..., 4)`` xyxy boxes.

    Args:
      boxes: ``(..., 4)`` xyxy.

    Returns:
      ``(...,)`` areas.

    >>> box_area(jnp.array([[0.0, 0.0, 2.0, 3.0]])).tolist()
    [6.0]
    """
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(a: jax.Array, b: jax.Array) -> jax.Array:
    """Intersection over union of every pair of boxes (torchvision's ``box_iou``).

    Args:
      a: ``(N, 4)`` xyxy.
      b: ``(M, 4)`` xyxy.

    Returns:
      ``(N, M)`` IoUs.

    >>> box_iou(jnp.array([[0.0, 0.0, 2.0, 2.0]]), jnp.array([[1.0, 0.0, 3.0, 2.0]])).tolist()
    [[0.3333333432674408]]
    """
    inter, union = _intersection_and_union(a, b)
    return inter / union


def _intersection_and_union(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The (N, M) intersection and union areas of every pair of xyxy boxes."""
    top_left = jnp.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = jnp.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = jnp.clip(bottom_right - top_left, 0)
    inter = wh[..., 0] * wh[..., 1]
    return inter, box_area(a)[:, None] + box_area(b)[None, :] - inter


def box_cxcywh_to_xyxy(boxes: jax.Array) -> jax.Array:
    """Centre, width, height -> corners.

    Args:
      boxes: (..., 4) ``cx, cy, w, h``.

    Returns:
      (..., 4) ``x0, y0, x1, y1``.

    >>> box_cxcywh_to_xyxy(jnp.array([0.5, 0.5, 0.2, 0.4])).tolist()
    [0.4, 0.3, 0.6, 0.7]
    """
    cx, cy, w, h = jnp.moveaxis(boxes, -1, 0)
    return jnp.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


def box_xyxy_to_cxcywh(boxes: jax.Array) -> jax.Array:
    """Corners -> centre, width, height.

    Args:
      boxes: (..., 4) ``x0, y0, x1, y1``.

    Returns:
      (..., 4) ``cx, cy, w, h``.

    >>> box_xyxy_to_cxcywh(jnp.array([0.0, 2.0, 4.0, 4.0])).tolist()
    [2.0, 3.0, 4.0, 2.0]
    """
    x0, y0, x1, y1 = jnp.moveaxis(boxes, -1, 0)
    return jnp.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], axis=-1)


def generalized_box_iou(boxes1: jax.Array, boxes2: jax.Array) -> jax.Array:
    """Pairwise generalized IoU (Rezatofighi et al. 2019) of corner boxes.

    Args:
      boxes1: (N, 4) ``x0, y0, x1, y1`` with ``x1 >= x0``, ``y1 >= y0``.
      boxes2: (M, 4) likewise.

    Returns:
      (N, M): IoU minus the share of the enclosing box that the union leaves empty, in [-1, 1] (NaN for two
      empty boxes, as the reference gives).

    >>> a = jnp.array([[0.0, 0.0, 2.0, 2.0]])
    >>> generalized_box_iou(a, jnp.array([[0.0, 0.0, 2.0, 2.0], [3.0, 0.0, 4.0, 1.0]])).tolist()
    [[1.0, -0.375]]
    """
    inter, union = _intersection_and_union(boxes1, boxes2)
    iou = inter / union
    enclosing = jnp.clip(
        jnp.maximum(boxes1[:, None, 2:], boxes2[None, :, 2:]) - jnp.minimum(boxes1[:, None, :2], boxes2[None, :, :2]),
        0,
    )
    area = enclosing[..., 0] * enclosing[..., 1]
    return iou - (area - union) / area


def encode_boxes(reference: jax.Array, proposals: jax.Array, weights: Sequence[float]) -> jax.Array:
    """Regression targets that take ``proposals`` to ``reference`` boxes (torchvision's ``BoxCoder.encode``).

    Args:
      reference: ``(..., 4)`` target (ground-truth) boxes.
      proposals: ``(..., 4)`` boxes the deltas are relative to (anchors, proposals).
      weights: ``(wx, wy, ww, wh)``.

    Returns:
      ``(..., 4)`` deltas ``(dx, dy, dw, dh)``.

    >>> encode_boxes(jnp.array([[1.0, 0.0, 3.0, 2.0]]), jnp.array([[0.0, 0.0, 2.0, 2.0]]), (1, 1, 1, 1)).tolist()
    [[0.5, 0.0, 0.0, 0.0]]
    """
    wx, wy, ww, wh = weights
    ex_w = proposals[..., 2] - proposals[..., 0]
    ex_h = proposals[..., 3] - proposals[..., 1]
    ex_x = proposals[..., 0] + 0.5 * ex_w
    ex_y = proposals[..., 1] + 0.5 * ex_h
    gt_w = reference[..., 2] - reference[..., 0]
    gt_h = reference[..., 3] - reference[..., 1]
    gt_x = reference[..., 0] + 0.5 * gt_w
    gt_y = reference[..., 1] + 0.5 * gt_h
    return jnp.stack(
        [
            wx * (gt_x - ex_x) / ex_w,
            wy * (gt_y - ex_y) / ex_h,
            ww * jnp.log(gt_w / ex_w),
            wh * jnp.log(gt_h / ex_h),
        ],
        axis=-1,
    )


def decode_boxes(
    deltas: jax.Array, anchors: jax.Array, weights: Sequence[float], clip: float = DEFAULT_CLIP
) -> jax.Array:
    """Applies regression deltas to boxes (torchvision's ``BoxCoder.decode_single``).

    Args:
      deltas: ``(..., 4)`` ``(dx, dy, dw, dh)``.
      anchors: ``(..., 4)`` xyxy boxes, broadcast against ``deltas``.
      weights: ``(wx, wy, ww, wh)``.
      clip: the largest ``dw``/``dh`` after dividing by the weights (``exp`` would overflow).

    Returns:
      ``(..., 4)`` decoded xyxy boxes.

    >>> decode_boxes(jnp.array([[0.5, 0.0, 0.0, 0.0]]), jnp.array([[0.0, 0.0, 2.0, 2.0]]), (1, 1, 1, 1)).tolist()
    [[1.0, 0.0, 3.0, 2.0]]
    """
    wx, wy, ww, wh = weights
    widths = anchors[..., 2] - anchors[..., 0]
    heights = anchors[..., 3] - anchors[..., 1]
    ctr_x = anchors[..., 0] + 0.5 * widths
    ctr_y = anchors[..., 1] + 0.5 * heights
    dw = jnp.minimum(deltas[..., 2] / ww, clip)
    dh = jnp.minimum(deltas[..., 3] / wh, clip)
    pred_x = deltas[..., 0] / wx * widths + ctr_x
    pred_y = deltas[..., 1] / wy * heights + ctr_y
    half_w = 0.5 * jnp.exp(dw) * widths
    half_h = 0.5 * jnp.exp(dh) * heights
    return jnp.stack([pred_x - half_w, pred_y - half_h, pred_x + half_w, pred_y + half_h], axis=-1)


def clip_boxes(boxes: jax.Array, size: jax.Array | Sequence[int]) -> jax.Array:
    """Clips boxes to an image (torchvision's ``clip_boxes_to_image``).

    Args:
      boxes: ``(..., 4)`` xyxy.
      size: the image's ``(height, width)``.

    Returns:
      The clipped boxes.

    >>> clip_boxes(jnp.array([[-1.0, 2.0, 9.0, 9.0]]), (8, 6)).tolist()
    [[0.0, 2.0, 6.0, 8.0]]
    """
    height, width = jnp.asarray(size[0], boxes.dtype), jnp.asarray(size[1], boxes.dtype)
    x = jnp.clip(boxes[..., 0::2], 0, width)
    y = jnp.clip(boxes[..., 1::2], 0, height)
    return jnp.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], axis=-1)


def nms(
    boxes: jax.Array, scores: jax.Array, valid: jax.Array, iou_threshold: float, max_output: int
) -> tuple[jax.Array, jax.Array]:
    """Greedy non-maximum suppression with static shapes (torchvision's ``nms``, then ``keep[:max_output]``).

    Boxes are visited by decreasing score; each kept box suppresses the later ones whose IoU with it exceeds the
    threshold. Invalid boxes are never kept and suppress nothing.

    Args:
      boxes: ``(N, 4)`` xyxy.
      scores: ``(N,)``.
      valid: ``(N,)`` bool.
      iou_threshold: suppress at IoU strictly above this.
      max_output: the number of indices returned.

    Returns:
      ``(indices (max_output,), keep_mask (max_output,))``: indices into ``boxes`` of the kept boxes by
      decreasing score, padded with 0 where ``keep_mask`` is False.

    >>> boxes = jnp.array([[0.0, 0, 2, 2], [0, 0, 2, 2.1], [3, 3, 4, 4]])
    >>> indices, keep = nms(boxes, jnp.array([0.5, 0.9, 0.1]), jnp.array([True, True, True]), 0.5, 3)
    >>> indices.tolist(), keep.tolist()
    ([1, 2, 0], [True, True, False])
    """
    n = boxes.shape[0]
    order = jnp.argsort(jnp.where(valid, -scores, jnp.inf), stable=True)
    sorted_boxes = boxes[order]
    suppresses = box_iou(sorted_boxes, sorted_boxes) > iou_threshold
    later = jnp.arange(n)[None, :] > jnp.arange(n)[:, None]
    suppresses = suppresses & later

    def visit(i: jax.Array, keep: jax.Array) -> jax.Array:
        return keep & ~(suppresses[i] & keep[i])

    keep = jax.lax.fori_loop(0, n, visit, valid[order])
    (positions,) = jnp.nonzero(keep, size=max_output, fill_value=0)
    kept = jnp.arange(max_output) < keep.sum()
    return jnp.where(kept, order[positions], 0), kept


def batched_nms(
    boxes: jax.Array,
    scores: jax.Array,
    groups: jax.Array,
    valid: jax.Array,
    iou_threshold: float,
    max_output: int,
) -> tuple[jax.Array, jax.Array]:
    """NMS within each group (class, pyramid level), by offsetting each group's boxes so that boxes of different
    groups never overlap (torchvision's ``batched_nms`` trick).

    Args:
      boxes: ``(N, 4)`` xyxy.
      scores: ``(N,)``.
      groups: ``(N,)`` int group of each box.
      valid: ``(N,)`` bool.
      iou_threshold: suppress at IoU strictly above this.
      max_output: the number of indices returned.

    Returns:
      ``(indices (max_output,), keep_mask (max_output,))`` as :func:`nms`.

    >>> boxes = jnp.array([[0.0, 0, 2, 2], [0, 0, 2, 2.1], [3, 3, 4, 4]])
    >>> indices, keep = batched_nms(boxes, jnp.array([0.5, 0.9, 0.1]), jnp.array([0, 1, 0]), jnp.ones(3, bool), 0.5, 3)
    >>> indices.tolist(), keep.tolist()
    ([1, 0, 2], [True, True, True])
    """
    extent = jnp.max(jnp.where(valid[:, None], boxes, 0.0)) + 1
    shifted = boxes + (groups.astype(boxes.dtype) * extent)[:, None]
    return nms(shifted, scores, valid, iou_threshold, max_output)


def remove_small_boxes(boxes: jax.Array, min_size: float) -> jax.Array:
    """Which boxes have both sides at least ``min_size`` (torchvision's ``remove_small_boxes``, as a mask).

    Args:
      boxes: ``(..., 4)`` xyxy.
      min_size: the smallest width and height kept.

    Returns:
      ``(...,)`` bool.

    >>> remove_small_boxes(jnp.array([[0.0, 0, 1, 1], [0, 0, 1, 0.001]]), 0.01).tolist()
    [True, False]
    """
    return ((boxes[..., 2] - boxes[..., 0]) >= min_size) & ((boxes[..., 3] - boxes[..., 1]) >= min_size)


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> np.ndarray:
    """The anchors of one feature-map cell centred on 0 (torchvision's ``AnchorGenerator.generate_anchors``).

    Args:
      sizes: anchor sizes (square roots of the areas) in pixels.
      aspect_ratios: height / width ratios.

    Returns:
      ``(len(aspect_ratios) * len(sizes), 4)`` float32, for each ratio all sizes, rounded to integers.

    >>> cell_anchors((32,), (0.5, 1.0, 2.0)).tolist()
    [[-23.0, -11.0, 23.0, 11.0], [-16.0, -16.0, 16.0, 16.0], [-11.0, -23.0, 11.0, 23.0]]
    """
    scales = np.asarray(sizes, np.float32)
    h_ratios = np.sqrt(np.asarray(aspect_ratios, np.float32))
    w_ratios = np.float32(1) / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
    hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
    return np.round(np.stack([-ws, -hs, ws, hs], axis=1) / np.float32(2)).astype(np.float32)


def anchors(
    feature_sizes: Sequence[tuple[int, int]],
    strides: Sequence[tuple[int, int]],
    sizes: Sequence[Sequence[float]],
    aspect_ratios: Sequence[float],
) -> np.ndarray:
    """The anchors of a feature pyramid, as torchvision's ``AnchorGenerator`` lays them out.

    Args:
      feature_sizes: each level's ``(height, width)``.
      strides: each level's ``(stride_y, stride_x)`` in pixels (torchvision: image size // feature size).
      sizes: each level's anchor sizes.
      aspect_ratios: the height / width ratios, for every level.

    Returns:
      ``(sum_l H_l * W_l * A_l, 4)`` float32 xyxy: level by level, locations row-major, all the cell's anchors
      at each location.

    >>> anchors([(1, 2)], [(16, 16)], [(32,)], (1.0,)).tolist()
    [[-16.0, -16.0, 16.0, 16.0], [0.0, -16.0, 32.0, 16.0]]
    """
    if not len(feature_sizes) == len(strides) == len(sizes):
        raise ValueError(
            f"anchors: feature_sizes ({len(feature_sizes)}), strides ({len(strides)}) and sizes ({len(sizes)}) "
            "need one entry per level"
        )
    out = []
    for (height, width), (stride_y, stride_x), level_sizes in zip(feature_sizes, strides, sizes, strict=True):
        base = cell_anchors(level_sizes, aspect_ratios)
        shift_y, shift_x = np.meshgrid(
            np.arange(height, dtype=np.float32) * stride_y, np.arange(width, dtype=np.float32) * stride_x, indexing="ij"
        )
        shifts = np.stack([shift_x, shift_y, shift_x, shift_y], axis=-1).reshape(-1, 1, 4)
        out.append((shifts + base[None]).reshape(-1, 4))
    return np.concatenate(out).astype(np.float32)
