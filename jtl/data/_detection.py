"""Object detection data: COCO JSON and TFDS sources, box-aware preprocessing, and the splits of a config.

Every source's ``source[i]`` is ``{"image": uint8 (H, W, 3), "boxes": (n, 4) float32 x0, y0, x1, y1 in pixels,
"labels": (n,) int32 in 0..C-1, "crowd": (n,) bool, "image_id": int64}``; ``source.classes`` names the labels,
``source.category_ids[label]`` is the label's category id in the COCO-format ``source.ground_truth()``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from jtl.data._tfds import DataError, tfds_source

# The 80 category ids of COCO's instances files (ids 1..90 with 10 unused): TFDS's coco labels 0..79 are these,
# in this order, so results written with them evaluate against the official annotation files.
COCO_CATEGORY_IDS = (
    *range(1, 12),
    *range(13, 26),
    27,
    28,
    *range(31, 45),
    *range(46, 66),
    67,
    70,
    *range(72, 83),
    *range(84, 91),
)


def detection_example(image: np.ndarray, boxes: Any, labels: Any, crowd: Any, image_id: int) -> dict[str, np.ndarray]:
    """One raw detection example, with the common format's dtypes and shapes (no boxes: (0, 4))."""
    return {
        "image": image,
        "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
        "labels": np.asarray(labels, np.int32).reshape(-1),
        "crowd": np.asarray(crowd, bool).reshape(-1),
        "image_id": np.int64(image_id),
    }


def coco_ground_truth(
    images: Sequence[dict[str, Any]],
    examples: Sequence[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]],
    classes: Sequence[str],
    category_ids: Sequence[int],
) -> dict[str, Any]:
    """A COCO-format ground truth (what ``pycocotools.coco.COCO`` reads) from boxes in pixels.

    Annotation ids are renumbered from 1: pycocotools marks a detection matched to annotation id 0 as unmatched.

    Args:
      images: ``{"id", "height", "width"}`` (and optionally ``"file_name"``) per image.
      examples: per image ``(image_id, boxes (n, 4) xyxy, labels (n,), crowd (n,), areas (n,) or None)``; None
        areas are the boxes' areas (COCO's own are the segmentation's).
      classes: the class names, in label order.
      category_ids: the category id of each label.

    Returns:
      ``{"images", "annotations", "categories"}``.

    >>> gt = coco_ground_truth([{"id": 3, "height": 4, "width": 5}],
    ...                        [(3, np.array([[1.0, 1, 3, 4]]), np.array([0]), np.array([False]), None)], ["a"], [1])
    >>> gt["annotations"][0]["bbox"], gt["annotations"][0]["area"], gt["annotations"][0]["id"]
    ([1.0, 1.0, 2.0, 3.0], 6.0, 1)
    """
    annotations = []
    for image_id, boxes, labels, crowd, areas in examples:
        widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        areas = widths * heights if areas is None else areas
        for box, w, h, label, is_crowd, area in zip(boxes, widths, heights, labels, crowd, areas, strict=True):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": int(image_id),
                    "category_id": int(category_ids[int(label)]),
                    "bbox": [float(box[0]), float(box[1]), float(w), float(h)],
                    "area": float(area),
                    "iscrowd": int(is_crowd),
                }
            )
    categories = [{"id": int(c), "name": str(n)} for c, n in zip(category_ids, classes, strict=True)]
    return {"images": [dict(image) for image in images], "annotations": annotations, "categories": categories}


def _rgb(pixels: np.ndarray) -> np.ndarray:
    """Any decoded image as (H, W, 3) uint8: grey is repeated, alpha is dropped."""
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.shape[-1] == 1:
        return np.repeat(pixels, 3, axis=-1)
    return pixels[..., :3]


