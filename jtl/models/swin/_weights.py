"""The Swin family's weight layout: Hugging Face ``swin`` (microsoft/swin-*), as ``save_pretrained`` writes it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from jtl.models._layers import pair, patch_grid
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
    resample_pos_embedding,
)

_HF = r"(?:swin\.)?"
_HF_BLOCK = _HF + r"encoder\.layers\.(\d+)\.blocks\.(\d+)\."
_BLOCK = r"stage_\1/block_\2"
HF_SWIN_RULES = [
    *conv(_HF + r"embeddings\.patch_embeddings\.projection", "embed/patch"),
    *layer_norm(_HF + r"embeddings\.norm", "embed/norm"),
    Rule(_HF + r"embeddings\.position_embeddings", "params/embed/pos_embedding"),
    Rule(_HF + r"embeddings\.mask_token", None),  # masked-image pre-training only
    *layer_norm(_HF_BLOCK + r"layernorm_before", _BLOCK + "/norm1"),
    *linear(_HF_BLOCK + r"attention\.self\.(query|key|value)", _BLOCK + r"/attn/\3"),
    Rule(_HF_BLOCK + r"attention\.self\.relative_position_bias_table", rf"params/{_BLOCK}/attn/rel_pos_embedding"),
    Rule(_HF_BLOCK + r"attention\.self\.relative_position_index", None),  # computed (older files hold it)
    *linear(_HF_BLOCK + r"attention\.output\.dense", _BLOCK + "/attn/out"),
    *layer_norm(_HF_BLOCK + r"layernorm_after", _BLOCK + "/norm2"),
    *linear(_HF_BLOCK + r"intermediate\.dense", _BLOCK + "/mlp/fc1"),
    *linear(_HF_BLOCK + r"output\.dense", _BLOCK + "/mlp/fc2"),
    *layer_norm(_HF + r"encoder\.layers\.(\d+)\.downsample\.norm", r"stage_\1/downsample/norm"),
    *linear(_HF + r"encoder\.layers\.(\d+)\.downsample\.reduction", r"stage_\1/downsample/reduction"),
    *layer_norm(_HF + r"layernorm", "norm"),
    *linear(r"classifier", "head"),
]


def hf_swin_fields(config: dict[str, Any], state: Mapping[str, Any]) -> dict[str, Any]:
    classifier = first_match(state, r"classifier\.weight")
    return {
        "patch_size": pair(config.get("patch_size", 4)),
        "embed_dim": config.get("embed_dim", 96),
        "depths": tuple(config.get("depths", (2, 2, 6, 2))),
        "num_heads": tuple(config.get("num_heads", (3, 6, 12, 24))),
        "window_size": config.get("window_size", 7),
        "mlp_ratio": config.get("mlp_ratio", 4.0),
        "image_size": pair(config.get("image_size", 224)),
        "num_channels": config.get("num_channels", 3),
        "qkv_bias": config.get("qkv_bias", True),
        "use_absolute_embeddings": config.get("use_absolute_embeddings", False),
        "gelu_approximate": hf_gelu_approximate(config),
        "layer_norm_eps": config.get("layer_norm_eps", 1e-5),
        "dropout_rate": config.get("hidden_dropout_prob", 0.0),
        "attention_dropout_rate": config.get("attention_probs_dropout_prob", 0.0),
        "drop_path_rate": config.get("drop_path_rate", 0.1),
        "num_classes": 0 if classifier is None else classifier.shape[0],
    }


def refuse_window_change(table: np.ndarray, target_shape: tuple) -> np.ndarray:
    """A relative position table for another window size: refused, as Hugging Face's Swin has no way to resize
    one (its tables load only at the window they were trained with)."""
    if tuple(table.shape) == tuple(target_shape):
        return table
    raise WeightLoadError(
        f"relative position bias table {tuple(table.shape)} -> {tuple(target_shape)}: Hugging Face's Swin cannot "
        "change the window size of a pretrained model; load it with the checkpoint's window_size"
    )


def _resizers(fields: dict[str, Any], source: dict[str, Any]) -> dict:
    """Absolute position embeddings (when the model has them) follow the image size as Hugging Face's
    ``interpolate_pos_encoding`` resamples them (PyTorch's bicubic); the patch embedding follows the input
    channels; the window size cannot change."""
    grid = patch_grid(fields.get("image_size", 224), fields.get("patch_size", 4))
    source_grid = patch_grid(source.get("image_size", 224), source.get("patch_size", 4))
    return {
        r"params/embed/pos_embedding": resample_pos_embedding(0, "bicubic", grid, source_grid),
        r"params/embed/patch/kernel": adapt_input_channels,
        r"params/stage_\d+/block_\d+/attn/rel_pos_embedding": refuse_window_change,
    }


# transformers v5's "swin" conversion mapping: the in-memory module names (see Layout.renames).
_SWIN_RENAMES = (
    (r"attention\.self\.query", "attention.q_proj"),
    (r"attention\.self\.key", "attention.k_proj"),
    (r"attention\.self\.value", "attention.v_proj"),
    (r"attention\.self\.relative_position_bias_table", "attention.relative_position_bias.relative_position_bias_table"),
    (r"attention\.output\.dense", "attention.o_proj"),
    (r"intermediate\.dense", "mlp.fc1"),
    (r"output\.dense", "mlp.fc2"),
)
HF_SWIN = Layout(
    "hf-swin", HF_SWIN_RULES, hf_swin_fields, model_types=("swin",), resizers=_resizers, renames=_SWIN_RENAMES
)
