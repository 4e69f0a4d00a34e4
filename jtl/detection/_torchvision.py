"""torchvision's ``fasterrcnn_resnet50_fpn`` (v1) and ``fasterrcnn_resnet50_fpn_v2`` state dicts into
:class:`FasterRCNN` (the FPN, RPN and box heads; the ResNet under ``backbone.body.*`` loads through
``jtl.weights.load_pretrained``, layout ``torchvision-fasterrcnn-resnet``).

The names and shapes follow torchvision's modules (``FastRCNNConvFCHead``: four ``Conv2dNormActivation`` blocks,
``Flatten`` at index 4, ``Linear`` at 5; ``fasterrcnn_resnet50_fpn`` loads the COCO v1 weights, then
``overwrite_eps(model, 0.0)``). torchvision cannot run beside the CPU torch of the test suite, so the tests check
the layout on state dicts built with these names and shapes, not on torchvision's own outputs:

- ``backbone.fpn.inner_blocks.{i}`` / ``layer_blocks.{i}``: 1x1 / 3x3 convs. Checkpoints before torchvision
  0.13 (the COCO v1 weights) name them ``inner_blocks.{i}.weight``; ``Conv2dNormActivation`` made them
  ``inner_blocks.{i}.0.weight``; v2 has a bias-free conv at ``.0`` and a ``BatchNorm2d`` at ``.1``.
- ``rpn.head.conv`` (old) / ``rpn.head.conv.0.0`` (v1) / ``rpn.head.conv.{0,1}.0`` (v2): 3x3 convs;
  ``rpn.head.cls_logits`` (A outputs) and ``rpn.head.bbox_pred`` (4A, anchor-major as jtl's).
- ``roi_heads.box_head.fc6``/``fc7`` (v1 ``TwoMLPHead``) or ``roi_heads.box_head.{0..3}.{0,1}`` (conv, BN)
  and ``roi_heads.box_head.5`` (the FC after ``Flatten`` at index 4) for v2's ``FastRCNNConvFCHead``.
- ``roi_heads.box_predictor.cls_score`` (classes + background) and ``bbox_pred`` (4 per class).

The first FC flattens PyTorch's ``(C, 7, 7)`` crops; jtl's are NHWC ``(7, 7, C)``, so its input rows are
permuted.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jtl.detection._faster_rcnn import FasterRCNN
from jtl.weights import (
    Pretrained,
    Rule,
    WeightLoadError,
    batch_norm,
    conv,
    convert,
    fresh_init,
    linear,
    merge_into,
    read_torch,
)


def _fc_from_chw(pool: int) -> Any:
    def transform(weight: np.ndarray) -> np.ndarray:
        out, features = weight.shape
        channels = features // (pool * pool)
        return weight.reshape(out, channels, pool, pool).transpose(2, 3, 1, 0).reshape(features, out)

    return transform


def _rules(pool: int) -> list[Rule]:
    fpn = r"backbone\.fpn\."
    first_fc = _fc_from_chw(pool)
    return [
        Rule(r"backbone\.body\..*", None),
        *conv(fpn + r"inner_blocks\.(\d+)(?:\.0)?", r"fpn/inner_\1/conv"),
        *batch_norm(fpn + r"inner_blocks\.(\d+)\.1", r"fpn/inner_\1/bn"),
        *conv(fpn + r"layer_blocks\.(\d+)(?:\.0)?", r"fpn/layer_\1/conv"),
        *batch_norm(fpn + r"layer_blocks\.(\d+)\.1", r"fpn/layer_\1/bn"),
        *conv(r"rpn\.head\.conv\.(\d+)\.0", r"rpn/conv_\1"),
        *conv(r"rpn\.head\.conv", "rpn/conv_0"),
        *conv(r"rpn\.head\.cls_logits", "rpn/cls_logits"),
        *conv(r"rpn\.head\.bbox_pred", "rpn/bbox_pred"),
        Rule(r"roi_heads\.box_head\.fc6\.weight", "params/box_head/fc6/kernel", first_fc),
        Rule(r"roi_heads\.box_head\.fc6\.bias", "params/box_head/fc6/bias"),
        *linear(r"roi_heads\.box_head\.fc7", "box_head/fc7"),
        *conv(r"roi_heads\.box_head\.([0-3])\.0", r"box_head/conv_\1/conv"),
        *batch_norm(r"roi_heads\.box_head\.([0-3])\.1", r"box_head/conv_\1/bn"),
        Rule(r"roi_heads\.box_head\.5\.weight", "params/box_head/fc/kernel", first_fc),
        Rule(r"roi_heads\.box_head\.5\.bias", "params/box_head/fc/bias"),
        *linear(r"roi_heads\.box_predictor\.cls_score", "box_predictor/cls_score"),
        *linear(r"roi_heads\.box_predictor\.bbox_pred", "box_predictor/bbox_pred"),
    ]


def _tensor(state: dict[str, np.ndarray], *keys: str) -> np.ndarray:
    for key in keys:
        if key in state:
            return np.asarray(state[key])
    raise WeightLoadError(f"not a torchvision Faster R-CNN state dict: none of {list(keys)} found")


def faster_rcnn_from_torchvision(
    path_or_state_dict: str | os.PathLike | dict[str, Any],
    num_classes: int | None = None,
    version: str | None = None,
    seed: int = 0,
    **fields: Any,
) -> Pretrained:
    """Loads torchvision Faster R-CNN weights (FPN, RPN, box heads) into a :class:`FasterRCNN`.

    Args:
      path_or_state_dict: a ``.pth`` file (read with ``torch.load(weights_only=True)``) or a state dict of
        arrays/tensors.
      num_classes: foreground classes; one other than the checkpoint's (COCO: 91 outputs = 90 + background)
        re-initialises the box predictor only. ``None`` keeps the checkpoint's.
      version: ``"v1"`` or ``"v2"``; ``None`` detects it from the names.
      seed: the seed of freshly initialised variables.
      **fields: other :class:`FasterRCNN` fields (thresholds, proposal counts).

    Returns:
      ``Pretrained(detector, variables, report)``; the backbone's keys are skipped (load them with
      ``load_pretrained``).

    Raises:
      WeightLoadError: for a state dict that is not a Faster R-CNN's, or shapes that do not fit.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> state = {f"backbone.fpn.{kind}_blocks.{i}.{p}": rng.normal(size=s).astype(np.float32)
    ...          for i in range(4) for kind, k in (("inner", 1), ("layer", 3))
    ...          for p, s in (("weight", (8, 4 if kind == "inner" else 8, k, k)), ("bias", (8,)))}
    >>> state |= {"rpn.head.conv.weight": np.zeros((8, 8, 3, 3), np.float32), "rpn.head.conv.bias": np.zeros(8),
    ...           "rpn.head.cls_logits.weight": np.zeros((3, 8, 1, 1)), "rpn.head.cls_logits.bias": np.zeros(3),
    ...           "rpn.head.bbox_pred.weight": np.zeros((12, 8, 1, 1)), "rpn.head.bbox_pred.bias": np.zeros(12),
    ...           "roi_heads.box_head.fc6.weight": np.zeros((16, 8 * 49)), "roi_heads.box_head.fc6.bias": np.zeros(16),
    ...           "roi_heads.box_head.fc7.weight": np.zeros((16, 16)), "roi_heads.box_head.fc7.bias": np.zeros(16),
    ...           "roi_heads.box_predictor.cls_score.weight": np.zeros((3, 16)),
    ...           "roi_heads.box_predictor.cls_score.bias": np.zeros(3),
    ...           "roi_heads.box_predictor.bbox_pred.weight": np.zeros((12, 16)),
    ...           "roi_heads.box_predictor.bbox_pred.bias": np.zeros(12)}
    >>> detector, variables, report = faster_rcnn_from_torchvision(state, num_classes=5)
    >>> detector.version, detector.num_classes, len(report.loaded), len(report.reinitialised)
    ('v1', 5, 26, 4)
    """
    if isinstance(path_or_state_dict, dict):
        where = "state dict"
        state = {
            k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v)
            for k, v in path_or_state_dict.items()
        }
    else:
        where = os.fspath(path_or_state_dict)
        state = read_torch(where)
    if version is None:
        version = "v2" if "rpn.head.conv.1.0.weight" in state or "roi_heads.box_head.5.weight" in state else "v1"
    if version not in ("v1", "v2"):
        raise ValueError(f"version={version!r}: expected 'v1', 'v2' or None")
    cls_score = _tensor(state, "roi_heads.box_predictor.cls_score.weight")
    logits = _tensor(state, "rpn.head.cls_logits.weight")
    inner = []
    while True:
        key = f"backbone.fpn.inner_blocks.{len(inner)}"
        if f"{key}.weight" not in state and f"{key}.0.weight" not in state:
            break
        inner.append(_tensor(state, f"{key}.weight", f"{key}.0.weight"))
    if not inner:
        raise WeightLoadError(f"{where}: no 'backbone.fpn.inner_blocks.0[.0].weight': not a Faster R-CNN with FPN")
    checkpoint_classes = cls_score.shape[0] - 1
    fields = {
        "aspect_ratios": (0.5, 1.0, 2.0),
        "anchor_sizes": tuple(32 * 2**i for i in range(len(inner) + 1)),
        **fields,
        "num_classes": checkpoint_classes if num_classes is None else num_classes,
        "version": version,
        "fpn_channels": logits.shape[1],
        "representation_size": cls_score.shape[1],
    }
    if len(fields["aspect_ratios"]) != logits.shape[0]:
        raise WeightLoadError(
            f"{where}: rpn.head.cls_logits.weight {logits.shape} has {logits.shape[0]} anchors per location, "
            f"aspect_ratios={fields['aspect_ratios']} gives {len(fields['aspect_ratios'])}"
        )
    detector = FasterRCNN(**fields)
    maps = [jnp.zeros((1, 2 ** (len(inner) - i), 2 ** (len(inner) - i), x.shape[1])) for i, x in enumerate(inner)]
    shapes = jax.eval_shape(detector.init, jax.random.PRNGKey(seed), maps)

    converted, unmatched = convert(state, _rules(detector.pool_size), where)
    replace = num_classes is not None and num_classes != checkpoint_classes
    variables, report = merge_into(
        shapes,
        fresh_init(detector, [maps], seed),
        converted,
        unmatched,
        source=where,
        reinitialise=r"params/box_predictor/.*" if replace else None,
    )
    return Pretrained(detector, variables, report)