class CocoSource:
    """A detection source over a COCO instances JSON and its image folder (the format most people's data is in).

    Category ids map to contiguous labels in sorted-id order; images without annotations are kept; ``iscrowd``
    annotations become crowd boxes; boxes with a width or height <= 0 are dropped.

    Args:
      annotations: the ``instances_*.json`` file.
      image_dir: the folder its images' ``file_name`` are relative to.

    >>> import tempfile
    >>> from jtl.data import digit_canvases, write_coco_folder
    >>> source = CocoSource(*write_coco_folder(digit_canvases(3, seed=1), tempfile.mkdtemp()))
    >>> len(source), source.classes[:3], source[0]["image"].shape
    (3, ['0', '1', '2'], (64, 64, 3))
    """

    def __init__(self, annotations: str | Path, image_dir: str | Path):
        self.path = Path(annotations)
        self.image_dir = Path(image_dir)
        try:
            data = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"COCO annotations {self.path}: not a readable JSON file ({e})") from e
        missing = [key for key in ("images", "annotations", "categories") if key not in data]
        if missing:
            raise DataError(f"COCO annotations {self.path}: no {', '.join(map(repr, missing))} key")
        categories = sorted(data["categories"], key=lambda c: c["id"])
        self.category_ids = [int(c["id"]) for c in categories]
        self.classes = [str(c.get("name", c["id"])) for c in categories]
        label_of = {c: i for i, c in enumerate(self.category_ids)}
        self.images = []
        for image in data["images"]:
            absent = [key for key in ("id", "file_name", "height", "width") if key not in image]
            if absent:
                raise DataError(f"COCO annotations {self.path}: image {image.get('id', image)}: no {absent} key")
            self.images.append({key: image[key] for key in ("id", "file_name", "height", "width")})
        missing_files = [i["file_name"] for i in self.images if not (self.image_dir / i["file_name"]).is_file()]
        if missing_files:
            raise DataError(
                f"COCO annotations {self.path}: {len(missing_files)} image file(s) not found in "
                f"{self.image_dir}, e.g. {missing_files[:3]}"
            )
        per_image: dict[int, list[tuple[list[float], int, bool, float]]] = {i["id"]: [] for i in self.images}
        for annotation in data["annotations"]:
            bbox = annotation.get("bbox")
            if not isinstance(bbox, list) or len(bbox) != 4 or not all(isinstance(v, int | float) for v in bbox):
                raise DataError(
                    f"COCO annotations {self.path}: annotation {annotation.get('id')}: bbox {bbox!r} is "
                    "not 4 numbers [x, y, width, height]"
                )
            for key, known, where in (("image_id", per_image, "images"), ("category_id", label_of, "categories")):
                if annotation.get(key) not in known:
                    raise DataError(
                        f"COCO annotations {self.path}: annotation {annotation.get('id')}: {key} "
                        f"{annotation.get(key)} is not in {where!r}"
                    )
            x, y, w, h = (float(v) for v in bbox)
            if w <= 0 or h <= 0:
                continue
            area = float(annotation.get("area", w * h))
            crowd = bool(annotation.get("iscrowd", 0))
            label = label_of[annotation["category_id"]]
            per_image[annotation["image_id"]].append(([x, y, x + w, y + h], label, crowd, area))
        self.annotations = [per_image[i["id"]] for i in self.images]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        from PIL import Image

        info, annotations = self.images[index], self.annotations[index]
        path = self.image_dir / info["file_name"]
        try:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
        except OSError as e:
            raise DataError(f"{path}: not a readable image ({e})") from e
        return detection_example(
            pixels, [a[0] for a in annotations], [a[1] for a in annotations], [a[2] for a in annotations], info["id"]
        )

    def ground_truth(self) -> dict[str, Any]:
        """The COCO-format ground truth of this source (degenerate boxes dropped, annotation ids renumbered).

        Returns:
          ``{"images", "annotations", "categories"}`` for :func:`jtl.detection.coco_evaluate`.

        >>> import tempfile
        >>> from jtl.data import digit_canvases, write_coco_folder
        >>> sorted(CocoSource(*write_coco_folder(digit_canvases(2), tempfile.mkdtemp())).ground_truth())
        ['annotations', 'categories', 'images']
        """
        rows = [
            (
                info["id"],
                np.array([a[0] for a in annotations], np.float64).reshape(-1, 4),
                np.array([a[1] for a in annotations], np.int64),
                np.array([a[2] for a in annotations], bool),
                np.array([a[3] for a in annotations], np.float64),
            )
            for info, annotations in zip(self.images, self.annotations, strict=True)
        ]
        return coco_ground_truth(self.images, rows, self.classes, self.category_ids)


