"""DETR against transformers' PyTorch ``DetrForObjectDetection``: the forward pass (a jtl ResNet backbone and the
DETR head, both loaded from one ``save_pretrained`` directory), the Hungarian loss with auxiliary layers, the
post-processing; the matcher against scipy, GIoU against NumPy, and the timm spelling of the backbone."""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file, save_file  # noqa: E402

from jtl.detection import (  # noqa: E402
    detr_detect,
    detr_from_hf,
    detr_loss_from_batch,
    detr_pixel_mask,
    generalized_box_iou,
    hungarian_match,
)
from jtl.weights import WeightLoadError, load_pretrained  # noqa: E402
from tests.parity import TOL, max_abs, nhwc, randomise  # noqa: E402

NUM_LABELS, QUERIES, HEIGHT, WIDTH = 3, 6, 44, 60
# Image 1 is padded (its real part 30 x 41); image 2 has no boxes.
SIZES = np.array([[HEIGHT, WIDTH], [30, 41], [HEIGHT, WIDTH]])
NUM_BOXES = [3, 2, 0]
MAX_BOXES = 4


def _tiny_config(**changes):
    backbone = transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[16, 32], depths=[1, 1], layer_type="bottleneck", out_features=["stage2"]
    )
    fields = {
        "use_timm_backbone": False,
        "backbone_config": backbone,
        "d_model": 16,
        "encoder_layers": 1,
        "decoder_layers": 2,
        "encoder_attention_heads": 2,
        "decoder_attention_heads": 2,
        "encoder_ffn_dim": 24,
        "decoder_ffn_dim": 24,
        "num_queries": QUERIES,
        "num_labels": NUM_LABELS,
        "auxiliary_loss": True,
    }
    return transformers.DetrConfig(**{**fields, **changes})


def _randomise_frozen_batch_norms(reference, seed: int):
    """DETR's frozen batch norms hold their affine parameters as buffers, which ``randomise`` does not touch."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in reference.modules():
            if type(module).__name__ == "DetrFrozenBatchNorm2d":
                n = module.weight.shape[0]
                module.weight.copy_(1 + 0.2 * torch.randn(n, generator=generator))
                module.bias.copy_(0.2 * torch.randn(n, generator=generator))
                module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(n, generator=generator))


def _targets(rng):
    """Normalised cx, cy, w, h boxes (valid, inside the image) and labels, padded to MAX_BOXES."""
    boxes = np.zeros((len(SIZES), MAX_BOXES, 4), np.float32)
    labels = np.zeros((len(SIZES), MAX_BOXES), np.int32)
    mask = np.zeros((len(SIZES), MAX_BOXES), bool)
    for i, n in enumerate(NUM_BOXES):
        size = rng.uniform(0.1, 0.5, (n, 2))
        centre = rng.uniform(size / 2, 1 - size / 2)
        boxes[i, :n] = np.concatenate([centre, size], axis=1)
        labels[i, :n] = rng.integers(0, NUM_LABELS, n)
        mask[i, :n] = True
    return boxes, labels, mask


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The randomised PyTorch model, its directory, inputs, targets, and its outputs and loss on them."""
    torch.manual_seed(0)
    model = randomise(transformers.DetrForObjectDetection(_tiny_config()), seed=1)
    _randomise_frozen_batch_norms(model, seed=2)
    directory = tmp_path_factory.mktemp("detr")
    model.save_pretrained(directory)
    images = torch.randn(len(SIZES), 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(3))
    pixel_mask = torch.as_tensor(np.array(detr_pixel_mask(jnp.asarray(SIZES), HEIGHT, WIDTH)), dtype=torch.int64)
    boxes, labels, mask = _targets(np.random.default_rng(4))
    torch_labels = [
        {"class_labels": torch.as_tensor(labels[i, :n], dtype=torch.int64), "boxes": torch.as_tensor(boxes[i, :n])}
        for i, n in enumerate(NUM_BOXES)
    ]
    with torch.no_grad():
        out = model(pixel_values=images, pixel_mask=pixel_mask, labels=torch_labels)
    return {
        "model": model,
        "directory": directory,
        "images": images,
        "pixel_mask": pixel_mask,
        "targets": (boxes, labels, mask),
        "out": out,
    }


def _jax_outputs(out) -> dict:
    return {
        "logits": jnp.asarray(out.logits.numpy()),
        "boxes": jnp.asarray(out.pred_boxes.numpy()),
        "aux": [
            {"logits": jnp.asarray(a["logits"].numpy()), "boxes": jnp.asarray(a["pred_boxes"].numpy())}
            for a in out.auxiliary_outputs
        ],
    }


