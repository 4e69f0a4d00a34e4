"""Faster R-CNN on tiny random feature maps: detection shapes, the loss under jit/pmap, empty and crowd images."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jtl.detection._faster_rcnn import FasterRCNN, faster_rcnn_detect, faster_rcnn_loss
from jtl.detection._torchvision import faster_rcnn_from_torchvision

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


def _torchvision_state(version, old_names, rng, classes=4, fpn=8, rep=16, body_channels=(16, 32, 64, 128)):
    """A tiny state dict under torchvision's names and shapes (resnet18-like body, FPN, RPN, box heads)."""
    t = lambda *s: rng.normal(size=s).astype(np.float32)
    state = {"backbone.body.conv1.weight": t(16, 3, 7, 7)}
    frozen = version == "v1"

    def bn(prefix, c):
        state.update({f"{prefix}.{n}": t(c) for n in ("weight", "bias", "running_mean")})
        state[f"{prefix}.running_var"] = np.abs(t(c)) + 0.5
        if not frozen:
            state[f"{prefix}.num_batches_tracked"] = np.array(3)

    bn("backbone.body.bn1", 16)
    previous = 16
    for s, c in enumerate(body_channels):
        p = f"backbone.body.layer{s + 1}.0"
        state[f"{p}.conv1.weight"], state[f"{p}.conv2.weight"] = t(c, previous, 3, 3), t(c, c, 3, 3)
        bn(f"{p}.bn1", c), bn(f"{p}.bn2", c)
        if c != previous:
            state[f"{p}.downsample.0.weight"] = t(c, previous, 1, 1)
            bn(f"{p}.downsample.1", c)
        previous = c
    for i, c in enumerate(body_channels):
        for kind, k, cin in (("inner", 1, c), ("layer", 3, fpn)):
            p = f"backbone.fpn.{kind}_blocks.{i}"
            if version == "v2":
                state[f"{p}.0.weight"] = t(fpn, cin, k, k)
                bn(f"{p}.1", fpn)
            else:
                key = p if old_names else f"{p}.0"
                state[f"{key}.weight"], state[f"{key}.bias"] = t(fpn, cin, k, k), t(fpn)
    convs = (
        ["rpn.head.conv.0.0", "rpn.head.conv.1.0"]
        if version == "v2"
        else ["rpn.head.conv" if old_names else "rpn.head.conv.0.0"]
    )
    for p in convs:
        state[f"{p}.weight"], state[f"{p}.bias"] = t(fpn, fpn, 3, 3), t(fpn)
    state |= {"rpn.head.cls_logits.weight": t(3, fpn, 1, 1), "rpn.head.cls_logits.bias": t(3)}
    state |= {"rpn.head.bbox_pred.weight": t(12, fpn, 1, 1), "rpn.head.bbox_pred.bias": t(12)}
    if version == "v2":
        for k in range(4):
            state[f"roi_heads.box_head.{k}.0.weight"] = t(256, fpn if k == 0 else 256, 3, 3)
            bn(f"roi_heads.box_head.{k}.1", 256)
        state |= {"roi_heads.box_head.5.weight": t(rep, 256 * 49), "roi_heads.box_head.5.bias": t(rep)}
    else:
        state |= {"roi_heads.box_head.fc6.weight": t(rep, fpn * 49), "roi_heads.box_head.fc6.bias": t(rep)}
        state |= {"roi_heads.box_head.fc7.weight": t(rep, rep), "roi_heads.box_head.fc7.bias": t(rep)}
    state |= {
        "roi_heads.box_predictor.cls_score.weight": t(classes, rep),
        "roi_heads.box_predictor.cls_score.bias": t(classes),
    }
    state |= {
        "roi_heads.box_predictor.bbox_pred.weight": t(4 * classes, rep),
        "roi_heads.box_predictor.bbox_pred.bias": t(4 * classes),
    }
    return state


