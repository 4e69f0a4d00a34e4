"""DETR's set prediction loss: the Hungarian matcher and the loss itself (on the box ops of ``_boxes``), as
Hugging Face's ``loss/loss_for_object_detection.py`` (after facebookresearch/detr ``models/matcher.py``,
``models/detr.py`` and ``util/box_ops.py``) computes them, with static shapes: targets padded to M boxes with a
mask."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import linear_sum_assignment

from jtl.detection._boxes import box_cxcywh_to_xyxy, generalized_box_iou


def _assign(cost: np.ndarray, target_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """scipy's assignment for any leading batch axes: (..., Q, T), (..., T) -> (..., T) query, (..., T) matched."""
    batch = cost.shape[:-2]
    num_targets = cost.shape[-1]
    cost = cost.reshape(-1, *cost.shape[-2:])
    target_mask = np.broadcast_to(target_mask, (*batch, num_targets)).reshape(-1, num_targets)
    query = np.zeros((cost.shape[0], num_targets), np.int32)
    matched = np.zeros((cost.shape[0], num_targets), bool)
    for i in range(cost.shape[0]):
        real = np.flatnonzero(target_mask[i])
        rows, columns = linear_sum_assignment(cost[i][:, real])
        query[i, real[columns]] = rows
        matched[i, real[columns]] = True
    return query.reshape(*batch, num_targets), matched.reshape(*batch, num_targets)


def hungarian_match(cost: jax.Array, target_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The one-to-one assignment of queries to targets of least total cost (``scipy.optimize.linear_sum_assignment``
    on the host, through ``jax.pure_callback``: it runs under ``jit``, ``vmap`` and ``pmap``).

    Args:
      cost: (Q, T) the cost of giving target t to query q; NaN and infinities count as the largest float, as
        Hugging Face's matcher does (such pairs are matched only when nothing else is left). Not differentiated.
      target_mask: (T,) bool, the real targets; padded ones take no query.

    Returns:
      ``(query, matched)``: (T,) int32 the query given to each target (0 where none), and (T,) bool whether it got
      one (real targets beyond the number of queries get none).

    >>> cost = jnp.array([[0.0, 1.0, 5.0], [1.0, 0.0, 5.0], [9.0, 9.0, 0.0]])
    >>> query, matched = hungarian_match(cost, jnp.array([True, True, False]))
    >>> query.tolist(), matched.tolist()
    ([0, 1, 0], [True, True, False])
    """
    cost = jax.lax.stop_gradient(cost)
    big = jnp.finfo(cost.dtype).max
    cost = jnp.nan_to_num(cost, nan=big, posinf=big, neginf=big)
    shapes = (
        jax.ShapeDtypeStruct(cost.shape[:-2] + cost.shape[-1:], jnp.int32),
        jax.ShapeDtypeStruct(cost.shape[:-2] + cost.shape[-1:], jnp.bool_),
    )
    # "broadcast_all": under vmap the callback gets the whole batch at once, one host call per batch.
    return jax.pure_callback(_assign, shapes, cost, target_mask.astype(bool), vmap_method="broadcast_all")


# A valid stand-in for padded target boxes: zero-area boxes give NaN GIoU (0 / 0), whose gradient poisons the
# real ones even when masked.
# NumPy, not jnp: a jax array at import would start the XLA backend before jax.distributed.initialize.
_DUMMY_BOX = np.array([0.5, 0.5, 1.0, 1.0], np.float32)


def _match_image(
    logits: jax.Array,
    boxes: jax.Array,
    target_boxes: jax.Array,
    labels: jax.Array,
    mask: jax.Array,
    class_cost: float,
    bbox_cost: float,
    giou_cost: float,
) -> tuple[jax.Array, jax.Array]:
    """HF's matching cost for one image: ``bbox * L1 - class * p(target class) - giou * GIoU``."""
    prob = jax.nn.softmax(logits, axis=-1)
    cost_class = -prob[:, labels]
    cost_bbox = jnp.abs(boxes[:, None, :] - target_boxes[None, :, :]).sum(-1)
    cost_giou = -generalized_box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(target_boxes))
    cost = bbox_cost * cost_bbox + class_cost * cost_class + giou_cost * cost_giou
    return hungarian_match(cost, mask)


