"""Matching boxes to ground truth and sampling a balanced training set of them, as torchvision's
``det_utils.Matcher`` and ``BalancedPositiveNegativeSampler``, with padded ground truth and static shapes.

Crowd boxes (COCO's ``iscrowd``, ignore regions) take part in the matching; a box whose best match is a crowd
box that it overlaps is ignored (neither positive nor negative), and crowd boxes earn no low-quality matches.
torchvision has no crowd handling (its references drop crowd boxes from the targets).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jtl.detection._boxes import box_iou

BELOW_LOW_THRESHOLD = -1
BETWEEN_THRESHOLDS = -2


def match(
    gt_boxes: jax.Array,
    box_mask: jax.Array,
    crowd: jax.Array,
    boxes: jax.Array,
    high_threshold: float,
    low_threshold: float,
    allow_low_quality_matches: bool,
) -> jax.Array:
    """The ground-truth box each box (anchor, proposal) is matched to (torchvision's ``Matcher``).

    Args:
      gt_boxes: ``(M, 4)`` xyxy, padded.
      box_mask: ``(M,)`` bool, the real non-crowd boxes.
      crowd: ``(M,)`` bool, the crowd boxes.
      boxes: ``(N, 4)`` xyxy.
      high_threshold: IoU from which a match is a positive.
      low_threshold: IoU below which a box is a negative.
      allow_low_quality_matches: also match each ground-truth box's best boxes, whatever their IoU.

    Returns:
      ``(N,)`` int32: the matched ground-truth index, ``BELOW_LOW_THRESHOLD`` (-1, a negative) or
      ``BETWEEN_THRESHOLDS`` (-2, ignored; also crowd matches).

    >>> gt = jnp.array([[0.0, 0, 10, 10], [20, 20, 30, 30]])
    >>> boxes = jnp.array([[0.0, 0, 10, 9], [0, 0, 10, 5], [50, 50, 60, 60], [20, 20, 30, 31]])
    >>> match(gt, jnp.array([True, False]), jnp.array([False, True]), boxes, 0.7, 0.3, False).tolist()
    [0, -2, -1, -2]
    """
    real = box_mask | crowd
    quality = jnp.where(real[:, None], box_iou(gt_boxes, boxes), -1.0)
    best = quality.max(axis=0)
    all_matches = quality.argmax(axis=0).astype(jnp.int32)
    matches = jnp.where(best < low_threshold, BELOW_LOW_THRESHOLD, all_matches)
    matches = jnp.where((best >= low_threshold) & (best < high_threshold), BETWEEN_THRESHOLDS, matches)
    if allow_low_quality_matches:
        best_for_gt = jnp.where(box_mask, quality.max(axis=1), jnp.inf)
        low_quality = (quality == best_for_gt[:, None]).any(axis=0)
        matches = jnp.where(low_quality, all_matches, matches)
    return jnp.where(crowd[all_matches] & (best > 0), BETWEEN_THRESHOLDS, matches)


def sample(
    rng: jax.Array, labels: jax.Array, batch_size_per_image: int, positive_fraction: float
) -> tuple[jax.Array, jax.Array]:
    """A random balanced subset of positives and negatives (torchvision's ``BalancedPositiveNegativeSampler``).

    At most ``int(batch_size_per_image * positive_fraction)`` positives, then negatives up to
    ``batch_size_per_image`` in all; each drawn uniformly without replacement.

    Args:
      rng: a PRNG key.
      labels: ``(N,)``: ``>= 1`` positive, ``0`` negative, ``-1`` ignored.
      batch_size_per_image: the number of boxes sampled (fewer where there are not enough).
      positive_fraction: the largest share of positives.

    Returns:
      ``(positive (N,), negative (N,))`` bool masks of the sampled boxes.

    >>> pos, neg = sample(jax.random.PRNGKey(0), jnp.array([1, 1, 1, 0, 0, 0, -1]), 4, 0.5)
    >>> int(pos.sum()), int(neg.sum()), bool(pos[3:].any() | neg[6])
    (2, 2, False)
    """
    n = labels.shape[0]
    priority = jax.random.uniform(rng, (n,))
    max_pos = int(batch_size_per_image * positive_fraction)
    is_pos, is_neg = labels >= 1, labels == 0
    num_pos = jnp.minimum(is_pos.sum(), max_pos)
    num_neg = jnp.minimum(is_neg.sum(), batch_size_per_image - num_pos)

    def pick(candidates: jax.Array, count: jax.Array, k: int) -> jax.Array:
        k = min(k, n)
        _, chosen = jax.lax.top_k(jnp.where(candidates, priority, -1.0), k)
        return jnp.zeros(n, bool).at[chosen].set(jnp.arange(k) < count)

    return pick(is_pos, num_pos, max_pos), pick(is_neg, num_neg, batch_size_per_image)
