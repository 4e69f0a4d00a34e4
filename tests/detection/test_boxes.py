"""Box operations against straightforward NumPy versions of torchvision's formulas."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from jtl.detection import _boxes as B
from jtl.detection import _sampling as S


def _random_boxes(rng, n, extent=50.0):
    xy = rng.uniform(0, extent, (n, 2))
    wh = rng.uniform(1, extent / 2, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


def _np_iou(a, b):
    out = np.zeros((len(a), len(b)))
    for i, p in enumerate(a.astype(np.float64)):
        for j, q in enumerate(b.astype(np.float64)):
            w = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
            h = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
            inter = w * h
            out[i, j] = inter / ((p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter)
    return out


def _np_nms(boxes, scores, valid, threshold):
    order = [i for i in np.argsort(-scores, kind="stable") if valid[i]]
    iou = _np_iou(boxes, boxes)
    keep = []
    for i in order:
        if all(iou[i, k] <= threshold for k in keep):
            keep.append(i)
    return keep


def test_iou_encode_decode_clip():
    rng = np.random.default_rng(0)
    a, b = _random_boxes(rng, 7), _random_boxes(rng, 5)
    np.testing.assert_allclose(B.box_iou(jnp.asarray(a), jnp.asarray(b)), _np_iou(a, b), atol=1e-6)

    weights = (10.0, 10.0, 5.0, 5.0)
    proposals = _random_boxes(rng, 7)
    deltas = np.asarray(B.encode_boxes(jnp.asarray(a), jnp.asarray(proposals), weights))
    p = proposals.astype(np.float64)
    pw, ph = p[:, 2] - p[:, 0], p[:, 3] - p[:, 1]
    gw, gh = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
    expected = np.stack(
        [
            10 * ((a[:, 0] + gw / 2) - (p[:, 0] + pw / 2)) / pw,
            10 * ((a[:, 1] + gh / 2) - (p[:, 1] + ph / 2)) / ph,
            5 * np.log(gw / pw),
            5 * np.log(gh / ph),
        ],
        axis=1,
    )
    np.testing.assert_allclose(deltas, expected, atol=1e-5)
    np.testing.assert_allclose(B.decode_boxes(jnp.asarray(deltas), jnp.asarray(proposals), weights), a, atol=1e-4)
    # dw beyond log(1000/16) is clipped before exp.
    wide = B.decode_boxes(jnp.array([[0.0, 0.0, 100.0, 0.0]]), jnp.array([[0.0, 0.0, 2.0, 2.0]]), (1, 1, 1, 1))
    np.testing.assert_allclose(wide[0, 2] - wide[0, 0], 2 * 1000 / 16, rtol=1e-5)

    clipped = B.clip_boxes(jnp.array([[-3.0, -1.0, 70.0, 20.0]]), jnp.array([15, 60]))
    assert clipped.tolist() == [[0.0, 0.0, 60.0, 15.0]]


def test_nms_matches_greedy_numpy():
    rng = np.random.default_rng(1)
    boxes = np.concatenate([_random_boxes(rng, 30, 30.0), _random_boxes(rng, 10, 30.0)])
    scores = rng.uniform(size=40).astype(np.float32)
    valid = rng.uniform(size=40) > 0.2
    groups = rng.integers(0, 3, 40)
    run = jax.jit(B.nms, static_argnums=(3, 4))
    run_batched = jax.jit(B.batched_nms, static_argnums=(4, 5))
    for threshold in (0.3, 0.7):
        expected = _np_nms(boxes, scores, valid, threshold)
        indices, keep = run(jnp.asarray(boxes), jnp.asarray(scores), jnp.asarray(valid), threshold, 40)
        assert np.asarray(indices)[np.asarray(keep)].tolist() == expected
        assert not np.asarray(indices)[~np.asarray(keep)].any()
        truncated, keep5 = run(jnp.asarray(boxes), jnp.asarray(scores), jnp.asarray(valid), threshold, 5)
        assert np.asarray(truncated).tolist() == expected[:5] and bool(keep5.all())

        per_group = []
        for g in range(3):
            per_group += _np_nms(boxes, scores, valid & (groups == g), threshold)
        per_group.sort(key=lambda i: -scores[i])
        args = (jnp.asarray(boxes), jnp.asarray(scores), jnp.asarray(groups), jnp.asarray(valid))
        indices, keep = run_batched(*args, threshold, 40)
        assert np.asarray(indices)[np.asarray(keep)].tolist() == per_group


def _torchvision_anchors(feature_sizes, strides, sizes, ratios):
    out = []
    for (h, w), (sy, sx), level in zip(feature_sizes, strides, sizes, strict=True):
        cell = []
        for r in ratios:
            for s in level:
                hr = np.sqrt(np.float32(r))
                ws, hs = np.float32(1) / hr * np.float32(s), hr * np.float32(s)
                cell.append(np.round(np.array([-ws, -hs, ws, hs], np.float32) / 2))
        for y in range(h):
            for x in range(w):
                for c in cell:
                    out.append(c + np.array([x * sx, y * sy, x * sx, y * sy], np.float32))
    return np.array(out, np.float32)


def test_anchors_as_torchvision():
    args = ([(3, 4), (2, 2)], [(8, 8), (16, 16)], [(32, 40), (64,)], (0.5, 1.0, 2.0))
    got = B.anchors(*args)
    assert got.shape == ((12 * 6) + (4 * 3), 4)
    np.testing.assert_array_equal(got, _torchvision_anchors(*args))
    # The rounding: 32 / sqrt(2) / 2 = 11.31 -> 11, 32 * sqrt(2) / 2 = 22.63 -> 23.
    assert B.cell_anchors((32,), (2.0,)).tolist() == [[-11.0, -23.0, 11.0, 23.0]]
    assert math.isclose(B.DEFAULT_CLIP, math.log(62.5))


def _np_match(gt, box_mask, crowd, boxes, high, low, low_quality):
    real = box_mask | crowd
    iou = np.where(real[:, None], _np_iou(gt, boxes), -1.0)
    out = []
    for j in range(len(boxes)):
        best, arg = iou[:, j].max(), int(iou[:, j].argmax())
        m = -1 if best < low else (-2 if best < high else arg)
        if low_quality and any(box_mask[g] and iou[g, j] == iou[g].max() for g in range(len(gt))):
            m = arg
        if crowd[arg] and best > 0:
            m = -2
        out.append(m)
    return out


def test_matcher_and_sampler():
    rng = np.random.default_rng(2)
    gt = _random_boxes(rng, 6, 40.0)
    box_mask = np.array([True, True, False, True, False, False])
    crowd = np.array([False, False, True, False, False, False])
    boxes = np.concatenate([_random_boxes(rng, 60, 40.0), gt[:4] + 0.5])
    run = jax.jit(S.match, static_argnums=(4, 5, 6))
    for high, low, low_quality in ((0.7, 0.3, True), (0.5, 0.5, False)):
        got = run(*map(jnp.asarray, (gt, box_mask, crowd, boxes)), high, low, low_quality)
        assert got.tolist() == _np_match(gt, box_mask, crowd, boxes, high, low, low_quality)
    assert -2 in got.tolist() and 0 in got.tolist()
    # No ground truth at all: every box is a negative.
    empty = run(jnp.asarray(gt), jnp.zeros(6, bool), jnp.zeros(6, bool), jnp.asarray(boxes), 0.7, 0.3, True)
    assert (np.asarray(empty) == -1).all()

    labels = jnp.asarray(rng.choice([-1, 0, 1, 3], size=200, p=[0.2, 0.6, 0.1, 0.1]))
    draw = jax.jit(S.sample, static_argnums=(2, 3))
    for key, (batch, fraction) in enumerate(((32, 0.25), (256, 0.5))):
        pos, neg = draw(jax.random.PRNGKey(key), labels, batch, fraction)
        n_pos, n_neg = int((labels >= 1).sum()), int((labels == 0).sum())
        assert int(pos.sum()) == min(n_pos, int(batch * fraction))
        assert int(neg.sum()) == min(n_neg, batch - int(pos.sum()))
        assert bool((labels[pos] >= 1).all()) and bool((labels[neg] == 0).all())
    other, _ = draw(jax.random.PRNGKey(5), labels, 32, 0.25)
    assert (np.asarray(other) != np.asarray(draw(jax.random.PRNGKey(0), labels, 32, 0.25)[0])).any()
