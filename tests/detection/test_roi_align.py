"""RoIAlign against a loop-by-loop NumPy transcription of torchvision's CPU kernel."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jtl.detection._roi_align import map_levels, multiscale_roi_align, roi_align


def _bilinear(f, y, x):
    h, w = f.shape[:2]
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return np.zeros(f.shape[2])
    y, x = max(y, 0.0), max(x, 0.0)
    yl, xl = int(y), int(x)
    if yl >= h - 1:
        yh = yl = h - 1
        y = float(yl)
    else:
        yh = yl + 1
    if xl >= w - 1:
        xh = xl = w - 1
        x = float(xl)
    else:
        xh = xl + 1
    ly, lx = y - yl, x - xl
    hy, hx = 1 - ly, 1 - lx
    return hy * hx * f[yl, xl] + hy * lx * f[yl, xh] + ly * hx * f[yh, xl] + ly * lx * f[yh, xh]


def _np_roi_align(f, boxes, out, scale, ratio, aligned):
    f = f.astype(np.float64)
    result = np.zeros((len(boxes), out, out, f.shape[2]))
    offset = 0.5 if aligned else 0.0
    for r, (x0, y0, x1, y1) in enumerate(boxes.astype(np.float64)):
        sx, sy = x0 * scale - offset, y0 * scale - offset
        rw, rh = x1 * scale - offset - sx, y1 * scale - offset - sy
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bh, bw = rh / out, rw / out
        for ph in range(out):
            for pw in range(out):
                acc = np.zeros(f.shape[2])
                for iy in range(ratio):
                    y = sy + ph * bh + (iy + 0.5) * bh / ratio
                    for ix in range(ratio):
                        acc += _bilinear(f, y, sx + pw * bw + (ix + 0.5) * bw / ratio)
                result[r, ph, pw] = acc / (ratio * ratio)
    return result


# Inside, partly outside (left/top and right/bottom), entirely outside, thinner than a pixel.
BOXES = np.array(
    [[3.0, 5.0, 20.0, 17.0], [-6.0, -3.0, 9.0, 10.0], [25.0, 20.0, 40.0, 36.0], [40.0, 40.0, 50.0, 50.0],
     [10.0, 10.0, 10.5, 30.0]],
    np.float32,
)  # fmt: skip


@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_matches_torchvision_kernel(aligned):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(15, 13, 3)).astype(np.float32)
    run = jax.jit(roi_align, static_argnums=(2, 3, 4, 5))
    for ratio in (1, 2):
        got = run(jnp.asarray(features), jnp.asarray(BOXES), 3, 0.5, ratio, aligned)
        np.testing.assert_allclose(got, _np_roi_align(features, BOXES, 3, 0.5, ratio, aligned), atol=1e-5)
    with pytest.raises(ValueError, match="sampling_ratio=0"):
        roi_align(jnp.asarray(features), jnp.asarray(BOXES), 3, 0.5, 0)


def test_multiscale_picks_each_box_level():
    rng = np.random.default_rng(1)
    image = 128
    levels = [rng.normal(size=(image // s, image // s, 2)).astype(np.float32) for s in (4, 8, 16, 32)]
    boxes = np.array([[0, 0, 20, 20], [5, 5, 120, 150], [-50, 10, 174, 234], [30, 40, 31, 41], [0, 0, 600, 500]])
    boxes = boxes.astype(np.float32)
    run = jax.jit(multiscale_roi_align, static_argnums=(2, 3, 4))
    got = np.asarray(run([jnp.asarray(x) for x in levels], jnp.asarray(boxes), 2, 2, image))
    for r, box in enumerate(boxes):
        size = math.sqrt((box[2] - box[0]) * (box[3] - box[1]))
        k = min(max(math.floor(4 + math.log2(size / 224) + 1e-6), 2), 5)
        want = _np_roi_align(levels[k - 2], box[None], 2, 2.0**-k, 2, False)[0]
        np.testing.assert_allclose(got[r], want, atol=1e-5)
    assert map_levels(jnp.asarray(boxes), 2, 5).tolist() == [0, 1, 2, 0, 3]