def _expected(key, value, version, old_names):
    """The jtl variable name and value of a detector key."""
    import re

    fc = lambda w: w.reshape(w.shape[0], -1, 7, 7).transpose(2, 3, 1, 0).reshape(-1, w.shape[0])
    oihw = lambda w: w.transpose(2, 3, 1, 0)
    leaf = {"weight": "kernel", "bias": "bias", "running_mean": "mean", "running_var": "var"}
    m = re.fullmatch(r"(.*)\.(weight|bias|running_mean|running_var)", key)
    module, kind = m.groups()
    is_bn = re.search(r"\.\d+\.1$", module) is not None
    collection = "batch_stats" if kind.startswith("running") else "params"
    renames = [
        (r"backbone\.fpn\.(inner|layer)_blocks\.(\d)(?:\.0)?$", r"fpn/\1_\2/conv"),
        (r"backbone\.fpn\.(inner|layer)_blocks\.(\d)\.1$", r"fpn/\1_\2/bn"),
        (r"rpn\.head\.conv\.(\d)\.0$", r"rpn/conv_\1"),
        (r"rpn\.head\.conv$", "rpn/conv_0"),
        (r"rpn\.head\.(cls_logits|bbox_pred)$", r"rpn/\1"),
        (r"roi_heads\.box_head\.(\d)\.0$", r"box_head/conv_\1/conv"),
        (r"roi_heads\.box_head\.(\d)\.1$", r"box_head/conv_\1/bn"),
        (r"roi_heads\.box_head\.5$", "box_head/fc"),
        (r"roi_heads\.box_head\.(fc[67])$", r"box_head/\1"),
        (r"roi_heads\.box_predictor\.(\w+)$", r"box_predictor/\1"),
    ]
    path = next(re.sub(p, r, module) for p, r in renames if re.fullmatch(p, module))
    name = leaf[kind] if not (is_bn and kind == "weight") else "scale"
    if kind == "weight" and not is_bn:
        value = fc(value) if module.endswith(("fc6", "box_head.5")) else (oihw(value) if value.ndim == 4 else value.T)
    return f"{collection}/{path}/{name}", value


@pytest.mark.parametrize("version,old_names", [("v1", True), ("v1", False), ("v2", False)])
def test_torchvision_weights(tmp_path, version, old_names):
    import torch

    from jtl.masking import named_leaves
    from jtl.weights import load_pretrained

    state = _torchvision_state(version, old_names, np.random.default_rng(0))
    path = tmp_path / "fasterrcnn.pth"
    torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}, path)
    detector, variables, report = faster_rcnn_from_torchvision(path)
    assert (detector.version, detector.num_classes, detector.fpn_channels) == (version, 3, 8)
    assert not report.missing and not report.unexpected
    loaded = dict(named_leaves(variables))
    detector_keys = [k for k in state if not k.startswith("backbone.body.") and "num_batches" not in k]
    for key in detector_keys:
        name, want = _expected(key, state[key], version, old_names)
        np.testing.assert_array_equal(loaded.pop(name), want, err_msg=key)
    assert not loaded

    model, backbone, report = load_pretrained(path, num_classes=0, verbose=False)
    assert model.num_classes == 0 and model.bn_eps == (0.0 if version == "v1" else 1e-5)
    np.testing.assert_array_equal(
        backbone["params"]["stage_1"]["block_0"]["conv1"]["kernel"],
        state["backbone.body.layer2.0.conv1.weight"].transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(backbone["batch_stats"]["embed"]["bn"]["var"], state["backbone.body.bn1.running_var"])
    assert {k for k, _ in report.unexpected} == set(detector_keys) | {
        k for k in state if "num_batches" in k and not k.startswith("backbone.body.")
    }
    if version == "v1" and old_names:
        _, fresh, report = faster_rcnn_from_torchvision(state, num_classes=6)
        assert fresh["params"]["box_predictor"]["cls_score"]["kernel"].shape == (16, 7)
        assert {n for n, *_ in report.reinitialised} == {
            f"params/box_predictor/{m}/{p}" for m in ("cls_score", "bbox_pred") for p in ("kernel", "bias")
        }
