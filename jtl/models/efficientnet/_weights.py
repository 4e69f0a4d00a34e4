"""The EfficientNet family's weight layout: Hugging Face ``efficientnet`` (google/efficientnet-b*)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jtl.models._layers import activation
from jtl.weights import Layout, WeightLoadError, adapt_input_channels, batch_norm, conv, first_match, linear


def resizers(fields: dict[str, Any], source: dict[str, Any]) -> dict:
    """The stem convolution follows the number of input channels (timm's ``adapt_input_conv``)."""
    del fields, source
    return {r"params/embed/conv/kernel": adapt_input_channels}


_HF = r"(?:efficientnet\.)?"
_HF_BLOCK = _HF + r"encoder\.blocks\.(\d+)\."
HF_EFFICIENTNET_RULES = [
    *conv(_HF + r"embeddings\.convolution", "embed/conv"),
    *batch_norm(_HF + r"embeddings\.batchnorm", "embed/bn"),
    *conv(_HF_BLOCK + r"expansion\.expand_conv", r"encoder/block_\1/expand/conv"),
    *batch_norm(_HF_BLOCK + r"expansion\.expand_bn", r"encoder/block_\1/expand/bn"),
    *conv(_HF_BLOCK + r"depthwise_conv\.depthwise_conv", r"encoder/block_\1/depthwise/conv"),
    *batch_norm(_HF_BLOCK + r"depthwise_conv\.depthwise_norm", r"encoder/block_\1/depthwise/bn"),
    *conv(_HF_BLOCK + r"squeeze_excite\.(reduce|expand)", r"encoder/block_\1/se/\2"),
    *conv(_HF_BLOCK + r"projection\.project_conv", r"encoder/block_\1/project/conv"),
    *batch_norm(_HF_BLOCK + r"projection\.project_bn", r"encoder/block_\1/project/bn"),
    *conv(_HF + r"encoder\.top_conv", "top/conv"),
    *batch_norm(_HF + r"encoder\.top_bn", "top/bn"),
    *linear(r"classifier", "head"),
]

_DEFAULTS = {
    "width_coefficient": 2.0,
    "depth_coefficient": 3.1,
    "depth_divisor": 8,
    "kernel_sizes": (3, 3, 5, 3, 5, 5, 3),
    "in_channels": (32, 16, 24, 40, 80, 112, 192),
    "out_channels": (16, 24, 40, 80, 112, 192, 320),
    "strides": (1, 2, 2, 2, 1, 2, 1),
    "num_block_repeats": (1, 2, 2, 3, 3, 4, 1),
    "expand_ratios": (1, 6, 6, 6, 6, 6, 6),
    "depthwise_padding": (),
    "squeeze_expansion_ratio": 0.25,
    "hidden_act": "swish",
    "pooling_type": "mean",
    "dropout_rate": 0.5,
    "drop_connect_rate": 0.2,
    "num_channels": 3,
    "image_size": 600,
}  # EfficientNetConfig's defaults (b7's)


def hf_efficientnet_fields(config: dict[str, Any], state: Mapping[str, Any]) -> dict[str, Any]:
    fields = {
        key: tuple(config.get(key, default)) if isinstance(default, tuple) else config.get(key, default)
        for key, default in _DEFAULTS.items()
    }
    try:
        activation(fields["hidden_act"])
    except ValueError as error:
        raise WeightLoadError(f"config.json: hidden_act={fields['hidden_act']!r} is not supported") from error
    classifier = first_match(state, r"classifier\.weight")
    return {
        **fields,
        "bn_eps": config.get("batch_norm_eps", 1e-3),
        # Flax's convention is TensorFlow's (the original models' 0.99); transformers passes the config's 0.99 to
        # PyTorch, whose momentum means the opposite. Training only; the parity is in evaluation.
        "bn_momentum": 0.99,
        "num_classes": 0 if classifier is None else classifier.shape[0],
    }


HF_EFFICIENTNET = Layout(
    "hf-efficientnet",
    HF_EFFICIENTNET_RULES,
    hf_efficientnet_fields,
    model_types=("efficientnet",),
    resizers=resizers,
)
