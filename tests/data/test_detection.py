"""Detection data: the sources' common format, the testbed, and transforms that keep boxes on their pixels."""

import json

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from jtl.config import ConfigError, data_config
from jtl.data import (
    CocoSource,
    DataError,
    DetectionPreprocessing,
    TfdsDetectionSource,
    digit_canvases,
    load_splits,
    tfds_detection_source,
    train_batches,
    write_coco_folder,
)
from jtl.data._canvases import INK

MEAN, STD = (0.2, 0.4, 0.6), (0.5, 0.25, 0.125)


def _coloured(height, width, boxes):
    """A black image whose box k is filled with pure channel k (at most 3 boxes): each box's pixels are known."""
    image = np.zeros((height, width, 3), np.uint8)
    for k, (x0, y0, x1, y1) in enumerate(np.asarray(boxes, int)):
        image[y0:y1, x0:x1, k] = 255
    n = len(boxes)
    return {
        "image": image,
        "boxes": np.asarray(boxes, np.float32),
        "labels": np.arange(n, dtype=np.int32),
        "crowd": np.arange(n) == 2,
        "image_id": np.int64(4),
    }


def _check_boxes_on_their_pixels(out, raw, pre):
    """Every kept box encloses its colour's region (pixels more than half that colour) to within a pixel; a box
    that was dropped has less than ``min_visible`` of itself visible, give or take the edge pixels."""
    height, width = out["size"]
    assert not out["image"][height:].any() and not out["image"][:, width:].any()  # zero padding
    pixels = out["image"][:height, :width] * np.array(STD, np.float32) + np.array(MEAN, np.float32)
    kept = out["box_mask"] | out["crowd"]
    np.testing.assert_array_equal(out["crowd"][kept], raw["crowd"][out["labels"][kept]])
    for k in range(len(raw["boxes"])):
        rows, cols = np.nonzero(pixels[..., k] > 0.5)
        rows_found = np.flatnonzero(kept & (out["labels"] == k))
        if not len(rows_found):
            x0, y0, x1, y1 = raw["boxes"][k] * np.tile(out["scale"][::-1], 2)
            assert len(rows) <= pre.min_visible * (x1 - x0) * (y1 - y0) + 2 * (x1 - x0 + y1 - y0)
            continue
        region = [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
        np.testing.assert_allclose(out["boxes"][rows_found[0]], region, atol=1.0)


@pytest.mark.parametrize("height, width", [(40, 60), (90, 50)])
def test_train_transform_keeps_boxes_on_their_pixels(height, width):
    raw = _coloured(height, width, [[3, 4, 20, 30], [30, 10, 38, 22], [width - 12, height - 15, width - 1, height]])
    pre = DetectionPreprocessing(48, MEAN, STD, max_boxes=4, scale_jitter=(0.6, 1.8), crop=True)
    flipped = dropped = 0
    for seed in range(24):
        out = pre.train(raw, np.random.default_rng(seed))
        assert out["image"].shape == (48, 48, 3) and out["boxes"].shape == (4, 4) and out["image_id"] == 4
        _check_boxes_on_their_pixels(out, raw, pre)
        kept = out["box_mask"] | out["crowd"]
        dropped += kept.sum() < 3
        first = np.flatnonzero(kept & (out["labels"] == 0))
        flipped += bool(len(first)) and out["boxes"][first[0], 0] > out["size"][1] / 2
    assert flipped and dropped  # both happened, so the check above covered them


def test_eval_transform_resizes_the_longer_side_and_pads():
    raw = _coloured(30, 45, [[3, 4, 20, 30], [30, 10, 38, 22]])
    pre = DetectionPreprocessing(36, MEAN, STD, max_boxes=3)
    out = pre.eval(raw)
    np.testing.assert_array_equal(out["size"], [24, 36])
    np.testing.assert_array_equal(out["scale"], np.float32([24 / 30, 36 / 45]))
    np.testing.assert_allclose(out["boxes"][:2], raw["boxes"] * 0.8, atol=1e-5)
    np.testing.assert_array_equal(out["box_mask"], [True, True, False])
    _check_boxes_on_their_pixels(out, raw, pre)


def test_max_boxes_keeps_real_boxes_before_crowd_ones_and_handles_no_boxes():
    raw = _coloured(20, 20, [[0, 0, 4, 4], [5, 5, 9, 9], [10, 10, 14, 14]])
    raw["crowd"] = np.array([True, False, False])
    pre = DetectionPreprocessing(20, MEAN, STD, max_boxes=2, flip=False)
    for seed in range(3):
        out = pre.train(raw, np.random.default_rng(seed))
        assert sorted(out["labels"].tolist()) == [1, 2] and out["box_mask"].all() and not out["crowd"].any()
    one = DetectionPreprocessing(20, MEAN, STD, max_boxes=1, flip=False)
    labels = {int(one.train(raw, np.random.default_rng(seed))["labels"][0]) for seed in range(8)}
    assert labels == {1, 2}  # a random choice among the real boxes
    empty = {**raw, "boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int32), "crowd": np.zeros(0, bool)}
    out = pre.train(empty, np.random.default_rng(0))
    assert not out["box_mask"].any() and not out["boxes"].any()


def test_digit_canvases_boxes_are_the_digits_tight_boxes():
    source = digit_canvases(12, canvas_size=40, max_digits=1, scale=(1.5, 3.0), empty_fraction=0.3, seed=3)
    counts = [len(source[i]["boxes"]) for i in range(len(source))]
    assert set(counts) == {0, 1}
    for i in range(len(source)):
        item = source[i]
        ink = np.nonzero(item["image"][..., 0] > INK * 255)
        if len(item["boxes"]):
            x0, y0, x1, y1 = item["boxes"][0]
            assert [ink[1].min(), ink[0].min(), ink[1].max() + 1, ink[0].max() + 1] == [x0, y0, x1, y1]
        else:
            assert not len(ink[0])
    crowded = digit_canvases(6, max_digits=4, empty_fraction=0.0, classes=(2, 7), seed=1)
    assert max(len(crowded[i]["labels"]) for i in range(6)) > 1
    assert {int(label) for i in range(6) for label in crowded[i]["labels"]} == {0, 1}
    assert crowded.classes == ["2", "7"] and crowded.category_ids == [1, 2]
    other_half = digit_canvases(6, max_digits=4, empty_fraction=0.0, classes=(2, 7), half=1, seed=1)
    assert not np.array_equal(other_half.images, digit_canvases(6, classes=(2, 7), half=0, seed=1).images)


def test_coco_folder_round_trip(tmp_path):
    source = digit_canvases(5, canvas_size=32, scale=(1.5, 3.0), seed=4)
    path, image_dir = write_coco_folder(source, tmp_path)
    coco = CocoSource(path, image_dir)
    assert (coco.classes, coco.category_ids, len(coco)) == (source.classes, source.category_ids, 5)
    for i in range(5):
        for key, value in source[i].items():
            np.testing.assert_array_equal(coco[i][key], value, err_msg=key)
    written = coco.ground_truth()
    assert [{k: v for k, v in i.items() if k != "file_name"} for i in written["images"]] == source.ground_truth()[
        "images"
    ]
    assert written["annotations"] == source.ground_truth()["annotations"]


def _write(tmp_path, data):
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_source_maps_categories_keeps_empty_images_and_reads_any_mode(tmp_path):
    Image.fromarray(np.full((6, 8), 200, np.uint8)).save(tmp_path / "grey.png")
    Image.fromarray(np.full((5, 4, 4), 90, np.uint8)).save(tmp_path / "rgba.png")
    data = {
        "images": [
            {"id": 3, "file_name": "grey.png", "height": 6, "width": 8},
            {"id": 9, "file_name": "rgba.png", "height": 5, "width": 4},
        ],
        "categories": [{"id": 40, "name": "b"}, {"id": 7, "name": "a"}],
        "annotations": [
            {"id": 1, "image_id": 3, "category_id": 40, "bbox": [1, 2, 3, 4], "area": 5.5, "iscrowd": 0},
            {"id": 2, "image_id": 3, "category_id": 7, "bbox": [0, 0, 8, 6], "iscrowd": 1},
            {"id": 3, "image_id": 3, "category_id": 7, "bbox": [2, 2, 0, 3], "iscrowd": 0},  # degenerate: dropped
        ],
    }
    source = CocoSource(_write(tmp_path, data), tmp_path)
    assert (source.classes, source.category_ids) == (["a", "b"], [7, 40])
    first, second = source[0], source[1]
    np.testing.assert_array_equal(first["image"], np.full((6, 8, 3), 200, np.uint8))
    np.testing.assert_array_equal(first["boxes"], [[1, 2, 4, 6], [0, 0, 8, 6]])
    np.testing.assert_array_equal(first["labels"], [1, 0])
    np.testing.assert_array_equal(first["crowd"], [False, True])
    assert second["image"].shape == (5, 4, 3) and second["boxes"].shape == (0, 4) and second["image_id"] == 9
    annotations = source.ground_truth()["annotations"]
    assert [(a["id"], a["category_id"], a["area"], a["iscrowd"]) for a in annotations] == [
        (1, 40, 5.5, 0),
        (2, 7, 48.0, 1),
    ]


def test_coco_source_errors_name_the_file_and_the_fault(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    image = {"id": 1, "file_name": "a.png", "height": 4, "width": 4}
    good = {"images": [image], "categories": [{"id": 1, "name": "x"}], "annotations": []}
    with pytest.raises(DataError, match=r"instances.json: no 'categories' key"):
        CocoSource(_write(tmp_path, {"images": [], "annotations": []}), tmp_path)
    with pytest.raises(DataError, match=r"instances.json: 1 image file\(s\) not found .*'b.png'"):
        CocoSource(_write(tmp_path, {**good, "images": [{**image, "file_name": "b.png"}]}), tmp_path)
    bad_box = {"id": 8, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3]}
    with pytest.raises(DataError, match=r"instances.json: annotation 8: bbox \[1, 2, 3\] is not 4 numbers"):
        CocoSource(_write(tmp_path, {**good, "annotations": [bad_box]}), tmp_path)
    with pytest.raises(DataError, match=r"annotation 8: category_id 2 is not in 'categories'"):
        CocoSource(
            _write(tmp_path, {**good, "annotations": [{**bad_box, "bbox": [1, 2, 3, 4], "category_id": 2}]}), tmp_path
        )


def test_tfds_voc_through_data_source_under_mock_data():
    rng = np.random.default_rng(0)
    examples = [
        {
            "image": rng.integers(0, 255, (20, 30, 3), np.uint8),
            "objects": {
                "bbox": np.array([[0.1, 0.2, 0.5, 0.9], [0.0, 0.0, 1.0, 1.0]], np.float32),
                "label": np.array([14, 3]),
                "is_difficult": np.array([False, True]),
                "is_truncated": np.array([False, False]),
                "pose": np.array([0, 0]),
            },
        },
        {
            "image": rng.integers(0, 255, (8, 6, 3), np.uint8),
            "objects": {
                "bbox": np.zeros((0, 4), np.float32),
                "label": np.zeros(0, np.int64),
                "is_difficult": np.zeros(0, bool),
                "is_truncated": np.zeros(0, bool),
                "pose": np.zeros(0),
            },
        },
    ]

    class Split(list):
        """What ``tfds.data_source`` returns: random access and the dataset's info."""

    def as_data_source(builder, split, **kwargs):
        split_source = Split(examples)
        split_source.dataset_info = builder.info
        return split_source

    with tfds.testing.mock_data(as_data_source_fn=as_data_source):
        source = tfds_detection_source("voc/2007", "validation")
    assert source.classes[:3] == ["aeroplane", "bicycle", "bird"] and len(source.classes) == 20
    item = source[0]
    np.testing.assert_allclose(item["boxes"], [[6, 2, 27, 10], [0, 0, 30, 20]], atol=1e-5)
    np.testing.assert_array_equal(item["labels"], [14, 3])
    np.testing.assert_array_equal(item["crowd"], [False, True])  # difficult: ignored, as VOC's evaluation does
    truth = source.ground_truth()
    assert truth["images"] == [{"id": 0, "height": 20, "width": 30}, {"id": 1, "height": 8, "width": 6}]
    assert [(a["category_id"], a["iscrowd"]) for a in truth["annotations"]] == [(15, 0), (4, 1)]


def test_tfds_coco_features():
    """coco/2017's builder needs TensorFlow to construct (its features use tf.int64), so mock_data cannot run it
    here: its examples, as ``tfds.data_source`` decodes them, go to the source directly."""
    coco = {
        "image": np.zeros((10, 20, 3), np.uint8),
        "image/id": np.int64(139),
        "image/filename": "a.jpg",
        "objects": {
            "bbox": np.array([[0.5, 0.25, 1.0, 0.5]], np.float32),
            "label": np.array([79]),
            "is_crowd": np.array([True]),
            "area": np.array([12.5]),
            "id": np.array([5]),
        },
    }
    source = TfdsDetectionSource([coco], "coco", [str(i) for i in range(80)])
    item = source[0]
    np.testing.assert_allclose(item["boxes"], [[5, 5, 10, 10]])
    assert item["image_id"] == 139 and item["crowd"].tolist() == [True]
    annotation = source.ground_truth()["annotations"][0]
    assert (annotation["category_id"], annotation["area"], annotation["iscrowd"]) == (90, 12.5, 1)


def test_load_splits_detection_config_and_batches(tmp_path):
    config = data_config()
    assert config.max_boxes == 0  # classification configs are unchanged
    config.source, config.max_boxes, config.image_size = "canvases", 5, 24
    config.canvases.update(train=4, test=3, canvas_size=32, max_digits=2)
    splits = load_splits(config, image_size=224)
    assert (len(splits["train"]), len(splits["test"])) == (4, 3)
    batch = next(train_batches(splits["train"], 2, seed=0, transform=splits["train_transform"]))
    shapes = {key: (value.shape, value.dtype.name) for key, value in batch.items()}
    assert shapes == {
        "image": ((2, 24, 24, 3), "float32"),
        "boxes": ((2, 5, 4), "float32"),
        "labels": ((2, 5), "int32"),
        "box_mask": ((2, 5), "bool"),
        "crowd": ((2, 5), "bool"),
        "size": ((2, 2), "int32"),
        "scale": ((2, 2), "float32"),
        "image_id": ((2,), "int64"),
    }
    config.source = "coco"
    config.train_annotations, config.train_dir = (str(p) for p in write_coco_folder(splits["train"], tmp_path / "a"))
    config.test_annotations, config.test_dir = (str(p) for p in write_coco_folder(splits["test"], tmp_path / "b"))
    coco = load_splits(config)
    np.testing.assert_array_equal(coco["test"][2]["boxes"], splits["test"][2]["boxes"])
    config.test_dir = ""
    with pytest.raises(ConfigError, match=r"data.source='coco' needs data.train_annotations"):
        load_splits(config)
    config.source = "digits"
    with pytest.raises(ConfigError, match=r"detection data.source='digits' is not supported"):
        load_splits(config)
    assert isinstance(config.canvases, ml_collections.ConfigDict)
