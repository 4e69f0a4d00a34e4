"""The MobileNetV2 family's weight layout: Hugging Face ``mobilenet_v2`` (google/mobilenet_v2_*)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jtl.models._layers import activation
from jtl.weights import Layout, WeightLoadError, adapt_input_channels, batch_norm, conv, first_match, linear


def resizers(fields: dict[str, Any], source: dict[str, Any]) -> dict:
    """The stem convolution follows the number of input channels (timm's ``adapt_input_conv``)."""
    del fields, source
    return {r"params/embed/conv/conv/kernel": adapt_input_channels}


def _conv_layer(source: str, target: str) -> list:
    """Hugging Face's ``MobileNetV2ConvLayer``: ``convolution`` and ``normalization``."""
    return [
        *conv(source + r"\.convolution", target + "/conv"),
        *batch_norm(source + r"\.normalization", target + "/bn"),
    ]


_HF = r"(?:mobilenet_v2\.)?"
_STEM = {"first_conv": "conv", "expand_1x1": "expand", "conv_3x3": "depthwise", "reduce_1x1": "project"}
HF_MOBILENET_V2_RULES = [
    *(rule for theirs, ours in _STEM.items() for rule in _conv_layer(_HF + rf"conv_stem\.{theirs}", f"embed/{ours}")),
    *(
        rule
        for theirs, ours in list(_STEM.items())[1:]
        for rule in _conv_layer(_HF + rf"layer\.(\d+)\.{theirs}", rf"encoder/block_\1/{ours}")
    ),
    *_conv_layer(_HF + r"conv_1x1", "top"),
    *linear(r"classifier", "head"),
]

_DEFAULTS = {
    "depth_multiplier": 1.0,
    "depth_divisible_by": 8,
    "min_depth": 8,
    "expand_ratio": 6.0,
    "output_stride": 32,
    "first_layer_is_expansion": True,
    "finegrained_output": True,
    "hidden_act": "relu6",
    "tf_padding": True,
    "num_channels": 3,
    "image_size": 224,
}  # MobileNetV2Config's defaults


def hf_mobilenet_v2_fields(config: dict[str, Any], state: Mapping[str, Any]) -> dict[str, Any]:
    fields = {key: config.get(key, default) for key, default in _DEFAULTS.items()}
    try:
        activation(fields["hidden_act"])
    except (ValueError, TypeError) as error:
        raise WeightLoadError(f"config.json: hidden_act={fields['hidden_act']!r} is not supported") from error
    classifier = first_match(state, r"classifier\.weight")
    return {
        **fields,
        "bn_eps": config.get("layer_norm_eps", 1e-3),
        "dropout_rate": config.get("classifier_dropout_prob", 0.8),
        "num_classes": 0 if classifier is None else classifier.shape[0],
    }


HF_MOBILENET_V2 = Layout(
    "hf-mobilenet_v2",
    HF_MOBILENET_V2_RULES,
    hf_mobilenet_v2_fields,
    model_types=("mobilenet_v2",),
    resizers=resizers,
)
