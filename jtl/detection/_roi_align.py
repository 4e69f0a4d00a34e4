"""RoIAlign on NHWC feature maps, as torchvision's ``ops.roi_align`` and ``MultiScaleRoIAlign``.

Every region samples ``sampling_ratio**2`` points per output bin, bilinearly, with torchvision's border rules
(a point more than one pixel outside the map counts as 0; a point within a pixel of the border is clamped to it)
and averages them. torchvision's adaptive ``sampling_ratio <= 0`` (``ceil(roi_size / output_size)`` points per
box) gives each box its own number of points, which has no static shape, so it is refused here.

The multi-scale version gathers each box from its own pyramid level only: the levels are flattened into one
array and each box reads through its level's offset, height, width and scale.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _axis_samples(
    start: jax.Array, length: jax.Array, bins: int, grid: int, extent: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """One axis of the bilinear sampling: the low and high pixel and their weights of each (box, bin, point),
    zero-weighted where the point lies beyond torchvision's border of one pixel."""
    bin_size = length / bins
    b = jnp.arange(bins, dtype=start.dtype)[None, :, None]
    i = jnp.arange(grid, dtype=start.dtype)[None, None, :]
    coord = start[:, None, None] + b * bin_size[:, None, None] + (i + 0.5) * bin_size[:, None, None] / grid
    extent = extent[:, None, None]
    inside = (coord >= -1.0) & (coord <= extent.astype(coord.dtype))
    coord = jnp.maximum(coord, 0.0)
    low = jnp.floor(coord).astype(jnp.int32)
    at_edge = low >= extent - 1
    low = jnp.where(at_edge, extent - 1, low)
    high = jnp.where(at_edge, extent - 1, low + 1)
    coord = jnp.where(at_edge, low.astype(coord.dtype), coord)
    frac = coord - low.astype(coord.dtype)
    mask = inside.astype(coord.dtype)
    return low, high, (1.0 - frac) * mask, frac * mask


def _roi_align_flat(
    flat: jax.Array,
    offsets: jax.Array,
    heights: jax.Array,
    widths: jax.Array,
    scales: jax.Array,
    boxes: jax.Array,
    output_size: tuple[int, int],
    sampling_ratio: int,
    aligned: bool,
) -> jax.Array:
    """RoIAlign of each box from its own map inside ``flat`` ((sum of H*W, C)), at row ``offsets`` with
    ``heights``/``widths``/``scales`` (all ``(R,)``)."""
    shift = 0.5 if aligned else 0.0
    x0, y0 = boxes[:, 0] * scales - shift, boxes[:, 1] * scales - shift
    roi_w, roi_h = boxes[:, 2] * scales - shift - x0, boxes[:, 3] * scales - shift - y0
    if not aligned:
        roi_w, roi_h = jnp.maximum(roi_w, 1.0), jnp.maximum(roi_h, 1.0)
    out_h, out_w = output_size
    g = sampling_ratio
    y_low, y_high, wy_low, wy_high = _axis_samples(y0, roi_h, out_h, g, heights)
    x_low, x_high, wx_low, wx_high = _axis_samples(x0, roi_w, out_w, g, widths)

    def corner(y: jax.Array, x: jax.Array, wy: jax.Array, wx: jax.Array) -> jax.Array:
        # (R, out_h, g, 1, 1) against (R, 1, 1, out_w, g): every sampling point of every bin.
        rows = (offsets[:, None, None] + y * widths[:, None, None])[:, :, :, None, None]
        index = rows + x[:, None, None, :, :]
        weight = wy[:, :, :, None, None] * wx[:, None, None, :, :]
        return jnp.einsum("rhiwj,rhiwjc->rhwc", weight.astype(flat.dtype), flat[index])

    total = (
        corner(y_low, x_low, wy_low, wx_low)
        + corner(y_low, x_high, wy_low, wx_high)
        + corner(y_high, x_low, wy_high, wx_low)
        + corner(y_high, x_high, wy_high, wx_high)
    )
    return total / (g * g)


def _check_sampling_ratio(sampling_ratio: int) -> None:
    if sampling_ratio <= 0:
        raise ValueError(
            f"sampling_ratio={sampling_ratio}: the adaptive sampling (<= 0) has no static shape; give a positive "
            "number of points per bin side (torchvision's detectors use 2)"
        )


