"""The ResNet family's weight layouts: Hugging Face ``microsoft/resnet-*``, torchvision ``resnet*`` state dicts
(exportable), and the ResNets inside detectors: torchvision's ``fasterrcnn_resnet50_fpn[_v2]`` state dicts
(``backbone.body.*``) and Hugging Face ``facebook/detr-resnet-*`` directories."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any

from jtl.weights import Layout, WeightLoadError, adapt_input_channels, batch_norm, conv, first_match, linear


def resizers(fields: dict[str, Any], source: dict[str, Any]) -> dict:
    """The stem convolution follows the number of input channels (timm's ``adapt_input_conv``)."""
    del fields, source
    return {r"params/embed/conv/kernel": adapt_input_channels}


# --- Hugging Face ResNet ------------------------------------------------------------------------------------
_HF_RESNET = r"(?:resnet\.)?"
_HF_RESNET_BLOCK = _HF_RESNET + r"encoder\.stages\.(\d+)\.layers\.(\d+)\."
HF_RESNET_RULES = [
    *conv(_HF_RESNET + r"embedder\.embedder\.convolution", "embed/conv"),
    *batch_norm(_HF_RESNET + r"embedder\.embedder\.normalization", "embed/bn"),
    *conv(_HF_RESNET_BLOCK + r"shortcut\.convolution", r"stage_\1/block_\2/shortcut/conv"),
    *batch_norm(_HF_RESNET_BLOCK + r"shortcut\.normalization", r"stage_\1/block_\2/shortcut/bn"),
    *(
        rule
        for k in range(3)
        for rule in (
            *conv(_HF_RESNET_BLOCK + rf"layer\.{k}\.convolution", rf"stage_\1/block_\2/conv{k + 1}"),
            *batch_norm(_HF_RESNET_BLOCK + rf"layer\.{k}\.normalization", rf"stage_\1/block_\2/bn{k + 1}"),
        )
    ),
    *linear(r"classifier\.1", "head"),
]


def hf_resnet_fields(config: dict[str, Any], state: Mapping[str, Any]) -> dict[str, Any]:
    if config.get("hidden_act", "relu") != "relu":
        raise WeightLoadError(f"config.json: hidden_act={config['hidden_act']!r} is not supported (relu only)")
    classifier = first_match(state, r"classifier\.1\.weight")
    return {
        "embedding_size": config.get("embedding_size", 64),
        "hidden_sizes": tuple(config.get("hidden_sizes", (256, 512, 1024, 2048))),
        "depths": tuple(config.get("depths", (3, 4, 6, 3))),
        "layer_type": config.get("layer_type", "bottleneck"),
        "downsample_in_first_stage": config.get("downsample_in_first_stage", False),
        "downsample_in_bottleneck": config.get("downsample_in_bottleneck", False),
        "num_channels": config.get("num_channels", 3),
        "num_classes": 0 if classifier is None else classifier.shape[0],
    }


HF_RESNET = Layout("hf-resnet", HF_RESNET_RULES, hf_resnet_fields, model_types=("resnet",), resizers=resizers)

# --- torchvision ResNet (models.resnet18 / resnet50 state dicts) --------------------------------------------
# torchvision counts stages layer1..layer4 from 1; jtl counts stage_0.. from 0. Regexes cannot subtract, so
# the table lists the stages.
TORCHVISION_RESNET_RULES = [
    *conv(r"conv1", "embed/conv"),
    *batch_norm(r"bn1", "embed/bn"),
    *(
        rule
        for s in range(8)
        for rule in (
            *conv(rf"layer{s + 1}\.(\d+)\.conv([123])", rf"stage_{s}/block_\1/conv\2"),
            *batch_norm(rf"layer{s + 1}\.(\d+)\.bn([123])", rf"stage_{s}/block_\1/bn\2"),
            *conv(rf"layer{s + 1}\.(\d+)\.downsample\.0", rf"stage_{s}/block_\1/shortcut/conv"),
            *batch_norm(rf"layer{s + 1}\.(\d+)\.downsample\.1", rf"stage_{s}/block_\1/shortcut/bn"),
        )
    ),
    *linear(r"fc", "head"),
]


def torchvision_resnet_fields(config: dict[str, Any], state: Mapping[str, Any]) -> dict[str, Any]:
    del config
    bottleneck = "layer1.0.conv3.weight" in state
    last = "conv3" if bottleneck else "conv2"
    depths, hidden = [], []
    stage = 1
    while f"layer{stage}.0.conv1.weight" in state:
        blocks = {int(m.group(1)) for k in state if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
        depths.append(len(blocks))
        hidden.append(state[f"layer{stage}.0.{last}.weight"].shape[0])
        stage += 1
    if not depths or "conv1.weight" not in state:
        raise WeightLoadError("not a torchvision ResNet state dict: expected 'conv1.weight' and 'layer1.0.*' keys")
    return {
        "embedding_size": state["conv1.weight"].shape[0],
        "num_channels": state["conv1.weight"].shape[1],
        "hidden_sizes": tuple(hidden),
        "depths": tuple(depths),
        "layer_type": "bottleneck" if bottleneck else "basic",
        "num_classes": state["fc.weight"].shape[0] if "fc.weight" in state else 0,
    }


def is_torchvision_resnet(keys: Collection[str]) -> bool:
    """torchvision's ResNet names: ``conv1``, ``bn1``, ``layer1.0.conv1``, ..., ``fc``."""
    return "layer1.0.conv1.weight" in keys


TORCHVISION_RESNET = Layout(
    "torchvision-resnet",
    TORCHVISION_RESNET_RULES,
    torchvision_resnet_fields,
    detect=is_torchvision_resnet,
    resizers=resizers,
)

# --- DETR's ResNet backbone (Hugging Face facebook/detr-resnet-*, model_type "detr") -------------------------
# The backbone of a DetrForObjectDetection directory, under DetrConvEncoder's `model.` (transformers 5.24 saves
# the legacy `backbone.conv_encoder.` and loads `backbone.` too). Two spellings: Hugging Face ResNet names
# (use_timm_backbone=False) and timm's resnet names (use_timm_backbone=True, as facebook/detr-resnet-50), which
# are torchvision's (`conv1`, `bn1`, `layer1.0.conv1`, `downsample.0/1`). DETR's own head is not this layout's:
# its keys are reported as unexpected (jtl.detection.detr_from_hf loads them).
_DETR_BACKBONE = r"model\.backbone\.(?:conv_encoder\.)?model\."
DETR_RESNET_RULES = [
    rule._replace(source=_DETR_BACKBONE + rule.source, export=None)
    for rule in (*HF_RESNET_RULES, *TORCHVISION_RESNET_RULES)
    if rule.target is None or not rule.target.startswith("params/head/")
]


def detr_resnet_fields(config: dict[str, Any], state: Mapping[str, Any]) -> dict[str, Any]:
    if config.get("dilation"):
        raise WeightLoadError("config.json: dilation=True (DETR-DC5, a dilated last stage) is not supported")
    prefix = re.compile(_DETR_BACKBONE)
    backbone = {prefix.sub("", k, count=1): v for k, v in state.items() if prefix.match(k)}
    sub_config = config.get("backbone_config") or {}
    if is_torchvision_resnet(backbone):
        name = config.get("backbone") or sub_config.get("backbone") or "resnet50"
        if not name.startswith("resnet"):
            raise WeightLoadError(f"config.json: backbone={name!r} is not a timm ResNet")
        fields = torchvision_resnet_fields({}, backbone)
        last = (sub_config.get("out_indices") or [len(fields["depths"])])[-1]
        if last != len(fields["depths"]):
            raise WeightLoadError(f"config.json: DETR over stage out_indices={last}; only the last stage is supported")
        return fields
    if sub_config.get("model_type") != "resnet" or not backbone:
        raise WeightLoadError(
            "not a DETR over a ResNet: expected config.json backbone_config.model_type='resnet' or timm ResNet "
            f"weights under 'model.backbone.conv_encoder.model.' (backbone_config: {sub_config.get('model_type')!r})"
        )
    fields = hf_resnet_fields(sub_config, {})
    last = (sub_config.get("out_features") or [f"stage{len(fields['depths'])}"])[-1]
    if last != f"stage{len(fields['depths'])}":
        raise WeightLoadError(
            f"config.json: DETR over backbone out_features {last!r}; only the last stage is supported"
        )
    return fields


DETR_RESNET = Layout("detr-resnet", DETR_RESNET_RULES, detr_resnet_fields, model_types=("detr",), resizers=resizers)

# --- torchvision Faster R-CNN (fasterrcnn_resnet50_fpn[_v2] state dicts): the ResNet under backbone.body ------
# The detector's own keys (backbone.fpn.*, rpn.*, roi_heads.*) are left unmatched and reported as unexpected;
# jtl.detection.faster_rcnn_from_torchvision loads them.
_FRCNN_BODY = "backbone.body."


def _body(state: Mapping[str, Any]) -> dict[str, Any]:
    return {k[len(_FRCNN_BODY) :]: v for k, v in state.items() if k.startswith(_FRCNN_BODY)}


def torchvision_fasterrcnn_resnet_fields(config: dict[str, Any], state: Mapping[str, Any]) -> dict[str, Any]:
    body = _body(state)
    fields = torchvision_resnet_fields(config, body)
    # v1's FrozenBatchNorm2d (no num_batches_tracked) runs with eps 0: torchvision's fasterrcnn_resnet50_fpn calls
    # overwrite_eps(model, 0.0) on its COCO weights; v2's BatchNorm2d keeps 1e-5.
    if "bn1.num_batches_tracked" not in body:
        fields["bn_eps"] = 0.0
    return fields


def is_torchvision_fasterrcnn_resnet(keys: Collection[str]) -> bool:
    """torchvision's detection names: ``backbone.body.conv1``, ..., ``backbone.fpn.*``, ``rpn.*``, ``roi_heads.*``."""
    return _FRCNN_BODY + "layer1.0.conv1.weight" in keys


TORCHVISION_FASTERRCNN_RESNET = Layout(
    "torchvision-fasterrcnn-resnet",
    [
        rule._replace(source=re.escape(_FRCNN_BODY) + rule.source, export=rule.export and _FRCNN_BODY + rule.export)
        for rule in TORCHVISION_RESNET_RULES
        if not rule.source.startswith("fc")
    ],
    torchvision_fasterrcnn_resnet_fields,
    detect=is_torchvision_fasterrcnn_resnet,
    resizers=resizers,
)