class TfdsDetectionSource:
    """A TFDS detection split (``coco/2017``'s or ``voc``'s features) in the common detection format.

    TFDS boxes are normalised ``[ymin, xmin, ymax, xmax]``; COCO's ``is_crowd`` and VOC's ``is_difficult`` (which
    VOC's evaluation ignores) become crowd boxes. COCO keeps its image ids and category ids; VOC's image id is the
    example's index and its category ids are ``label + 1``.

    Args:
      source: the random-access split (``tfds.data_source``), examples as TFDS decodes them.
      kind: ``"coco"`` or ``"voc"``: which features the examples have.
      classes: the label names, in label order.

    >>> voc = {"image": np.zeros((4, 8, 3), np.uint8), "objects": {"bbox": np.array([[0.25, 0.5, 1.0, 1.0]]),
    ...        "label": np.array([2]), "is_difficult": np.array([False])}}
    >>> TfdsDetectionSource([voc], "voc", ["a", "b", "c"])[0]["boxes"]
    array([[4., 1., 8., 4.]], dtype=float32)
    """

    def __init__(self, source: Sequence[dict[str, Any]], kind: str, classes: Sequence[str]):
        if kind not in ("coco", "voc"):
            raise ValueError(f"kind={kind!r}; expected 'coco' or 'voc'")
        self.source = source
        self.kind = kind
        self.classes = list(classes)
        self.category_ids = list(COCO_CATEGORY_IDS if kind == "coco" else range(1, len(self.classes) + 1))
        self._ground_truth: dict[str, Any] | None = None

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        raw = self.source[index]
        image = _rgb(np.asarray(raw["image"]))
        height, width = image.shape[:2]
        objects = raw["objects"]
        ymin, xmin, ymax, xmax = np.asarray(objects["bbox"], np.float32).reshape(-1, 4).T
        boxes = np.stack([xmin * width, ymin * height, xmax * width, ymax * height], axis=-1)
        crowd = objects["is_crowd"] if self.kind == "coco" else objects["is_difficult"]
        image_id = raw["image/id"] if self.kind == "coco" else index
        return detection_example(image, boxes, objects["label"], crowd, int(image_id))

    def ground_truth(self) -> dict[str, Any]:
        """The COCO-format ground truth of this split (read once, decoding every image for its size, then cached).

        Returns:
          ``{"images", "annotations", "categories"}``; COCO's areas are its segmentation areas, as in the official
          annotations; VOC's are the boxes'.

        >>> voc = {"image": np.zeros((4, 8, 3), np.uint8), "objects": {"bbox": np.zeros((0, 4)),
        ...        "label": np.zeros(0), "is_difficult": np.zeros(0)}}
        >>> TfdsDetectionSource([voc], "voc", ["a"]).ground_truth()["images"]
        [{'id': 0, 'height': 4, 'width': 8}]
        """
        if self._ground_truth is None:
            images, rows = [], []
            for index in range(len(self)):
                item = self[index]
                height, width = item["image"].shape[:2]
                images.append({"id": int(item["image_id"]), "height": height, "width": width})
                areas = np.asarray(self.source[index]["objects"]["area"]) if self.kind == "coco" else None
                rows.append((item["image_id"], item["boxes"], item["labels"], item["crowd"], areas))
            self._ground_truth = coco_ground_truth(images, rows, self.classes, self.category_ids)
        return self._ground_truth