def roi_align(
    features: jax.Array,
    boxes: jax.Array,
    output_size: int | Sequence[int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool = False,
) -> jax.Array:
    """Bilinear RoIAlign of boxes from one ``(H, W, C)`` map (torchvision's ``roi_align`` for one image).

    Args:
      features: ``(H, W, C)``.
      boxes: ``(R, 4)`` xyxy in image pixels.
      output_size: ``(out_h, out_w)`` or an int.
      spatial_scale: feature pixels per image pixel (1 / stride).
      sampling_ratio: sampling points per bin side (> 0).
      aligned: shift the boxes by -0.5 pixel (pixel centres at half-integers); otherwise regions are at least
        one pixel wide, as torchvision's legacy behaviour.

    Returns:
      ``(R, out_h, out_w, C)``.

    Raises:
      ValueError: for ``sampling_ratio <= 0``.

    >>> features = jnp.arange(16.0).reshape(4, 4, 1)
    >>> roi_align(features, jnp.array([[0.0, 0.0, 2.0, 2.0]]), 1, 1.0, 2, aligned=True)[0, :, :, 0].tolist()
    [[2.5]]
    """
    _check_sampling_ratio(sampling_ratio)
    height, width, channels = features.shape
    r = boxes.shape[0]
    full = lambda v: jnp.full((r,), v, jnp.int32)
    return _roi_align_flat(
        features.reshape(height * width, channels),
        full(0),
        full(height),
        full(width),
        jnp.full((r,), spatial_scale, boxes.dtype),
        boxes,
        _pair(output_size),
        sampling_ratio,
        aligned,
    )


def level_scales(feature_sizes: Sequence[tuple[int, int]], image_size: tuple[int, int]) -> list[float]:
    """Each level's scale as torchvision's ``MultiScaleRoIAlign`` infers it: ``2 ** round(log2(feature / image))``.

    Args:
      feature_sizes: each level's ``(height, width)``.
      image_size: the (padded) image's ``(height, width)``.

    Returns:
      The scales, one per level.

    Raises:
      ValueError: where a level's height and width give different scales.

    >>> level_scales([(16, 16), (8, 8)], (64, 64))
    [0.25, 0.125]
    """
    out = []
    for size in feature_sizes:
        pair = [2.0 ** round(math.log2(f / i)) for f, i in zip(size, image_size, strict=True)]
        if pair[0] != pair[1]:
            raise ValueError(f"feature map {size} of image {image_size}: height and width scales differ ({pair})")
        out.append(pair[0])
    return out


def map_levels(
    boxes: jax.Array, k_min: int, k_max: int, canonical_scale: float = 224, canonical_level: int = 4
) -> jax.Array:
    """The pyramid level of each box (torchvision's ``LevelMapper``, FPN paper eq. 1), counted from ``k_min``.

    Args:
      boxes: ``(R, 4)`` xyxy.
      k_min: the finest level's ``-log2(scale)``.
      k_max: the coarsest level's.
      canonical_scale: the box size that maps to ``canonical_level``.
      canonical_level: see above.

    Returns:
      ``(R,)`` int32 in ``[0, k_max - k_min]``.

    >>> map_levels(jnp.array([[0.0, 0, 224, 224], [0, 0, 32, 32], [0, 0, 1000, 1000]]), 2, 5).tolist()
    [2, 0, 3]
    """
    size = jnp.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    level = jnp.floor(canonical_level + jnp.log2(size / canonical_scale) + jnp.asarray(1e-6, size.dtype))
    return (jnp.clip(level, k_min, k_max) - k_min).astype(jnp.int32)


def multiscale_roi_align(
    levels: Sequence[jax.Array],
    boxes: jax.Array,
    output_size: int | Sequence[int],
    sampling_ratio: int,
    image_size: int | Sequence[int],
    canonical_scale: float = 224,
    canonical_level: int = 4,
) -> jax.Array:
    """RoIAlign of each box from the pyramid level its size picks (torchvision's ``MultiScaleRoIAlign``).

    Args:
      levels: ``(H_l, W_l, C)`` maps of one image, finest first.
      boxes: ``(R, 4)`` xyxy in image pixels.
      output_size: ``(out_h, out_w)`` or an int.
      sampling_ratio: sampling points per bin side (> 0).
      image_size: the (padded) image's ``(height, width)`` or an int, from which the levels' scales follow.
      canonical_scale: see :func:`map_levels`.
      canonical_level: see :func:`map_levels`.

    Returns:
      ``(R, out_h, out_w, C)``, with torchvision's ``aligned=False``.

    Raises:
      ValueError: for ``sampling_ratio <= 0`` or levels of mismatched scales.

    >>> levels = [jnp.ones((16, 16, 2)), jnp.ones((8, 8, 2))]
    >>> multiscale_roi_align(levels, jnp.array([[0.0, 0, 10, 10]]), 7, 2, 64).shape
    (1, 7, 7, 2)
    """
    _check_sampling_ratio(sampling_ratio)
    scales = level_scales([x.shape[:2] for x in levels], _pair(image_size))
    k_min, k_max = round(-math.log2(scales[0])), round(-math.log2(scales[-1]))
    which = map_levels(boxes, k_min, k_max, canonical_scale, canonical_level)
    sizes = [x.shape[0] * x.shape[1] for x in levels]
    table = lambda values, dtype: jnp.asarray(values, dtype)[which]
    flat = jnp.concatenate([x.reshape(-1, x.shape[-1]) for x in levels])
    return _roi_align_flat(
        flat,
        table([sum(sizes[:i]) for i in range(len(sizes))], jnp.int32),
        table([x.shape[0] for x in levels], jnp.int32),
        table([x.shape[1] for x in levels], jnp.int32),
        table(scales, boxes.dtype),
        boxes,
        _pair(output_size),
        sampling_ratio,
        False,
    )
