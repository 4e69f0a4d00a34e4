"""The ViT family's weight layouts: Hugging Face ViT/DeiT (distilled too), and big_vision/vit_jax ``.npz``
(exportable)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Mapping
from typing import Any

import numpy as np

from jtl.models._layers import pair, patch_grid
from jtl.models.vit._model import prefix_tokens
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


def _resizers(method: str) -> Callable[[dict[str, Any], dict[str, Any]], dict]:
    """Position embeddings follow the image size (a new patch grid) as the source's code resamples them, the
    class token's kept; the patch embedding follows the number of input channels."""

    def resizers(fields: dict[str, Any], source: dict[str, Any]) -> dict:
        prefix = prefix_tokens(fields.get("pooling", "cls"), fields.get("distillation_token", False))
        grid = patch_grid(fields.get("image_size", 224), fields.get("patch_size", 16))
        source_grid = patch_grid(source.get("image_size", 224), source.get("patch_size", 16))
        return {
            r"params/embed/pos_embedding": resample_pos_embedding(prefix, method, grid, source_grid),
            r"params/embed/patch/kernel": adapt_input_channels,
        }

    return resizers


# --- Hugging Face ViT / DeiT ------------------------------------------------------------------------------
_HF_VIT = r"(?:vit\.|deit\.)?"
_HF_VIT_BLOCK = _HF_VIT + r"encoder\.layer\.(\d+)\."
HF_VIT_RULES = [
    Rule(_HF_VIT + r"embeddings\.cls_token", "params/embed/cls"),
    Rule(_HF_VIT + r"embeddings\.distillation_token", "params/embed/dist"),
    Rule(_HF_VIT + r"embeddings\.position_embeddings", "params/embed/pos_embedding"),
    *conv(_HF_VIT + r"embeddings\.patch_embeddings\.projection", "embed/patch"),
    *linear(_HF_VIT_BLOCK + r"attention\.attention\.(query|key|value)", r"encoder/block_\1/attn/\2"),
    *linear(_HF_VIT_BLOCK + r"attention\.output\.dense", r"encoder/block_\1/attn/out"),
    *linear(_HF_VIT_BLOCK + r"intermediate\.dense", r"encoder/block_\1/mlp/fc1"),
    *linear(_HF_VIT_BLOCK + r"output\.dense", r"encoder/block_\1/mlp/fc2"),
    *layer_norm(_HF_VIT_BLOCK + r"layernorm_before", r"encoder/block_\1/norm1"),
    *layer_norm(_HF_VIT_BLOCK + r"layernorm_after", r"encoder/block_\1/norm2"),
    *layer_norm(_HF_VIT + r"layernorm", "norm"),
    *linear(_HF_VIT + r"pooler\.dense", "pre_logits"),
    *linear(r"classifier", "head"),
    # A distilled DeiT (DeiTForImageClassificationWithTeacher): two classifiers, averaged.
    *linear(r"cls_classifier", "head/cls"),
    *linear(r"distillation_classifier", "head/dist"),
]


def hf_vit_fields(config: dict[str, Any], state: Mapping[str, Any]) -> dict[str, Any]:
    classifier = first_match(state, r"(?:cls_)?classifier\.weight")
    distilled = first_match(state, r"cls_classifier\.weight") is not None
    pooler = first_match(state, _HF_VIT + r"pooler\.dense\.weight")
    return {
        "patch_size": pair(config.get("patch_size", 16)),
        "hidden_size": config.get("hidden_size", 768),
        "num_layers": config.get("num_hidden_layers", 12),
        "num_heads": config.get("num_attention_heads", 12),
        "mlp_dim": config.get("intermediate_size", 3072),
        "image_size": pair(config.get("image_size", 224)),
        "num_channels": config.get("num_channels", 3),
        "layer_norm_eps": config.get("layer_norm_eps", 1e-12),
        "gelu_approximate": hf_gelu_approximate(config),
        "dropout_rate": config.get("hidden_dropout_prob", 0.0),
        "attention_dropout_rate": config.get("attention_probs_dropout_prob", 0.0),
        "qkv_bias": config.get("qkv_bias", True),
        "distillation_token": any(k.endswith("embeddings.distillation_token") for k in state),
        "pooling": "cls+dist" if distilled else "cls",
        "pre_logits_size": None if pooler is None else pooler.shape[0],
        "num_classes": 0 if classifier is None else classifier.shape[0],
    }


# Hugging Face's ViT interpolates position embeddings bicubically (PyTorch's kernel) at a new resolution.
HF_VIT = Layout(
    "hf-vit",
    HF_VIT_RULES,
    hf_vit_fields,
    model_types=("vit", "deit"),
    resizers=_resizers("bicubic"),
    renames=VIT_MODULE_RENAMES,
)

# --- big_vision / vit_jax ViT .npz ------------------------------------------------------------------------
# Published vit_jax checkpoints name the block's layers LayerNorm_0, MultiHeadDotProductAttention_1,
# LayerNorm_2, MlpBlock_3; newer ones (and big_vision) LayerNorm_0, MultiHeadDotProductAttention_0,
# LayerNorm_1, MlpBlock_0. Both are accepted; export writes the newer names.
_BV_BLOCK = r"Transformer/encoderblock_(\d+)/"
_BV_ATTN = _BV_BLOCK + r"MultiHeadDotProductAttention_[01]/"
_BV_EXPORT_BLOCK = r"Transformer/encoderblock_\1/"


def _heads_to_width(x: np.ndarray) -> np.ndarray:
    """(D, heads, head_dim) -> (D, D) and (heads, head_dim) -> (D,)."""
    return x.reshape(*x.shape[:-2], -1)


