"""COCO evaluation through pycocotools (the field's own implementation): detector outputs -> COCO results -> mAP."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

# pycocotools' stats[0:6], in its order.
METRICS = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large")


def to_coco_results(
    boxes: Any,
    scores: Any,
    classes: Any,
    valid: Any,
    image_ids: Any,
    scales: Any,
    category_ids: Sequence[int],
) -> list[dict[str, Any]]:
    """Batched detector outputs as COCO results, in the original images' pixels.

    Args:
      boxes: (B, D, 4) x0, y0, x1, y1 in the resized images' pixels.
      scores: (B, D) confidences.
      classes: (B, D) contiguous class indices.
      valid: (B, D) which detections are real (padding, and a padded batch's extra images, are not).
      image_ids: (B,) the images' ids in the ground truth.
      scales: (B, 2) the (y, x) ratios resized / original (the batch's ``scale``).
      category_ids: the category id of each contiguous class (a source's ``category_ids``).

    Returns:
      ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}, ...]``, one per valid detection.

    >>> to_coco_results([[[2.0, 4, 6, 10]]], [[0.9]], [[1]], [[True]], [7], [[2.0, 2.0]], [5, 9])
    [{'image_id': 7, 'category_id': 9, 'bbox': [1.0, 2.0, 2.0, 3.0], 'score': 0.9}]
    """
    scales = np.asarray(scales, np.float64)
    boxes = np.asarray(boxes, np.float64) / np.tile(scales[:, ::-1], 2)[:, None, :]
    scores, classes, valid = np.asarray(scores, np.float64), np.asarray(classes), np.asarray(valid, bool)
    image_ids, category_ids = np.asarray(image_ids), np.asarray(category_ids)
    results = []
    for b, d in zip(*np.nonzero(valid), strict=True):
        x0, y0, x1, y1 = boxes[b, d]
        results.append(
            {
                "image_id": int(image_ids[b]),
                "category_id": int(category_ids[classes[b, d]]),
                "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                "score": float(scores[b, d]),
            }
        )
    return results


def _coco(ground_truth: dict[str, Any]) -> Any:
    """A pycocotools ``COCO`` over an in-memory ground truth dict."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = ground_truth
    coco.createIndex()
    return coco


def coco_evaluate(
    ground_truth: dict[str, Any], results: list[dict[str, Any]], class_names: Sequence[str] | None = None
) -> dict[str, float]:
    """COCO box mAP with pycocotools' ``COCOeval`` (its printing silenced).

    Args:
      ground_truth: a COCO-format dict (a source's ``ground_truth()``): ``images``, ``annotations``,
        ``categories``.
      results: COCO results (:func:`to_coco_results`) for images of the ground truth.
      class_names: the names of the ground truth's categories in sorted-id order (a source's ``classes``), for
        the per-class keys; None: the categories' own names.

    Returns:
      ``AP`` (IoU 0.50:0.95), ``AP50``, ``AP75``, ``AP_small``, ``AP_medium``, ``AP_large`` and ``AP/<class>``
      per category, as pycocotools computes them: -1 where the ground truth has no box of that kind; all 0 when
      there are no results.

    >>> gt = {"images": [{"id": 1, "height": 10, "width": 10}], "categories": [{"id": 3, "name": "cat"}],
    ...       "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 4, 4], "area": 16,
    ...                        "iscrowd": 0}]}
    >>> metrics = coco_evaluate(gt, [{"image_id": 1, "category_id": 3, "bbox": [1, 1, 4, 4], "score": 0.5}])
    >>> metrics["AP"], metrics["AP/cat"], metrics["AP_large"]
    (1.0, 1.0, -1.0)
    """
    from pycocotools.cocoeval import COCOeval

    category_ids = sorted(c["id"] for c in ground_truth["categories"])
    names = {c["id"]: c.get("name", str(c["id"])) for c in ground_truth["categories"]}
    if class_names is not None:
        if len(class_names) != len(category_ids):
            raise ValueError(f"class_names has {len(class_names)} names for {len(category_ids)} categories")
        names = dict(zip(category_ids, class_names, strict=True))
    keys = [*METRICS, *(f"AP/{names[c]}" for c in category_ids)]
    if not results:
        return dict.fromkeys(keys, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):
        truth = _coco(ground_truth)
        evaluation = COCOeval(truth, truth.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    metrics = {name: float(value) for name, value in zip(METRICS, evaluation.stats, strict=False)}
    # precision: (IoU thresholds, recall points, categories, area ranges, max detections); pycocotools' AP averages
    # the entries > -1 at area "all" and 100 detections, as summarize() does for stats[0].
    precision = evaluation.eval["precision"][:, :, :, 0, -1]
    for k, category in enumerate(evaluation.params.catIds):
        values = precision[:, :, k]
        values = values[values > -1]
        metrics[f"AP/{names[category]}"] = float(values.mean()) if values.size else -1.0
    return metrics


def write_results(path: str | Path, results: list[dict[str, Any]]) -> Path:
    """Writes COCO results as the JSON file COCO's tools and evaluation server read.

    Args:
      path: the file to write (its folder is created).
      results: COCO results (:func:`to_coco_results`).

    Returns:
      The path written.

    >>> import tempfile, pathlib
    >>> path = write_results(pathlib.Path(tempfile.mkdtemp()) / "results.json", [])
    >>> path.read_text()
    '[]'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results))
    return path
