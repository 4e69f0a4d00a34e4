"""COCO evaluation: our metrics against pycocotools' own, run directly on files as its users run it."""

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from jtl.detection import coco_evaluate, to_coco_results, write_results

CATEGORIES = [{"id": 5, "name": "dog"}, {"id": 2, "name": "cat"}]


def _ground_truth():
    """Three images; boxes small (< 32^2), medium and large; one crowd region; both categories."""
    rng = np.random.default_rng(0)
    images = [{"id": i, "height": 300, "width": 400} for i in (10, 11, 12)]
    annotations = []
    for image in images:
        for side in (20, 50, 120, 30, 70):
            x, y = rng.uniform(0, 400 - side), rng.uniform(0, 300 - side)
            w, h = side * rng.uniform(0.8, 1.2), side * rng.uniform(0.8, 1.2)
            annotations.append(
                {
                    "image_id": image["id"],
                    "category_id": int(rng.choice([2, 5])),
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    annotations.append({"image_id": 12, "category_id": 5, "bbox": [0, 0, 200, 150], "area": 30000, "iscrowd": 1})
    for index, annotation in enumerate(annotations):
        annotation["id"] = index + 1
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}


def _predictions(ground_truth, rng):
    """Jittered copies of most boxes with random scores, some with the wrong class, plus false positives."""
    results = []
    for a in ground_truth["annotations"]:
        x, y, w, h = a["bbox"]
        if rng.random() < 0.85:
            noise = rng.normal(0, 0.08 * np.sqrt(w * h), 4)
            category = a["category_id"] if rng.random() < 0.8 else 7 - a["category_id"]
            box = [x + noise[0], y + noise[1], w + noise[2], h + noise[3]]
            results.append({"image_id": a["image_id"], "category_id": category, "bbox": box, "score": rng.random()})
    for _ in range(6):
        box = [*rng.uniform(0, 250, 2), *rng.uniform(10, 100, 2)]
        results.append(
            {
                "image_id": int(rng.choice([10, 11, 12])),
                "category_id": int(rng.choice([2, 5])),
                "bbox": box,
                "score": rng.random(),
            }
        )
    return results


def _pycocotools(tmp_path, ground_truth, results_path, category=None):
    """pycocotools as its own users run it: COCO(file), loadRes(file), COCOeval, summarize."""
    (tmp_path / "gt.json").write_text(json.dumps(ground_truth))
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(tmp_path / "gt.json"))
        evaluation = COCOeval(truth, truth.loadRes(str(results_path)), "bbox")
        if category is not None:
            evaluation.params.catIds = [category]
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation.stats


def test_metrics_and_per_class_ap_equal_pycocotools(tmp_path):
    ground_truth = _ground_truth()
    results = _predictions(ground_truth, np.random.default_rng(1))
    path = write_results(tmp_path / "out" / "results.json", results)
    assert json.loads(path.read_text()) == results
    metrics = coco_evaluate(ground_truth, results)
    stats = _pycocotools(tmp_path, ground_truth, path)
    expected = dict(zip(["AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large"], stats[:6], strict=True))
    assert {k: metrics[k] for k in expected} == pytest.approx(expected, abs=1e-12)
    assert 0.2 < metrics["AP"] < 0.9  # a mixed result, so the comparison means something
    for category in CATEGORIES:
        alone = _pycocotools(tmp_path, ground_truth, path, category=category["id"])
        assert metrics[f"AP/{category['name']}"] == pytest.approx(alone[0], abs=1e-12)
    assert metrics["AP/dog"] != metrics["AP/cat"]
    renamed = coco_evaluate(ground_truth, results, class_names=["kitten", "puppy"])  # sorted ids: 2, 5
    assert (renamed["AP/kitten"], renamed["AP/puppy"]) == (metrics["AP/cat"], metrics["AP/dog"])


def test_perfect_predictions_give_one_and_no_predictions_give_zero():
    ground_truth = _ground_truth()
    perfect = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in ground_truth["annotations"]
        if not a["iscrowd"]
    ]
    metrics = coco_evaluate(ground_truth, perfect)
    assert set(metrics.values()) == {1.0} and len(metrics) == 8
    assert set(coco_evaluate(ground_truth, []).values()) == {0.0}
    with pytest.raises(ValueError, match="class_names has 1 names for 2 categories"):
        coco_evaluate(ground_truth, perfect, class_names=["x"])


def test_to_coco_results_maps_back_to_original_pixels_and_category_ids():
    ground_truth = _ground_truth()
    category_ids = [2, 5]
    rng = np.random.default_rng(2)
    images = [image["id"] for image in ground_truth["images"]]
    scales = rng.uniform(0.5, 2.0, (len(images), 2))  # (y, x): the two sides resize by different ratios
    detections = 8  # padded: each image's boxes first, the rest invalid
    boxes = np.zeros((len(images), detections, 4), np.float32)
    scores = rng.random((len(images), detections)).astype(np.float32)
    classes = np.zeros((len(images), detections), np.int32)
    valid = np.zeros((len(images), detections), bool)
    for b, image_id in enumerate(images):
        mine = [a for a in ground_truth["annotations"] if a["image_id"] == image_id]
        for d, a in enumerate(mine):
            x, y, w, h = a["bbox"]
            boxes[b, d] = np.array([x, y, x + w, y + h]) * np.tile(scales[b, ::-1], 2)
            classes[b, d] = category_ids.index(a["category_id"])
            valid[b, d] = True
    results = to_coco_results(boxes, scores, classes, valid, np.array(images, np.int64), scales, category_ids)
    annotations = ground_truth["annotations"]
    assert len(results) == len(annotations) == valid.sum()
    for result, annotation in zip(results, annotations, strict=True):  # row-major: image by image, box by box
        assert (result["image_id"], result["category_id"]) == (annotation["image_id"], annotation["category_id"])
        np.testing.assert_allclose(result["bbox"], annotation["bbox"], atol=1e-4)  # float32 boxes in the batch
    assert [r["score"] for r in results] == [float(s) for s in scores[valid]]
