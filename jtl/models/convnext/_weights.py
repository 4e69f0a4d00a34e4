"""The ConvNeXt family's weight layouts: Hugging Face ``convnext`` (facebook/convnext-*) and ``convnextv2``
(facebook/convnextv2-*)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from jtl.models._layers import activation
from jtl.weights import Layout, Rule, WeightLoadError, adapt_input_channels, conv, first_match, layer_norm, linear


def resizers(fields: dict[str, Any], source: dict[str, Any]) -> dict:
    """The stem convolution follows the number of input channels (timm's ``adapt_input_conv``)."""
    del fields, source
    return {r"params/embed/patch/kernel": adapt_input_channels}


def _flatten(x: np.ndarray) -> np.ndarray:
    """GRN's (1, 1, 1, C) parameters -> (C,)."""
    return x.reshape(-1)


def _unflatten(x: np.ndarray, fields: Mapping[str, Any]) -> np.ndarray:
    del fields
    return x.reshape(1, 1, 1, -1)


def _rules(prefix: str) -> list[Rule]:
    model = rf"(?:{prefix}\.)?"
    stage = model + r"encoder\.stages\.(\d+)\."
    block = stage + r"layers\.(\d+)\."
    return [
        *conv(model + r"embeddings\.patch_embeddings", "embed/patch"),
        *layer_norm(model + r"embeddings\.layernorm", "embed/norm"),
        *layer_norm(stage + r"downsampling_layer\.0", r"stage_\1/downsample/norm"),
        *conv(stage + r"downsampling_layer\.1", r"stage_\1/downsample/conv"),
        *conv(block + r"dwconv", r"stage_\1/block_\2/dwconv"),
        *layer_norm(block + r"layernorm", r"stage_\1/block_\2/norm"),
        *linear(block + r"pwconv1", r"stage_\1/block_\2/fc1"),
        *linear(block + r"pwconv2", r"stage_\1/block_\2/fc2"),
        Rule(block + r"layer_scale_parameter", r"params/stage_\1/block_\2/scale/scale"),
        Rule(block + r"grn\.weight", r"params/stage_\1/block_\2/grn/scale", _flatten, inverse=_unflatten),
        Rule(block + r"grn\.bias", r"params/stage_\1/block_\2/grn/bias", _flatten, inverse=_unflatten),
        *layer_norm(model + r"layernorm", "norm"),
        *linear(r"classifier", "head"),
    ]


HF_CONVNEXT_RULES = _rules("convnext")
HF_CONVNEXTV2_RULES = _rules("convnextv2")


def _fields(config: dict[str, Any], state: Mapping[str, Any], v2: bool) -> dict[str, Any]:
    act = config.get("hidden_act", "gelu")
    try:
        activation(act)
    except ValueError as error:
        raise WeightLoadError(f"config.json: hidden_act={act!r} is not supported") from error
    stages = config.get("num_stages", 4)
    classifier = first_match(state, r"classifier\.weight")
    layer_scale = config.get("layer_scale_init_value", 1e-6)
    return {
        "depths": tuple(config.get("depths", (3, 3, 9, 3)))[:stages],
        "hidden_sizes": tuple(config.get("hidden_sizes", (96, 192, 384, 768)))[:stages],
        "patch_size": config.get("patch_size", 4),
        "hidden_act": act,
        # V2 has no LayerScale; V1 has one where its init value is positive.
        "layer_scale": None if v2 or layer_scale <= 0 else layer_scale,
        "grn": v2,
        "drop_path_rate": config.get("drop_path_rate", 0.0),
        "layer_norm_eps": config.get("layer_norm_eps", 1e-12),
        "num_channels": config.get("num_channels", 3),
        "image_size": config.get("image_size", 224),
        "num_classes": 0 if classifier is None else classifier.shape[0],
    }


def hf_convnext_fields(config: dict[str, Any], state: Mapping[str, Any]) -> dict[str, Any]:
    return _fields(config, state, v2=False)


def hf_convnextv2_fields(config: dict[str, Any], state: Mapping[str, Any]) -> dict[str, Any]:
    return _fields(config, state, v2=True)


HF_CONVNEXT = Layout("hf-convnext", HF_CONVNEXT_RULES, hf_convnext_fields, model_types=("convnext",), resizers=resizers)
HF_CONVNEXTV2 = Layout(
    "hf-convnextv2", HF_CONVNEXTV2_RULES, hf_convnextv2_fields, model_types=("convnextv2",), resizers=resizers
)