def tfds_detection_source(name: str, split: str, data_dir: str | None = None) -> TfdsDetectionSource:
    """A prepared TFDS detection split, ``coco/2017`` or ``voc/2007`` / ``voc/2012``, through ``tfds.data_source``.

    A name without a version asks for the newest prepared version (``:*.*.*``): TFDS then reads the prepared
    files' metadata rather than constructing the dataset's builder code, which for ``coco`` needs TensorFlow.

    Args:
      name: the TFDS name, optionally with a version (``coco/2017:1.1.0``).
      split: e.g. ``train`` or ``validation[:500]``.
      data_dir: where prepared datasets live (TFDS's default when None).

    Returns:
      The source; its classes are the dataset's label names.

    Raises:
      DataError: the split is not prepared, or the dataset is neither COCO nor VOC.

    >>> tfds_detection_source("mnist", "train")
    Traceback (most recent call last):
    ...
    jtl.data._tfds.DataError: 'mnist' is not a detection dataset this reads; known: coco/2017, voc/2007, voc/2012
    """
    kind = name.split("/")[0].split(":")[0]
    if kind not in ("coco", "voc"):
        raise DataError(f"{name!r} is not a detection dataset this reads; known: coco/2017, voc/2007, voc/2012")
    source = tfds_source(name if ":" in name else f"{name}:*.*.*", split, data_dir)
    classes = source.dataset_info.features["objects"]["label"].names
    return TfdsDetectionSource(source, kind, classes)