def test_backbone_and_head_match_transformers(reference):
    directory = reference["directory"]
    backbone, backbone_variables, backbone_report = load_pretrained(directory, num_classes=0, verbose=False)
    head, head_variables, head_report = detr_from_hf(directory)
    assert not backbone_report.missing and not head_report.missing and not head_report.unexpected
    # The head's keys are the backbone load's unexpected ones, and no backbone key is left over.
    assert all(not re.match(r"model\.backbone\.", name) for name, _ in backbone_report.unexpected)
    assert head.auxiliary_loss and head.num_classes == NUM_LABELS

    @jax.jit
    def forward(images, pixel_mask):
        _, state = backbone.apply(backbone_variables, images, train=False, mutable=["intermediates"])
        features = state["intermediates"]["hidden_states"][-1]
        return head.apply(head_variables, features, pixel_mask)

    ours = forward(jnp.asarray(nhwc(reference["images"])), jnp.asarray(reference["pixel_mask"].numpy()))
    theirs = _jax_outputs(reference["out"])
    assert max_abs(ours["logits"], theirs["logits"]) < TOL
    assert max_abs(ours["boxes"], theirs["boxes"]) < TOL
    assert len(ours["aux"]) == 1
    assert max_abs(ours["aux"][0]["logits"], theirs["aux"][0]["logits"]) < TOL
    assert max_abs(ours["aux"][0]["boxes"], theirs["aux"][0]["boxes"]) < TOL


def test_loss_matches_transformers(reference):
    boxes, labels, mask = reference["targets"]
    # The batch's boxes: x0, y0, x1, y1 in pixels of each image's real size.
    height, width = SIZES[:, :1, None].astype(np.float64), SIZES[:, 1:, None].astype(np.float64)
    centre, size = boxes[..., :2].astype(np.float64), boxes[..., 2:].astype(np.float64)
    corners = np.concatenate([centre - size / 2, centre + size / 2], axis=-1) * np.concatenate(
        [width, height, width, height], axis=-1
    )
    batch = {
        "boxes": jnp.asarray(corners * mask[..., None], jnp.float32),
        "labels": jnp.asarray(labels),
        "box_mask": jnp.asarray(mask),
        "size": jnp.asarray(SIZES, jnp.int32),
    }
    outputs = _jax_outputs(reference["out"])
    loss_and_grad = jax.jit(jax.value_and_grad(lambda o: detr_loss_from_batch(o, batch), has_aux=True))
    (loss, metrics), grads = loss_and_grad(outputs)
    out = reference["out"]
    assert abs(float(loss) - out.loss.item()) <= 1e-5
    assert sorted(metrics) == sorted(out.loss_dict)
    for name, value in out.loss_dict.items():
        assert abs(float(metrics[name]) - value.item()) <= 1e-5, name
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))


def test_detect_matches_post_processing(reference):
    processor = transformers.DetrImageProcessor()
    out = reference["out"]
    expected = processor.post_process_object_detection(out, threshold=0.0, target_sizes=torch.as_tensor(SIZES))
    ours = jax.jit(detr_detect)(_jax_outputs(out), jnp.asarray(SIZES))
    for i, image in enumerate(expected):
        assert bool(ours["valid"][i].all())
        assert max_abs(ours["scores"][i], image["scores"].numpy()) < TOL
        assert (np.asarray(ours["classes"][i]) == image["labels"].numpy()).all()
        assert max_abs(ours["boxes"][i], image["boxes"].numpy()) < 1e-4  # pixels: 60 * float32 epsilon


def test_new_num_classes_reinitialises_only_the_class_head(reference):
    model, variables, report = detr_from_hf(reference["directory"], num_classes=7)
    assert model.num_classes == 7 and variables["params"]["class_head"]["kernel"].shape == (16, 8)
    assert sorted(name for name, _, _ in report.reinitialised) == ["params/class_head/bias", "params/class_head/kernel"]
    assert not report.missing and not report.unexpected


