"""Faster R-CNN on tiny random feature maps: detection shapes, the loss under jit/pmap, empty and crowd images."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jtl.detection._faster_rcnn import FasterRCNN, faster_rcnn_detect, faster_rcnn_loss

IMAGE = 64
TINY = dict(
    num_classes=3,
    fpn_channels=8,
    representation_size=16,
    rpn_pre_nms_top_n_train=30,
    rpn_post_nms_top_n_train=16,
    rpn_pre_nms_top_n_test=30,
    rpn_post_nms_top_n_test=16,
    rpn_batch_size_per_image=32,
    box_batch_size_per_image=16,
    detections_per_img=6,
    box_score_thresh=0.0,
)


def _maps(batch=2):
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    return [jax.random.normal(k, (batch, IMAGE // s, IMAGE // s, 4)) for k, s in zip(keys, (4, 8, 16, 32), strict=True)]


def _batch(boxes, mask, crowd=None):
    boxes = jnp.asarray(boxes, jnp.float32)
    mask = jnp.asarray(mask)
    return {
        "boxes": boxes,
        "labels": jnp.asarray(np.arange(boxes.shape[1]) % 3)[None].repeat(boxes.shape[0], 0),
        "box_mask": mask,
        "crowd": jnp.zeros_like(mask) if crowd is None else jnp.asarray(crowd),
        "size": jnp.array([[64, 64], [48, 60]]),
    }


BOXES = [[[4, 6, 30, 40], [30, 30, 60, 50], [0, 0, 0, 0]], [[10, 10, 20, 28], [0, 0, 0, 0], [0, 0, 0, 0]]]
MASK = [[True, True, False], [True, False, False]]


@functools.cache
def _setup():
    detector = FasterRCNN(**TINY)
    variables = jax.jit(detector.init)(jax.random.PRNGKey(1), _maps())
    loss = jax.jit(lambda v, m, b, r: faster_rcnn_loss(detector, v, m, IMAGE, b, r))
    return detector, variables, loss


def test_detect_shapes_and_masks():
    detector, variables, _ = _setup()
    sizes = jnp.array([[64, 64], [48, 60]])
    out = jax.jit(lambda v, m, s: faster_rcnn_detect(detector, v, m, IMAGE, s))(variables, _maps(), sizes)
    assert out["boxes"].shape == (2, 6, 4) and out["scores"].shape == out["classes"].shape == (2, 6)
    assert out["valid"].dtype == jnp.bool_ and bool(out["valid"].any())
    boxes, valid = np.asarray(out["boxes"]), np.asarray(out["valid"])
    # Clipped to each image's real size; sorted by score; classes contiguous.
    assert (boxes[1, valid[1]][:, 2] <= 60).all() and (boxes[1, valid[1]][:, 3] <= 48).all()
    scores = np.asarray(out["scores"])
    for i in range(2):
        assert (np.diff(scores[i, valid[i]]) <= 0).all()
    assert ((np.asarray(out["classes"]) >= 0) & (np.asarray(out["classes"]) < 3)).all()


def test_empty_and_crowd_images_have_no_positives():
    _, variables, loss = _setup()
    rng = jax.random.PRNGKey(2)
    value, metrics = loss(variables, _maps(), _batch(BOXES, MASK), rng)
    assert bool(jnp.isfinite(value)) and float(metrics["box_reg"]) > 0 and float(metrics["rpn_box"]) > 0
    empty = np.zeros((2, 3), bool)
    value, metrics = loss(variables, _maps(), _batch(BOXES, empty), rng)
    assert bool(jnp.isfinite(value)) and float(metrics["box_reg"]) == 0 and float(metrics["rpn_box"]) == 0
    value, metrics = loss(variables, _maps(), _batch(BOXES, empty, crowd=MASK), rng)
    assert bool(jnp.isfinite(value)) and float(metrics["box_reg"]) == 0 and float(metrics["rpn_box"]) == 0


def test_v2_layers():
    detector = FasterRCNN(version="v2", **TINY)
    variables = jax.eval_shape(detector.init, jax.random.PRNGKey(1), _maps())
    assert set(variables) == {"params", "batch_stats"}
    assert set(variables["params"]["box_head"]) == {"conv_0", "conv_1", "conv_2", "conv_3", "fc"}
    assert set(variables["params"]["rpn"]) == {"conv_0", "conv_1", "cls_logits", "bbox_pred"}
    assert set(variables["batch_stats"]["fpn"]["inner_0"]) == {"bn"}


def test_sgd_decreases_loss_under_pmap():
    _, variables, loss = _setup()
    batch, rng = _batch(BOXES, MASK), jax.random.PRNGKey(4)
    expected, _ = loss(variables, _maps(), batch, rng)

    def step(params, maps, batch, rng):
        value, grads = jax.value_and_grad(lambda p: loss({"params": p}, maps, batch, rng)[0])(params)
        grads = jax.lax.pmean(grads, "d")
        return jax.tree.map(lambda p, g: p - 0.05 * g, params, grads), jax.lax.pmean(value, "d")

    replicate = lambda x: jnp.broadcast_to(x, (4, *x.shape))
    params = jax.tree.map(replicate, variables["params"])
    args = jax.tree.map(replicate, (_maps(), batch, rng))
    run = jax.pmap(step, axis_name="d")
    values = []
    for _ in range(4):
        params, value = run(params, *args)
        values.append(np.asarray(value))
    np.testing.assert_allclose(values[0], float(expected), rtol=1e-5)
    assert values[-1][0] < values[0][0]
