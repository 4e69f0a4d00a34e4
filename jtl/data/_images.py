"""Image preprocessing on the host, in numpy: resize, random resized crop, flip, normalisation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np


def resize_bilinear(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resizes an HWC image with bilinear interpolation (half-pixel centres).

    Args:
      image: (H, W, C) array.
      size: the output (height, width); an int is square.

    Returns:
      (height, width, C) float32 array.

    >>> resize_bilinear(np.ones((4, 6, 3)), 8).shape, resize_bilinear(np.ones((4, 6, 3)), (8, 5)).shape
    ((8, 8, 3), (8, 5, 3))
    """
    image = np.asarray(image, np.float32)
    height, width = (size, size) if isinstance(size, int) else size

    def coordinates(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        low = np.floor(x).astype(np.int64)
        high = np.minimum(low + 1, n_in - 1)
        return low, high, (x - low).astype(np.float32)

    y0, y1, wy = coordinates(image.shape[0], height)
    x0, x1, wx = coordinates(image.shape[1], width)
    rows = image[y0] * (1 - wy)[:, None, None] + image[y1] * wy[:, None, None]
    return rows[:, x0] * (1 - wx)[None, :, None] + rows[:, x1] * wx[None, :, None]


def random_resized_crop(
    rng: np.random.Generator, image: np.ndarray, size: int | tuple[int, int], scale: tuple[float, float] = (0.08, 1.0)
) -> np.ndarray:
    """Inception-style crop: a random area (``scale`` of the image) and aspect ratio (3/4 to 4/3), resized.

    Args:
      rng: the per-example generator (grain's ``random_map`` seeds it, so resumed runs crop alike).
      image: (H, W, C).
      size: the output (height, width); an int is square.
      scale: the range of the crop's share of the image area.

    Returns:
      (height, width, C) float32 array.

    >>> random_resized_crop(np.random.default_rng(0), np.zeros((32, 48, 3), np.uint8), 16).shape
    (16, 16, 3)
    """
    height, width = image.shape[:2]
    for _ in range(10):
        area = height * width * rng.uniform(*scale)
        ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        h, w = round(np.sqrt(area / ratio)), round(np.sqrt(area * ratio))
        if 0 < h <= height and 0 < w <= width:
            top, left = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
            return resize_bilinear(image[top : top + h, left : left + w], size)
    return resize_bilinear(image, size)


class ImagePreprocessing(NamedTuple):
    """Train/eval preprocessing of ``{"image": uint8 HWC, "label": int}`` examples into model inputs (an example
    without a label, e.g. of an unlabelled target domain, stays without one).

    Train: random resized crop and horizontal flip (each switchable); eval: resize. Both scale to [0, 1] and
    normalise with ``mean``/``std`` (per channel), taken from the pretrained model's preprocessing config
    where there is one.
    """

    size: int | tuple[int, int]
    mean: Sequence[float] = (0.5, 0.5, 0.5)
    std: Sequence[float] = (0.5, 0.5, 0.5)
    crop: bool = True
    flip: bool = True

    def _finish(self, image: np.ndarray, label: Any) -> dict[str, np.ndarray]:
        channels = image.shape[-1]
        mean = np.asarray(self.mean[:channels], np.float32)
        std = np.asarray(self.std[:channels], np.float32)
        out = {"image": ((image / 255.0 - mean) / std).astype(np.float32)}
        return out if label is None else {**out, "label": np.int32(label)}

    def train(self, example: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
        """The training transform (for grain's ``random_map``)."""
        image = example["image"]
        image = random_resized_crop(rng, image, self.size) if self.crop else resize_bilinear(image, self.size)
        if self.flip and rng.random() < 0.5:
            image = image[:, ::-1]
        return self._finish(image, example.get("label"))

    def eval(self, example: dict[str, Any]) -> dict[str, np.ndarray]:
        """The evaluation transform."""
        return self._finish(resize_bilinear(example["image"], self.size), example.get("label"))
