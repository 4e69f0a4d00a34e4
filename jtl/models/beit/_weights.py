"""The BEiT family's weight layout: Hugging Face ``beit`` (microsoft/beit-*), as ``save_pretrained`` writes it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from jtl.models._layers import pair, patch_grid
from jtl.weights import (
    VIT_MODULE_RENAMES,
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

_HF = r"(?:beit\.)?"
_HF_BLOCK = _HF + r"encoder\.layer\.(\d+)\."
_TABLE = r"relative_position_bias\.relative_position_bias_table"
HF_BEIT_RULES = [
    Rule(_HF + r"embeddings\.cls_token", "params/embed/cls"),
    Rule(_HF + r"embeddings\.position_embeddings", "params/embed/pos_embedding"),
    Rule(_HF + r"embeddings\.mask_token", None),  # masked-image pre-training only
    *conv(_HF + r"embeddings\.patch_embeddings\.projection", "embed/patch"),
    Rule(_HF + r"encoder\." + _TABLE, "params/embed/rel_pos_embedding"),
    Rule(_HF + r".*relative_position_index", None),  # computed (older files hold it)
    *layer_norm(_HF_BLOCK + r"layernorm_before", r"encoder/block_\1/norm1"),
    *linear(_HF_BLOCK + r"attention\.attention\.(query|key|value)", r"encoder/block_\1/attn/\2"),
    Rule(_HF_BLOCK + r"attention\.attention\." + _TABLE, r"params/encoder/block_\1/attn/rel_pos_embedding"),
    *linear(_HF_BLOCK + r"attention\.output\.dense", r"encoder/block_\1/attn/out"),
    Rule(_HF_BLOCK + r"lambda_([12])", r"params/encoder/block_\1/scale\2/scale"),
    *layer_norm(_HF_BLOCK + r"layernorm_after", r"encoder/block_\1/norm2"),
    *linear(_HF_BLOCK + r"intermediate\.dense", r"encoder/block_\1/mlp/fc1"),
    *linear(_HF_BLOCK + r"output\.dense", r"encoder/block_\1/mlp/fc2"),
    # Mean pooling normalises the pooled mean (the pooler's norm), else the tokens (the model's): one ``norm``.
    *layer_norm(_HF + r"(?:pooler\.)?layernorm", "norm"),
    *linear(r"classifier", "head"),
]


def hf_beit_fields(config: dict[str, Any], state: Mapping[str, Any]) -> dict[str, Any]:
    classifier = first_match(state, r"classifier\.weight")
    layer_scale = config.get("layer_scale_init_value", 0.1)
    return {
        "patch_size": pair(config.get("patch_size", 16)),
        "hidden_size": config.get("hidden_size", 768),
        "num_layers": config.get("num_hidden_layers", 12),
        "num_heads": config.get("num_attention_heads", 12),
        "mlp_dim": config.get("intermediate_size", 3072),
        "image_size": pair(config.get("image_size", 224)),
        "num_channels": config.get("num_channels", 3),
        "absolute_position_embeddings": config.get("use_absolute_position_embeddings", False),
        "relative_position_bias": config.get("use_relative_position_bias", False),
        "shared_relative_position_bias": config.get("use_shared_relative_position_bias", False),
        "layer_scale": layer_scale if layer_scale > 0 else None,
        "mean_pooling": config.get("use_mean_pooling", True),
        "gelu_approximate": hf_gelu_approximate(config),
        "layer_norm_eps": config.get("layer_norm_eps", 1e-12),
        "dropout_rate": config.get("hidden_dropout_prob", 0.0),
        "attention_dropout_rate": config.get("attention_probs_dropout_prob", 0.0),
        "drop_path_rate": config.get("drop_path_rate", 0.1),
        "num_classes": 0 if classifier is None else classifier.shape[0],
    }


def _bilinear_weights(n_in: int, n_out: int) -> np.ndarray:
    """The (n_out, n_in) matrix of PyTorch's ``F.interpolate(mode="bilinear", align_corners=False)`` along one
    axis: source coordinates ``(i + 0.5) * n_in / n_out - 0.5`` clamped at 0, two taps, the upper one clamped."""
    source = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    low = np.floor(source).astype(np.int64)
    high = np.minimum(low + 1, n_in - 1)
    matrix = np.zeros((n_out, n_in))
    np.add.at(matrix, (np.arange(n_out), low), 1.0 - (source - low))
    np.add.at(matrix, (np.arange(n_out), high), source - low)
    return matrix


def resize_relative_position_table(grid: tuple[int, int]):
    """Resizes a BEiT relative position table to a new patch grid as Hugging Face's ``BeitRelativePositionBias``
    does on every call at another resolution: the (2 rows - 1) x (2 columns - 1) offsets bilinearly interpolated
    (PyTorch's, ``align_corners=False``), the three class-token entries kept.

    Args:
      grid: the new patch grid (rows, columns).

    Returns:
      ``resize(table (M, heads), target_shape) -> ((2 rows - 1) (2 columns - 1) + 3, heads)``.

    >>> resize = resize_relative_position_table((3, 3))
    >>> resize(np.ones((3 * 3 + 3, 2), np.float32), (5 * 5 + 3, 2)).shape
    (28, 2)
    """
    rows, columns = 2 * grid[0] - 1, 2 * grid[1] - 1

    def resize(table: np.ndarray, target_shape: tuple) -> np.ndarray:
        side = math.isqrt(table.shape[0] - 3)
        if side * side != table.shape[0] - 3 or rows * columns + 3 != target_shape[0]:
            raise WeightLoadError(
                f"relative position table {tuple(table.shape)} -> {tuple(target_shape)}: the source's grid must be "
                f"square and the target's {grid[0]}x{grid[1]}"
            )
        if side == rows == columns:
            return table
        # Hugging Face reads the offsets as (columns, rows), which a square source makes the same.
        offsets = np.asarray(table[:-3], np.float64).reshape(side, side, -1)
        resized = np.einsum("oh,hwc,pw->opc", _bilinear_weights(side, rows), offsets, _bilinear_weights(side, columns))
        return np.concatenate([resized.reshape(rows * columns, -1), table[-3:]]).astype(np.float32)

    return resize


def _resizers(fields: dict[str, Any], source: dict[str, Any]) -> dict:
    """Position embeddings and relative position tables follow the image size as Hugging Face resamples them at
    another resolution; the patch embedding follows the number of input channels."""
    grid = patch_grid(fields.get("image_size", 224), fields.get("patch_size", 16))
    source_grid = patch_grid(source.get("image_size", 224), source.get("patch_size", 16))
    return {
        r"params/embed/pos_embedding": resample_pos_embedding(1, "bicubic", grid, source_grid),
        r"params/(?:embed|encoder/block_\d+/attn)/rel_pos_embedding": resize_relative_position_table(grid),
        r"params/embed/patch/kernel": adapt_input_channels,
    }


# transformers v5 also moves BEiT's relative position tables (its "beit" conversion mapping after the ViT one).
_BEIT_RENAMES = (
    *VIT_MODULE_RENAMES,
    (r"encoder\.relative_position_bias", "shared_position_bias"),
    (
        r"attention\.attention\.relative_position_bias\.relative_position_bias_table",
        "relative_position_bias.relative_position_bias_table",
    ),
)
HF_BEIT = Layout(
    "hf-beit", HF_BEIT_RULES, hf_beit_fields, model_types=("beit",), resizers=_resizers, renames=_BEIT_RENAMES
)
