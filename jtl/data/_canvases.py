"""The offline detection testbed: scikit-learn's digits pasted onto canvases, and writing any detection source as a
COCO folder (PNGs and an instances JSON)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jtl.data._arrays import digits_task
from jtl.data._detection import coco_ground_truth, detection_example
from jtl.data._images import resize_bilinear

INK = 0.1  # a pasted digit's box is the extent of its pixels above this intensity (the background stays below)
BACKGROUND = 24  # the canvas's noise, uint8 levels: dark, and below INK * 255 so it never widens a box
MAX_OVERLAP = 0.5  # a digit is placed again (up to 10 tries) where its box would overlap another's more (IoU)


class CanvasSource:
    """An in-memory detection source of digit canvases (see :func:`digit_canvases`).

    >>> source = digit_canvases(2, canvas_size=32, classes=(3, 5))
    >>> source.classes, source.category_ids, source[1]["image"].shape
    (['3', '5'], [1, 2], (32, 32, 3))
    """

    def __init__(self, images: np.ndarray, boxes: list[np.ndarray], labels: list[np.ndarray], classes: Sequence[str]):
        self.images = images
        self.boxes = boxes
        self.labels = labels
        self.classes = list(classes)
        self.category_ids = list(range(1, len(self.classes) + 1))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        labels = self.labels[index]
        return detection_example(self.images[index], self.boxes[index], labels, np.zeros(len(labels), bool), index)

    def ground_truth(self) -> dict[str, Any]:
        """The COCO-format ground truth of the canvases.

        Returns:
          ``{"images", "annotations", "categories"}``; image ids are the canvases' indices.

        >>> len(digit_canvases(3, empty_fraction=0.0).ground_truth()["images"])
        3
        """
        height, width = self.images.shape[1:3]
        images = [{"id": i, "height": height, "width": width} for i in range(len(self))]
        pairs = enumerate(zip(self.boxes, self.labels, strict=True))
        rows = [(i, boxes, labels, np.zeros(len(labels), bool), None) for i, (boxes, labels) in pairs]
        return coco_ground_truth(images, rows, self.classes, self.category_ids)


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box with each of (n, 4) others."""
    low, high = np.maximum(box[:2], others[:, :2]), np.minimum(box[2:], others[:, 2:])
    inter = np.prod(np.clip(high - low, 0, None), axis=-1)
    area = lambda b: np.prod(b[..., 2:] - b[..., :2], axis=-1)
    return inter / (area(box) + area(others) - inter)


def digit_canvases(
    count: int,
    *,
    canvas_size: int = 64,
    max_digits: int = 4,
    scale: tuple[float, float] = (1.5, 4.0),
    empty_fraction: float = 0.1,
    classes: Sequence[int] = range(10),
    half: int | None = None,
    seed: int = 0,
) -> CanvasSource:
    """Offline detection data: scikit-learn's 8x8 digits, enlarged (bilinear) and pasted onto dark canvases.

    Each canvas holds 1 to ``max_digits`` digits (none on an ``empty_fraction`` of canvases) at random positions and
    sizes; overlapping digits are composited by the brighter pixel, and a digit is re-placed (up to 10 tries) rather
    than overlap another's box by more than IoU 0.5 (after 10 tries it stays where the last one put it). A digit's
    box is the tight box of its ink.

    Args:
      count: the number of canvases.
      canvas_size: their side, in pixels.
      max_digits: the most digits on one canvas.
      scale: the range of the enlargement factor (8 x 8 -> 8 * factor pixels).
      empty_fraction: the share of canvases without any digit (the probability of each).
      classes: the digits drawn; label ``i`` is ``classes[i]``.
      half: 0 or 1: only that half of each digit's images, the same halves as :func:`jtl.data.digits_task`'s, so a
        classifier pretrained on one half never saw the other half's digits; None: all of them.
      seed: the canvases' seed.

    Returns:
      A :class:`CanvasSource` (uint8 RGB canvases, grey digits).

    >>> source = digit_canvases(4, canvas_size=48, max_digits=3, seed=2)
    >>> len(source), source[0]["boxes"].shape[1], source.classes[:2]
    (4, 4, ['0', '1'])
    """
    if max_digits < 1:
        raise ValueError(f"max_digits={max_digits}: a canvas needs room for at least one digit")
    if not 8 * scale[1] <= canvas_size:
        raise ValueError(f"scale={scale}: an enlarged digit (8 * {scale[1]} pixels) must fit canvas_size={canvas_size}")
    task = digits_task(classes, seed=seed, half=half)
    digits = np.concatenate([task["train"].images[..., 0], task["test"].images[..., 0]])
    digit_labels = np.concatenate([task["train"].labels, task["test"].labels])
    rng = np.random.default_rng(seed)
    images = rng.integers(0, BACKGROUND, (count, canvas_size, canvas_size), dtype=np.uint8)
    all_boxes, all_labels = [], []
    for canvas in images:
        number = 0 if rng.random() < empty_fraction else int(rng.integers(1, max_digits + 1))
        boxes, labels = np.zeros((0, 4), np.float32), []
        for _ in range(number):
            pick = int(rng.integers(len(digits)))
            side = round(8 * rng.uniform(*scale))
            patch = resize_bilinear(digits[pick][..., None], side)[..., 0]
            rows, cols = np.flatnonzero((patch > INK).any(1)), np.flatnonzero((patch > INK).any(0))
            for _ in range(10):
                top, left = rng.integers(0, canvas_size - side + 1, size=2)
                box = np.array([left + cols[0], top + rows[0], left + cols[-1] + 1, top + rows[-1] + 1], np.float32)
                if not len(boxes) or _iou(box, boxes).max() <= MAX_OVERLAP:
                    break
            region = canvas[top : top + side, left : left + side]
            np.maximum(region, np.round(patch * 255).astype(np.uint8), out=region)
            boxes = np.concatenate([boxes, box[None]])
            labels.append(int(digit_labels[pick]))
        all_boxes.append(boxes)
        all_labels.append(np.array(labels, np.int32))
    rgb = np.repeat(images[..., None], 3, axis=-1)
    return CanvasSource(rgb, all_boxes, all_labels, [str(c) for c in classes])


def write_coco_folder(source: Any, directory: str | Path) -> tuple[Path, Path]:
    """Writes a detection source as a COCO folder: ``images/<image id>.png`` and ``instances.json``.

    Args:
      source: any detection source (``len``, ``__getitem__``, ``ground_truth()``).
      directory: where to write (created if absent).

    Returns:
      ``(annotations_path, image_dir)``, what :class:`jtl.data.CocoSource` reads.

    >>> import tempfile
    >>> path, image_dir = write_coco_folder(digit_canvases(2), tempfile.mkdtemp())
    >>> path.name, sorted(p.name for p in image_dir.iterdir())
    ('instances.json', ['000000.png', '000001.png'])
    """
    from PIL import Image

    directory = Path(directory)
    image_dir = directory / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    ground_truth = source.ground_truth()
    names = {}
    for index in range(len(source)):
        item = source[index]
        names[int(item["image_id"])] = name = f"{int(item['image_id']):06d}.png"
        Image.fromarray(item["image"]).save(image_dir / name)
    images = [{**image, "file_name": names[image["id"]]} for image in ground_truth["images"]]
    path = directory / "instances.json"
    path.write_text(json.dumps({**ground_truth, "images": images}))
    return path, image_dir