def _width_to_heads(x: np.ndarray, fields: Mapping[str, Any]) -> np.ndarray:
    """(D, D) -> (D, heads, head_dim) and (D,) -> (heads, head_dim)."""
    return x.reshape(*x.shape[:-1], fields["num_heads"], -1)


def _out_to_width(x: np.ndarray) -> np.ndarray:
    """(heads, head_dim, D) -> (D, D)."""
    return x.reshape(-1, x.shape[-1])


def _width_to_out(x: np.ndarray, fields: Mapping[str, Any]) -> np.ndarray:
    """(D, D) -> (heads, head_dim, D)."""
    return x.reshape(fields["num_heads"], -1, x.shape[-1])


BIG_VISION_VIT_RULES = [
    Rule(r"embedding/(kernel|bias)", r"params/embed/patch/\1"),
    Rule(r"cls", "params/embed/cls"),
    Rule(r"(?:Transformer/posembed_input/)?pos_embedding", "params/embed/pos_embedding", export="pos_embedding"),
    Rule(_BV_BLOCK + r"LayerNorm_0/(scale|bias)", r"params/encoder/block_\1/norm1/\2"),
    Rule(
        _BV_BLOCK + r"LayerNorm_[12]/(scale|bias)",
        r"params/encoder/block_\1/norm2/\2",
        export=_BV_EXPORT_BLOCK + r"LayerNorm_1/\2",
    ),
    Rule(
        _BV_ATTN + r"(query|key|value)/(kernel|bias)",
        r"params/encoder/block_\1/attn/\2/\3",
        _heads_to_width,
        export=_BV_EXPORT_BLOCK + r"MultiHeadDotProductAttention_0/\2/\3",
        inverse=_width_to_heads,
    ),
    Rule(
        _BV_ATTN + r"out/kernel",
        r"params/encoder/block_\1/attn/out/kernel",
        _out_to_width,
        export=_BV_EXPORT_BLOCK + r"MultiHeadDotProductAttention_0/out/kernel",
        inverse=_width_to_out,
    ),
    Rule(
        _BV_ATTN + r"out/bias",
        r"params/encoder/block_\1/attn/out/bias",
        export=_BV_EXPORT_BLOCK + r"MultiHeadDotProductAttention_0/out/bias",
    ),
    *(
        Rule(
            _BV_BLOCK + rf"MlpBlock_[03]/Dense_{i}/(kernel|bias)",
            rf"params/encoder/block_\1/mlp/fc{i + 1}/\2",
            export=_BV_EXPORT_BLOCK + rf"MlpBlock_0/Dense_{i}/\2",
        )
        for i in range(2)
    ),
    Rule(r"Transformer/encoder_norm/(scale|bias)", r"params/norm/\1"),
    Rule(r"pre_logits/(kernel|bias)", r"params/pre_logits/\1"),
    Rule(r"head/(kernel|bias)", r"params/head/\1"),
]


def unstack_scanned_blocks(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """big_vision's ``scan=True`` stores all blocks stacked under ``Transformer/encoderblock/``; split them."""
    stacked = {k: v for k, v in state.items() if k.startswith("Transformer/encoderblock/")}
    if not stacked:
        return state
    out = {k: v for k, v in state.items() if k not in stacked}
    for key, value in stacked.items():
        rest = key.removeprefix("Transformer/encoderblock/")
        for i in range(value.shape[0]):
            out[f"Transformer/encoderblock_{i}/{rest}"] = value[i]
    return out


def big_vision_vit_fields(config: dict[str, Any], state: Mapping[str, Any]) -> dict[str, Any]:
    del config
    if any(k.startswith("MAPHead") for k in state):
        raise WeightLoadError("big_vision ViTs with MAP pooling (MAPHead_*) are not supported")
    kernel = state.get("embedding/kernel")
    query = first_match(state, _BV_ATTN + r"query/kernel")
    fc1 = first_match(state, _BV_BLOCK + r"MlpBlock_[03]/Dense_0/kernel")
    pos = first_match(state, r"(?:Transformer/posembed_input/)?pos_embedding")
    if kernel is None or query is None or fc1 is None or pos is None:
        raise WeightLoadError(
            "not a big_vision/vit_jax ViT: expected 'embedding/kernel', 'pos_embedding' and "
            "'Transformer/encoderblock_*' keys"
        )
    depth = len({m.group(1) for k in state if (m := re.match(_BV_BLOCK, k))})
    pooling = "cls" if "cls" in state else "gap"
    grid = pos.shape[1] - (1 if pooling == "cls" else 0)
    head = state.get("head/kernel")
    return {
        "patch_size": kernel.shape[0],
        "num_channels": kernel.shape[2],
        "hidden_size": kernel.shape[3],
        "num_layers": depth,
        "num_heads": query.shape[1],
        "mlp_dim": fc1.shape[1],
        "image_size": math.isqrt(grid) * kernel.shape[0],
        "pooling": pooling,
        "pre_logits_size": state["pre_logits/kernel"].shape[1] if "pre_logits/kernel" in state else None,
        "num_classes": 0 if head is None else head.shape[1],
        "gelu_approximate": True,
        "layer_norm_eps": 1e-6,
    }


def is_big_vision_vit(keys: Collection[str]) -> bool:
    """A vit_jax/big_vision ViT: the patch embedding and the encoder blocks (one per block, or scanned)."""
    return "embedding/kernel" in keys and any(k.startswith("Transformer/encoderblock") for k in keys)


BIG_VISION_VIT = Layout(
    "big_vision-vit",
    BIG_VISION_VIT_RULES,
    big_vision_vit_fields,
    detect=is_big_vision_vit,
    resizers=_resizers("bilinear"),
    prepare=unstack_scanned_blocks,
)
