"""The Swin V2 family's weight layout: Hugging Face ``swinv2`` (microsoft/swinv2-*), as ``save_pretrained`` writes
it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jtl.models._layers import pair
from jtl.weights import (
    Layout,
    Rule,
    WeightLoadError,
    adapt_input_channels,
    conv,
    first_match,
    hf_gelu_approximate,
    layer_norm,
    linear,
)

_HF = r"(?:swinv2\.)?"
_HF_BLOCK = _HF + r"encoder\.layers\.(\d+)\.blocks\.(\d+)\."
_BLOCK = r"stage_\1/block_\2"
_CPB = r"attention\.self\.continuous_position_bias_mlp\."
HF_SWINV2_RULES = [
    *conv(_HF + r"embeddings\.patch_embeddings\.projection", "embed/patch"),
    *layer_norm(_HF + r"embeddings\.norm", "embed/norm"),
    Rule(_HF + r"embeddings\.mask_token", None),  # masked-image pre-training only
    *linear(_HF_BLOCK + r"attention\.self\.(query|key|value)", _BLOCK + r"/attn/\3"),
    Rule(_HF_BLOCK + r"attention\.self\.logit_scale", rf"params/{_BLOCK}/attn/logit_scale"),
    *linear(_HF_BLOCK + _CPB + r"0", _BLOCK + "/attn/cpb_mlp/fc1"),
    *linear(_HF_BLOCK + _CPB + r"2", _BLOCK + "/attn/cpb_mlp/fc2"),
    # Computed from the window (older files hold them).
    Rule(_HF_BLOCK + r"attention\.self\.relative_(?:coords_table|position_index)", None),
    *linear(_HF_BLOCK + r"attention\.output\.dense", _BLOCK + "/attn/out"),
    *layer_norm(_HF_BLOCK + r"layernorm_before", _BLOCK + "/norm1"),
    *layer_norm(_HF_BLOCK + r"layernorm_after", _BLOCK + "/norm2"),
    *linear(_HF_BLOCK + r"intermediate\.dense", _BLOCK + "/mlp/fc1"),
    *linear(_HF_BLOCK + r"output\.dense", _BLOCK + "/mlp/fc2"),
    *layer_norm(_HF + r"encoder\.layers\.(\d+)\.downsample\.norm", r"stage_\1/downsample/norm"),
    *linear(_HF + r"encoder\.layers\.(\d+)\.downsample\.reduction", r"stage_\1/downsample/reduction"),
    *layer_norm(_HF + r"layernorm", "norm"),
    *linear(r"classifier", "head"),
]


def hf_swinv2_fields(config: dict[str, Any], state: Mapping[str, Any]) -> dict[str, Any]:
    if config.get("use_absolute_embeddings", False):
        raise WeightLoadError("swinv2: use_absolute_embeddings=True is not supported (Hugging Face's cannot run it)")
    classifier = first_match(state, r"classifier\.weight")
    depths = tuple(config.get("depths", (2, 2, 6, 2)))
    return {
        "patch_size": pair(config.get("patch_size", 4)),
        "embed_dim": config.get("embed_dim", 96),
        "depths": depths,
        "num_heads": tuple(config.get("num_heads", (3, 6, 12, 24))),
        "window_size": config.get("window_size", 7),
        "pretrained_window_sizes": tuple(config.get("pretrained_window_sizes") or (0,) * len(depths)),
        "mlp_ratio": config.get("mlp_ratio", 4.0),
        "image_size": pair(config.get("image_size", 224)),
        "num_channels": config.get("num_channels", 3),
        "qkv_bias": config.get("qkv_bias", True),
        "gelu_approximate": hf_gelu_approximate(config),
        "layer_norm_eps": config.get("layer_norm_eps", 1e-5),
        "dropout_rate": config.get("hidden_dropout_prob", 0.0),
        "attention_dropout_rate": config.get("attention_probs_dropout_prob", 0.0),
        "drop_path_rate": config.get("drop_path_rate", 0.1),
        "num_classes": 0 if classifier is None else classifier.shape[0],
    }


def _resizers(fields: dict[str, Any], source: dict[str, Any]) -> dict:
    """The patch embedding follows the number of input channels; nothing else has a size that depends on the
    image or window size (the position bias is generated from coordinates)."""
    del fields, source
    return {r"params/embed/patch/kernel": adapt_input_channels}


HF_SWINV2 = Layout("hf-swinv2", HF_SWINV2_RULES, hf_swinv2_fields, model_types=("swinv2",), resizers=_resizers)