def _crop_boxes(
    boxes: np.ndarray, left: float, top: float, width: float, height: float, min_visible: float
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes in a window's coordinates, clipped to it, and which to keep: a positive clipped width and height
    and at least ``min_visible`` of the box's area inside."""
    shifted = boxes - np.array([left, top, left, top], np.float32)
    clipped = np.clip(shifted, 0, np.array([width, height, width, height], np.float32))
    area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    sides = clipped[:, 2:] - clipped[:, :2]
    keep = (sides > 0).all(axis=1) & (area(clipped) >= min_visible * area(shifted))
    return clipped, keep


class DetectionPreprocessing(NamedTuple):
    """Train/eval preprocessing of raw detection examples into the fixed-shape detection batch contract.

        Both resize keeping the aspect ratio so that the longer side is ``image_size`` (PIL's bilinear, which filters
        when it shrinks), normalise with ``mean``/``std``, and pad bottom/right with zeros to ``image_size`` squared.
        Training may first crop a random region of the image (``crop``: each side 50-100%, as DETR's random-size crop),
        multiplies the resize by a random factor in ``scale_jitter`` and takes a random ``image_size`` crop of what
        comes out larger, and flips horizontally (``flip``, half the time). A crop clips the boxes to it and drops
        those with less than ``min_visible`` of their area inside. At most ``max_boxes`` boxes are kept, real ones
        before crowd ones (in training a random choice among equals, in evaluation the first).

        The output: ``image`` (S, S, 3) float32, ``boxes`` (M, 4) float32 xyxy in resized pixels, ``labels`` (M,)
        int32, ``box_mask`` (M,) real and not crowd, ``crowd`` (M,) real and crowd, ``size`` (2,) int32 the real
        (height, width), ``scale`` (2,) float32 the (y, x) ratios resized / original (each side's own: the rounding
    of the sides makes them differ), ``image_id`` () int64.

        >>> pre = DetectionPreprocessing(16, (0.5,) * 3, (0.5,) * 3, max_boxes=3)
        >>> raw = {"image": np.zeros((8, 4, 3), np.uint8), "boxes": np.array([[1.0, 2, 3, 4]]), "labels": np.array([1]),
        ...        "crowd": np.array([False]), "image_id": 5}
        >>> out = pre.eval(raw)
        >>> out["image"].shape, out["boxes"][0].tolist(), out["box_mask"].tolist(), out["size"].tolist()
        ((16, 16, 3), [2.0, 4.0, 6.0, 8.0], [True, False, False], [16, 8])
        >>> out["scale"].tolist(), int(out["image_id"])
        ([2.0, 2.0], 5)
    """

    image_size: int
    mean: Sequence[float]
    std: Sequence[float]
    max_boxes: int
    flip: bool = True
    scale_jitter: tuple[float, float] = (1.0, 1.0)
    crop: bool = False
    min_visible: float = 0.25

    def _resize(self, image: np.ndarray, boxes: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The resized image and boxes, and the (y, x) ratios they were resized by."""
        from PIL import Image

        height, width = image.shape[:2]
        new_height, new_width = max(1, round(height * factor)), max(1, round(width * factor))
        resized = Image.fromarray(np.ascontiguousarray(image)).resize((new_width, new_height), Image.BILINEAR)
        # Boxes scale with each side's own ratio: the rounding of the sides moves the image's pixels, so the boxes.
        ratios = np.array([new_height / height, new_width / width], np.float32)
        return np.asarray(resized), boxes * np.tile(ratios[::-1], 2), ratios

    def _finish(
        self,
        image: np.ndarray,
        raw: dict[str, Any],
        boxes: np.ndarray,
        keep: np.ndarray,
        scale: np.ndarray,
        rng: np.random.Generator | None,
    ) -> dict[str, np.ndarray]:
        height, width = image.shape[:2]
        # Boxes partly outside the image (as some datasets have) are clipped to it; none outside it stays.
        boxes, inside = _crop_boxes(boxes, 0, 0, width, height, 0.0)
        keep = keep & inside
        boxes, labels, crowd = boxes[keep], np.asarray(raw["labels"])[keep], np.asarray(raw["crowd"], bool)[keep]
        ties = rng.permutation(len(boxes)) if rng is not None else np.arange(len(boxes))
        chosen = np.lexsort((ties, crowd))[: self.max_boxes]
        real = len(chosen)
        out_boxes = np.zeros((self.max_boxes, 4), np.float32)
        out_boxes[:real] = boxes[chosen]
        out_labels = np.zeros(self.max_boxes, np.int32)
        out_labels[:real] = labels[chosen]
        out_crowd = np.zeros(self.max_boxes, bool)
        out_crowd[:real] = crowd[chosen]
        mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
        canvas = np.zeros((self.image_size, self.image_size, 3), np.float32)
        canvas[:height, :width] = (image / np.float32(255.0) - mean) / std
        return {
            "image": canvas,
            "boxes": out_boxes,
            "labels": out_labels,
            "box_mask": (np.arange(self.max_boxes) < real) & ~out_crowd,
            "crowd": out_crowd,
            "size": np.array([height, width], np.int32),
            "scale": scale,
            "image_id": np.int64(raw["image_id"]),
        }

    def train(self, example: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
        """The training transform (for grain's ``random_map``).

        Args:
          example: a raw detection example.
          rng: the per-example generator.

        Returns:
          The transformed example.

        >>> pre = DetectionPreprocessing(8, (0.0,) * 3, (1.0,) * 3, max_boxes=2, scale_jitter=(1.0, 2.0))
        >>> raw = {"image": np.zeros((6, 6, 3), np.uint8), "boxes": np.zeros((0, 4)), "labels": np.zeros(0),
        ...        "crowd": np.zeros(0), "image_id": 1}
        >>> out = pre.train(raw, np.random.default_rng(0)); out["image"].shape, out["box_mask"].tolist()
        ((8, 8, 3), [False, False])
        """
        image = np.asarray(example["image"])
        boxes = np.asarray(example["boxes"], np.float32).reshape(-1, 4)
        keep = np.ones(len(boxes), bool)
        if self.crop:
            height, width = image.shape[:2]
            h, w = (max(1, round(side * rng.uniform(0.5, 1.0))) for side in (height, width))
            top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
            image = image[top : top + h, left : left + w]
            boxes, visible = _crop_boxes(boxes, left, top, w, h, self.min_visible)
            keep &= visible
        factor = self.image_size / max(image.shape[:2]) * rng.uniform(*self.scale_jitter)
        image, boxes, scale = self._resize(image, boxes, factor)
        height, width = image.shape[:2]
        h, w = min(height, self.image_size), min(width, self.image_size)
        if (h, w) != (height, width):
            top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
            image = image[top : top + h, left : left + w]
            boxes, visible = _crop_boxes(boxes, left, top, w, h, self.min_visible)
            keep &= visible
        if self.flip and rng.random() < 0.5:
            image = image[:, ::-1]
            boxes = np.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], axis=-1)
        return self._finish(image, example, boxes, keep, scale, rng)

    def eval(self, example: dict[str, Any]) -> dict[str, np.ndarray]:
        """The evaluation transform: resize, normalise, pad.

        Args:
          example: a raw detection example.

        Returns:
          The transformed example.

        >>> pre = DetectionPreprocessing(8, (0.0,) * 3, (1.0,) * 3, max_boxes=1)
        >>> raw = {"image": np.zeros((4, 2, 3), np.uint8), "boxes": np.array([[0.0, 0, 1, 1], [0, 0, 2, 2]]),
        ...        "labels": np.array([0, 1]), "crowd": np.array([True, False]), "image_id": 1}
        >>> pre.eval(raw)["boxes"].tolist(), pre.eval(raw)["labels"].tolist()
        ([[0.0, 0.0, 4.0, 4.0]], [1])
        """
        image = np.asarray(example["image"])
        factor = self.image_size / max(image.shape[:2])
        boxes = np.asarray(example["boxes"], np.float32).reshape(-1, 4)
        image, boxes, scale = self._resize(image, boxes, factor)
        return self._finish(image, example, boxes, np.ones(len(boxes), bool), scale, None)


def detection_splits(
    data: Any, image_size: int | tuple[int, int], mean: Sequence[float], std: Sequence[float]
) -> dict[str, Any]:
    """The train and test detection sources of a dataset config (``data.max_boxes > 0``), and their transforms.

    Args:
      data: a dataset config (:func:`jtl.config.data_config`): ``source`` is ``"coco"`` (``train_annotations``,
        ``train_dir``, ``test_annotations``, ``test_dir``), ``"tfds"`` (``name``, ``train_split``,
        ``test_split``, ``data_dir``) or ``"canvases"`` (``canvases.*``, ``classes``, ``split_seed``); and
        ``image_size`` (0: the model's), ``max_boxes``, ``scale_jitter``, ``crop``, ``flip``.
      image_size: the model's input resolution (square).
      mean: the normalisation's per-channel mean.
      std: its per-channel standard deviation.

    Returns:
      ``{"train", "test", "train_transform", "eval_transform", "image_size"}`` (the padded square's side).

    >>> from jtl.config import data_config
    >>> config = data_config()
    >>> config.source, config.max_boxes, config.canvases.train, config.canvases.test = "canvases", 4, 6, 2
    >>> splits = detection_splits(config, 32, (0.5,) * 3, (0.5,) * 3)
    >>> len(splits["train"]), splits["eval_transform"](splits["test"][0])["boxes"].shape
    (6, (4, 4))
    """
    from jtl.config import ConfigError

    size = data.image_size or image_size
    if not isinstance(size, int):
        if size[0] != size[1]:
            raise ConfigError(f"detection pads images to a square; image_size={tuple(size)} is not square")
        size = size[0]
    preprocessing = DetectionPreprocessing(
        int(size), tuple(mean), tuple(std), data.max_boxes, data.flip, tuple(data.scale_jitter), data.crop
    )
    if data.source == "coco":
        fields = ("train_annotations", "train_dir", "test_annotations", "test_dir")
        if not all(data[field] for field in fields):
            raise ConfigError(f"data.source='coco' needs data.{', data.'.join(fields)}")
        train = CocoSource(data.train_annotations, data.train_dir)
        test = CocoSource(data.test_annotations, data.test_dir)
        if test.category_ids != train.category_ids:
            raise ConfigError(
                f"data.test_annotations' categories {test.category_ids} differ from data.train_annotations' "
                f"{train.category_ids}: the labels would not agree"
            )
    elif data.source == "tfds":
        data_dir = data.data_dir or None
        train = tfds_detection_source(data.name, data.train_split, data_dir)
        test = tfds_detection_source(data.name, data.test_split, data_dir)
    elif data.source == "canvases":
        from jtl.data._canvases import digit_canvases

        c = data.canvases
        kwargs = {
            "canvas_size": c.canvas_size,
            "max_digits": c.max_digits,
            "classes": tuple(data.classes),
            "half": c.half if c.half >= 0 else None,
        }
        # Different seeds: the test canvases are new placements (of the same half's digits).
        train = digit_canvases(c.train, seed=data.split_seed, **kwargs)
        test = digit_canvases(c.test, seed=data.split_seed + 1, **kwargs)
    else:
        raise ConfigError(f"detection data.source={data.source!r} is not supported; known: coco, tfds, canvases")
    transforms = {"train_transform": preprocessing.train, "eval_transform": preprocessing.eval}
    return {"train": train, "test": test, **transforms, "image_size": int(size)}
