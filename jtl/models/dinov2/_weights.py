"""The DINOv2 family's weight layout: Hugging Face ``dinov2`` and ``dinov2_with_registers`` (facebook/dinov2-*)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from jtl.models._layers import pair, patch_grid
from jtl.weights import (
    Layout,
    Rule,
    adapt_input_channels,
    conv,
    first_match,
    hf_gelu_approximate,
    layer_norm,
    linear,
    resample_pos_embedding,
)

_HF = r"(?:dinov2\.|dinov2_with_registers\.)?"
_HF_BLOCK = _HF + r"encoder\.layer\.(\d+)\."
HF_DINOV2_RULES = [
    Rule(_HF + r"embeddings\.cls_token", "params/embed/cls"),
    Rule(_HF + r"embeddings\.register_tokens", "params/embed/registers"),
    Rule(_HF + r"embeddings\.position_embeddings", "params/embed/pos_embedding"),
    Rule(_HF + r"embeddings\.mask_token", None),  # masked-image pre-training only
    *conv(_HF + r"embeddings\.patch_embeddings\.projection", "embed/patch"),
    *layer_norm(_HF_BLOCK + r"norm1", r"encoder/block_\1/norm1"),
    *linear(_HF_BLOCK + r"attention\.attention\.(query|key|value)", r"encoder/block_\1/attn/\2"),
    *linear(_HF_BLOCK + r"attention\.output\.dense", r"encoder/block_\1/attn/out"),
    Rule(_HF_BLOCK + r"layer_scale([12])\.lambda1", r"params/encoder/block_\1/scale\2/scale"),
    *layer_norm(_HF_BLOCK + r"norm2", r"encoder/block_\1/norm2"),
    # The MLP, or the SwiGLU feed-forward whose first layer gives the gate and the value side by side.
    *linear(_HF_BLOCK + r"mlp\.(?:fc1|weights_in)", r"encoder/block_\1/mlp/fc1"),
    *linear(_HF_BLOCK + r"mlp\.(?:fc2|weights_out)", r"encoder/block_\1/mlp/fc2"),
    *layer_norm(_HF + r"layernorm", "norm"),
    *linear(r"classifier", "head"),
]


def hf_dinov2_fields(config: dict[str, Any], state: Mapping[str, Any]) -> dict[str, Any]:
    hidden = config.get("hidden_size", 768)
    fc2 = first_match(state, _HF_BLOCK + r"mlp\.(?:fc2|weights_out)\.weight")
    classifier = first_match(state, r"classifier\.weight")
    return {
        "patch_size": pair(config.get("patch_size", 14)),
        "hidden_size": hidden,
        "num_layers": config.get("num_hidden_layers", 12),
        "num_heads": config.get("num_attention_heads", 12),
        # The MLP's width from the tensors: SwiGLU's is two thirds of mlp_ratio's, rounded up to a multiple of 8.
        "mlp_dim": int(hidden * config.get("mlp_ratio", 4)) if fc2 is None else fc2.shape[1],
        "image_size": pair(config.get("image_size", 518)),
        "num_channels": config.get("num_channels", 3),
        "num_registers": config.get("num_register_tokens", 0),
        "layer_scale": config.get("layerscale_value", 1.0),
        "swiglu": config.get("use_swiglu_ffn", False),
        "qkv_bias": config.get("qkv_bias", True),
        "gelu_approximate": hf_gelu_approximate(config),
        "layer_norm_eps": config.get("layer_norm_eps", 1e-6),
        "dropout_rate": config.get("hidden_dropout_prob", 0.0),
        "attention_dropout_rate": config.get("attention_probs_dropout_prob", 0.0),
        "drop_path_rate": config.get("drop_path_rate", 0.0),
        "num_classes": 0 if classifier is None else classifier.shape[0],
    }


def _resizers(method: str) -> Callable[[dict[str, Any], dict[str, Any]], dict]:
    """Position embeddings follow the image size as Hugging Face interpolates them, the class token's kept; the
    patch embedding follows the number of input channels."""

    def resizers(fields: dict[str, Any], source: dict[str, Any]) -> dict:
        grid = patch_grid(fields.get("image_size", 518), fields.get("patch_size", 14))
        source_grid = patch_grid(source.get("image_size", 518), source.get("patch_size", 14))
        return {
            r"params/embed/pos_embedding": resample_pos_embedding(1, method, grid, source_grid),
            r"params/embed/patch/kernel": adapt_input_channels,
        }

    return resizers


# The two share names and fields, not the interpolation: Hugging Face's DINOv2 with registers resamples its
# position embeddings with antialiasing, plain DINOv2 without.
# transformers v5's "dinov2" conversion mapping: the in-memory module names (see Layout.renames). Its SwiGLU
# ``weights_in`` is split in memory, not renamed: no module there carries that name.
_DINOV2_RENAMES = (
    (r"attention\.attention\.query", "attention.q_proj"),
    (r"attention\.attention\.key", "attention.k_proj"),
    (r"attention\.attention\.value", "attention.v_proj"),
    (r"attention\.output\.dense", "attention.o_proj"),
    (r"mlp\.weights_out", "mlp.down_proj"),
)
HF_DINOV2 = Layout(
    "hf-dinov2",
    HF_DINOV2_RULES,
    hf_dinov2_fields,
    model_types=("dinov2",),
    resizers=_resizers("bicubic"),
    renames=_DINOV2_RENAMES,
)
HF_DINOV2_REGISTERS = Layout(
    "hf-dinov2-registers",
    HF_DINOV2_RULES,
    hf_dinov2_fields,
    model_types=("dinov2_with_registers",),
    resizers=_resizers("bicubic-antialias"),
    renames=_DINOV2_RENAMES,
)
