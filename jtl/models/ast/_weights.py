"""The AST family's weight layout: Hugging Face ``audio-spectrogram-transformer`` (MIT/ast-finetuned-*)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jtl.weights import (
    VIT_MODULE_RENAMES,
    Layout,
    Rule,
    WeightLoadError,
    conv,
    first_match,
    hf_gelu_approximate,
    layer_norm,
    linear,
)

_HF = r"(?:audio_spectrogram_transformer\.)?"
_HF_BLOCK = _HF + r"encoder\.layer\.(\d+)\."
HF_AST_RULES = [
    Rule(_HF + r"embeddings\.cls_token", "params/embed/cls"),
    Rule(_HF + r"embeddings\.distillation_token", "params/embed/dist"),
    Rule(_HF + r"embeddings\.position_embeddings", "params/embed/pos_embedding"),
    *conv(_HF + r"embeddings\.patch_embeddings\.projection", "embed/patch"),
    *layer_norm(_HF_BLOCK + r"layernorm_before", r"encoder/block_\1/norm1"),
    *linear(_HF_BLOCK + r"attention\.attention\.(query|key|value)", r"encoder/block_\1/attn/\2"),
    *linear(_HF_BLOCK + r"attention\.output\.dense", r"encoder/block_\1/attn/out"),
    *layer_norm(_HF_BLOCK + r"layernorm_after", r"encoder/block_\1/norm2"),
    *linear(_HF_BLOCK + r"intermediate\.dense", r"encoder/block_\1/mlp/fc1"),
    *linear(_HF_BLOCK + r"output\.dense", r"encoder/block_\1/mlp/fc2"),
    *layer_norm(_HF + r"layernorm", "norm"),
    *layer_norm(r"classifier\.layernorm", "head_norm"),
    *linear(r"classifier\.dense", "head"),
]


def hf_ast_fields(config: dict[str, Any], state: Mapping[str, Any]) -> dict[str, Any]:
    patch = config.get("patch_size", 16)
    if not isinstance(patch, int):
        if len(set(patch)) != 1:
            raise WeightLoadError(f"config.json: patch_size={patch!r}: only square patches are supported")
        patch = int(patch[0])
    classifier = first_match(state, r"classifier\.dense\.weight")
    return {
        "patch_size": patch,
        "frequency_stride": config.get("frequency_stride", 10),
        "time_stride": config.get("time_stride", 10),
        "max_length": config.get("max_length", 1024),
        "num_mel_bins": config.get("num_mel_bins", 128),
        "hidden_size": config.get("hidden_size", 768),
        "num_layers": config.get("num_hidden_layers", 12),
        "num_heads": config.get("num_attention_heads", 12),
        "mlp_dim": config.get("intermediate_size", 3072),
        "qkv_bias": config.get("qkv_bias", True),
        "gelu_approximate": hf_gelu_approximate(config),
        "layer_norm_eps": config.get("layer_norm_eps", 1e-12),
        "dropout_rate": config.get("hidden_dropout_prob", 0.0),
        "attention_dropout_rate": config.get("attention_probs_dropout_prob", 0.0),
        "num_classes": 0 if classifier is None else classifier.shape[0],
    }


# No resizers: Hugging Face's AST does not interpolate its position embeddings, so max_length and num_mel_bins
# are the checkpoint's.
HF_AST = Layout(
    "hf-ast",
    HF_AST_RULES,
    hf_ast_fields,
    model_types=("audio-spectrogram-transformer",),
    renames=VIT_MODULE_RENAMES,
)