def test_timm_spelling_of_the_backbone_loads_the_same_weights(reference, tmp_path):
    """facebook/detr-resnet-50 (use_timm_backbone=True) names its backbone as timm's (torchvision's) resnet50; timm
    cannot be imported here, so the tiny checkpoint's tensors are renamed by hand. transformers 5.24 still reads
    such a config (as a ``timm_backbone`` backbone_config) but needs timm to build the model."""
    prefix = "model.backbone.conv_encoder.model."
    renames = [
        (r"embedder\.embedder\.convolution", "conv1"),
        (r"embedder\.embedder\.normalization", "bn1"),
        (r"encoder\.stages\.(\d)\.layers\.(\d+)\.shortcut\.convolution", r"layer{\1}.\2.downsample.0"),
        (r"encoder\.stages\.(\d)\.layers\.(\d+)\.shortcut\.normalization", r"layer{\1}.\2.downsample.1"),
        (r"encoder\.stages\.(\d)\.layers\.(\d+)\.layer\.(\d)\.convolution", r"layer{\1}.\2.conv{\3}"),
        (r"encoder\.stages\.(\d)\.layers\.(\d+)\.layer\.(\d)\.normalization", r"layer{\1}.\2.bn{\3}"),
    ]

    def timm_name(key: str) -> str:
        if not key.startswith(prefix):
            return key
        name = key[len(prefix) :]
        for pattern, template in renames:
            name = re.sub(pattern, template, name)
        # timm counts stages and layers from 1.
        return prefix + re.sub(r"\{(\d)\}", lambda m: str(int(m.group(1)) + 1), name)

    state = load_file(reference["directory"] / "model.safetensors")
    save_file({timm_name(k): v for k, v in state.items()}, tmp_path / "model.safetensors")
    config = json.loads((reference["directory"] / "config.json").read_text())
    config.update(use_timm_backbone=True, backbone="resnet50", backbone_config=None)
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert transformers.DetrConfig.from_pretrained(tmp_path).backbone_config.model_type == "timm_backbone"

    _, expected, _ = load_pretrained(reference["directory"], num_classes=0, verbose=False)
    model, variables, report = load_pretrained(tmp_path, num_classes=0, verbose=False)
    assert model.depths == (1, 1) and model.hidden_sizes == (16, 32) and not report.missing
    jax.tree.map(np.testing.assert_array_equal, variables, expected)
    config["dilation"] = True  # DETR-DC5's dilated last stage: refused, not loaded as a plain ResNet
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightLoadError, match="dilation=True"):
        load_pretrained(tmp_path, num_classes=0, verbose=False)


def _scipy_match(cost, mask):
    real = np.flatnonzero(mask)
    rows, columns = linear_sum_assignment(cost[:, real])
    return cost[:, real][rows, columns].sum(), dict(zip(real[columns].tolist(), rows.tolist(), strict=True))


def test_hungarian_match_against_scipy():
    rng = np.random.default_rng(0)
    # More queries than targets, and (last) more real targets than queries; padded targets masked out.
    cases = [((4, 7, 5), [1, 1, 0, 1, 1]), ((4, 3, 5), [1, 1, 1, 1, 0])]
    for shape, real in cases:
        cost = rng.normal(size=shape).astype(np.float32)
        mask = np.broadcast_to(np.array(real, bool), shape[::2]).copy()
        mask[1, 0] = False
        for run in (jax.jit(jax.vmap(hungarian_match)), jax.pmap(hungarian_match)):
            query, matched = map(np.asarray, run(jnp.asarray(cost), jnp.asarray(mask)))
            for i in range(shape[0]):
                total, expected = _scipy_match(cost[i], mask[i])
                assert {t: int(query[i, t]) for t in np.flatnonzero(matched[i])} == expected
                assert np.isclose(sum(cost[i, q, t] for t, q in expected.items()), total)


def _numpy_giou(a, b):
    out = np.zeros((len(a), len(b)))
    for i, p in enumerate(a):
        for j, q in enumerate(b):
            inter = max(0, min(p[2], q[2]) - max(p[0], q[0])) * max(0, min(p[3], q[3]) - max(p[1], q[1]))
            union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
            hull = (max(p[2], q[2]) - min(p[0], q[0])) * (max(p[3], q[3]) - min(p[1], q[1]))
            out[i, j] = inter / union - (hull - union) / hull
    return out


def test_generalized_box_iou_against_numpy():
    rng = np.random.default_rng(1)
    corners = rng.uniform(0, 10, (2, 6, 2, 2))
    boxes = np.concatenate([corners.min(axis=2), corners.max(axis=2)], axis=-1).astype(np.float32)
    boxes[1, 0] = boxes[0, 0]  # identical boxes: GIoU 1
    ours = jax.jit(generalized_box_iou)(boxes[0], boxes[1])
    assert max_abs(ours, _numpy_giou(boxes[0].astype(np.float64), boxes[1].astype(np.float64))) < TOL
    assert abs(float(ours[0, 0]) - 1.0) < TOL