def _layer_losses(
    logits: jax.Array,
    boxes: jax.Array,
    target_boxes: jax.Array,
    labels: jax.Array,
    mask: jax.Array,
    num_boxes: jax.Array,
    costs: tuple[float, float, float],
    eos_coefficient: float,
) -> dict[str, jax.Array]:
    """Matches one decoder layer's predictions to the targets; its CE, L1, GIoU losses and cardinality error."""
    _, num_queries, num_labels = logits.shape
    no_object = num_labels - 1
    query, matched = jax.vmap(lambda *a: _match_image(*a, *costs))(logits, boxes, target_boxes, labels, mask)
    matched = matched & mask
    # Targets that got no query scatter out of bounds, and are dropped.
    slot = jnp.where(matched, query, num_queries)
    target_classes = jax.vmap(lambda s, c: jnp.full((num_queries,), no_object).at[s].set(c, mode="drop"))(
        slot, labels.astype(jnp.int32)
    )
    log_prob = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(log_prob, target_classes[..., None], axis=-1)[..., 0]
    weight = jnp.where(target_classes == no_object, eos_coefficient, 1.0)
    loss_ce = (weight * nll).sum() / weight.sum()

    chosen = jnp.take_along_axis(boxes, query[..., None], axis=1).astype(jnp.float32)
    l1 = jnp.abs(chosen - target_boxes).sum(-1)
    safe_chosen = jnp.where(matched[..., None], chosen, _DUMMY_BOX)
    safe_target = jnp.where(matched[..., None], target_boxes, _DUMMY_BOX)
    giou = jax.vmap(jax.vmap(lambda a, b: generalized_box_iou(a[None], b[None])[0, 0]))(
        box_cxcywh_to_xyxy(safe_chosen), box_cxcywh_to_xyxy(safe_target)
    )
    loss_bbox = jnp.where(matched, l1, 0.0).sum() / num_boxes
    loss_giou = jnp.where(matched, 1.0 - giou, 0.0).sum() / num_boxes
    predicted = (jnp.argmax(logits, -1) != no_object).sum(-1)
    cardinality = jnp.abs(predicted - mask.sum(-1)).astype(jnp.float32).mean()
    return {"loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": loss_giou, "cardinality_error": cardinality}


def detr_loss(
    logits: jax.Array,
    pred_boxes: jax.Array,
    boxes: jax.Array,
    labels: jax.Array,
    mask: jax.Array,
    *,
    aux: Sequence[Mapping[str, jax.Array]] = (),
    class_cost: float = 1.0,
    bbox_cost: float = 5.0,
    giou_cost: float = 2.0,
    eos_coefficient: float = 0.1,
    ce_weight: float = 1.0,
    bbox_weight: float = 5.0,
    giou_weight: float = 2.0,
) -> tuple[jax.Array, dict[str, Any]]:
    """DETR's Hungarian-matched set loss, as Hugging Face's ``DetrForObjectDetection(labels=...)`` computes it.

    Each decoder layer's predictions are matched to the targets separately; the loss is
    ``ce_weight * CE + bbox_weight * L1 + giou_weight * (1 - GIoU)`` summed over the final and auxiliary layers.
    CE is the mean over all queries weighted ``eos_coefficient`` for the no-object class (the last column); L1 and
    GIoU are summed over matched boxes and divided by the batch's number of real boxes (at least 1).

    Args:
      logits: (B, Q, C + 1) class logits, the last column "no object".
      pred_boxes: (B, Q, 4) predicted boxes, normalised ``cx, cy, w, h``.
      boxes: (B, M, 4) target boxes, normalised ``cx, cy, w, h`` (padded rows any value).
      labels: (B, M) int target classes ``0..C-1``.
      mask: (B, M) bool, the real targets.
      aux: the auxiliary decoder layers' outputs, each ``{"logits", "boxes"}`` shaped as above.
      class_cost: the matching cost's weight of ``-p(target class)``.
      bbox_cost: the matching cost's weight of the L1 distance.
      giou_cost: the matching cost's weight of ``-GIoU``.
      eos_coefficient: the CE weight of the no-object class.
      ce_weight: the loss weight of CE.
      bbox_weight: the loss weight of L1.
      giou_weight: the loss weight of the GIoU loss.

    Returns:
      ``(loss, metrics)``: the scalar loss; ``metrics`` holds Hugging Face's ``loss_dict`` names: ``loss_ce``,
      ``loss_bbox``, ``loss_giou``, ``cardinality_error`` and, per auxiliary layer i, the same with ``_{i}``.

    >>> logits = jnp.array([[[2.0, 0.0], [0.0, 2.0]]])
    >>> pred = jnp.array([[[0.5, 0.5, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1]]])
    >>> loss, metrics = jax.jit(detr_loss)(logits, pred, pred[:, :1], jnp.zeros((1, 1), int), jnp.ones((1, 1), bool))
    >>> round(float(loss), 4), float(metrics["loss_bbox"])
    (0.1269, 0.0)
    """
    mask = mask.astype(bool)
    boxes = boxes.astype(jnp.float32)
    num_boxes = jnp.maximum(mask.sum().astype(jnp.float32), 1.0)
    costs = (class_cost, bbox_cost, giou_cost)
    layers = [("", logits, pred_boxes)] + [(f"_{i}", a["logits"], a["boxes"]) for i, a in enumerate(aux)]
    metrics, loss = {}, jnp.zeros((), jnp.float32)
    for suffix, layer_logits, layer_boxes in layers:
        parts = _layer_losses(layer_logits, layer_boxes, boxes, labels, mask, num_boxes, costs, eos_coefficient)
        loss += ce_weight * parts["loss_ce"] + bbox_weight * parts["loss_bbox"] + giou_weight * parts["loss_giou"]
        metrics.update({name + suffix: value for name, value in parts.items()})
    return loss, metrics
