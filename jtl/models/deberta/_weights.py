"""The DeBERTa family's weight layout: Hugging Face ``deberta-v2`` (microsoft/deberta-v3-*, deberta-v2-*)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from jtl.weights import (
    HEAD_AND_POOLER,
    Layout,
    Rule,
    WeightLoadError,
    first_match,
    hf_gelu_approximate,
    layer_norm,
    linear,
)


def _conv1d_to_flax(x: np.ndarray) -> np.ndarray:
    """PyTorch ``Conv1d`` (out, in / groups, width) -> Flax ``Conv`` (width, in / groups, out)."""
    return x.transpose(2, 1, 0)


def _conv1d_to_torch(x: np.ndarray, fields: Mapping[str, Any]) -> np.ndarray:
    del fields
    return x.transpose(2, 1, 0)


_HF = r"(?:deberta\.)?"
_HF_BLOCK = _HF + r"encoder\.layer\.(\d+)\."
HF_DEBERTA_V2_RULES = [
    Rule(_HF + r"embeddings\.word_embeddings\.weight", "params/embed/word/embedding"),
    Rule(_HF + r"embeddings\.position_embeddings\.weight", "params/embed/position/embedding"),
    Rule(_HF + r"embeddings\.token_type_embeddings\.weight", "params/embed/token_type/embedding"),
    *linear(_HF + r"embeddings\.embed_proj", "embed/proj"),  # no bias
    Rule(_HF + r"embeddings\.position_ids", None),
    *layer_norm(_HF + r"embeddings\.LayerNorm", "embed/norm"),
    Rule(_HF + r"encoder\.rel_embeddings\.weight", "params/encoder/rel_embeddings"),
    *layer_norm(_HF + r"encoder\.LayerNorm", "encoder/rel_norm"),
    Rule(
        _HF + r"encoder\.conv\.conv\.weight",
        "params/encoder/conv/conv/kernel",
        _conv1d_to_flax,
        inverse=_conv1d_to_torch,
    ),
    Rule(_HF + r"encoder\.conv\.conv\.bias", "params/encoder/conv/conv/bias"),
    *layer_norm(_HF + r"encoder\.conv\.LayerNorm", "encoder/conv/norm"),
    *linear(_HF_BLOCK + r"attention\.self\.(query|key|value)_proj", r"encoder/block_\1/attn/\2"),
    *linear(_HF_BLOCK + r"attention\.self\.pos_(query|key)_proj", r"encoder/block_\1/attn/pos_\2"),
    *linear(_HF_BLOCK + r"attention\.output\.dense", r"encoder/block_\1/attn/out"),
    *layer_norm(_HF_BLOCK + r"attention\.output\.LayerNorm", r"encoder/block_\1/norm1"),
    *linear(_HF_BLOCK + r"intermediate\.dense", r"encoder/block_\1/mlp/fc1"),
    *linear(_HF_BLOCK + r"output\.dense", r"encoder/block_\1/mlp/fc2"),
    *layer_norm(_HF_BLOCK + r"output\.LayerNorm", r"encoder/block_\1/norm2"),
    *linear(r"pooler\.dense", "pooler"),
    *linear(r"classifier", "head"),
    # The pre-training heads of the hub's checkpoints (masked LM, ELECTRA-style replaced-token detection).
    Rule(r"(?:lm_predictions|mask_predictions|cls)\..*", None),
]


def _pos_att_type(value: Any) -> tuple[str, ...]:
    """``config.json`` writes it as a list or as ``"p2c|c2p"``."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = value.lower().split("|")
    return tuple(kind.strip() for kind in value if kind.strip())


def hf_deberta_v2_fields(config: dict[str, Any], state: Mapping[str, Any]) -> dict[str, Any]:
    hidden = config.get("hidden_size", 1536)
    heads = config.get("num_attention_heads", 24)
    if config.get("attention_head_size", hidden // heads) * heads != hidden:
        raise WeightLoadError(f"config.json: attention_head_size={config['attention_head_size']} is not supported")
    norms = [x.strip() for x in str(config.get("norm_rel_ebd", "none")).lower().split("|")]
    if set(norms) - {"none", "layer_norm"}:
        raise WeightLoadError(f"config.json: norm_rel_ebd={config['norm_rel_ebd']!r} is not supported")
    pooler = config.get("pooler_hidden_size", hidden)
    if pooler != hidden:
        raise WeightLoadError(f"config.json: pooler_hidden_size={pooler} differs from hidden_size={hidden}")
    classifier = first_match(state, r"classifier\.weight")
    cls_dropout = config.get("cls_dropout")
    return {
        "vocab_size": config.get("vocab_size", 128100),
        "hidden_size": hidden,
        "num_layers": config.get("num_hidden_layers", 24),
        "num_heads": heads,
        "intermediate_size": config.get("intermediate_size", 6144),
        "embedding_size": None if config.get("embedding_size", hidden) == hidden else config["embedding_size"],
        "max_position_embeddings": config.get("max_position_embeddings", 512),
        "type_vocab_size": config.get("type_vocab_size", 0),
        "position_biased_input": config.get("position_biased_input", True),
        "relative_attention": config.get("relative_attention", False),
        "max_relative_positions": config.get("max_relative_positions", -1),
        "position_buckets": config.get("position_buckets", -1),
        "pos_att_type": _pos_att_type(config.get("pos_att_type")),
        "share_att_key": config.get("share_att_key", False),
        "rel_norm": "layer_norm" in norms,
        "conv_kernel_size": config.get("conv_kernel_size", 0),
        "conv_groups": config.get("conv_groups", 1),
        "conv_act": config.get("conv_act", "tanh"),
        "layer_norm_eps": config.get("layer_norm_eps", 1e-7),
        "gelu_approximate": hf_gelu_approximate(config),
        "pooler_act": config.get("pooler_hidden_act", "gelu"),
        "dropout_rate": config.get("hidden_dropout_prob", 0.1),
        "attention_dropout_rate": config.get("attention_probs_dropout_prob", 0.1),
        "pooler_dropout_rate": config.get("pooler_dropout", 0.0),
        "classifier_dropout_rate": config.get("hidden_dropout_prob", 0.1) if cls_dropout is None else cls_dropout,
        "num_classes": 0 if classifier is None else classifier.shape[0],
    }


# DebertaV2Model has no pooler: pooler.dense (a ContextPooler) exists only in DebertaV2ForSequenceClassification, so
# the hub's checkpoints (saved from the masked-LM model) get a fresh one with a new head.
HF_DEBERTA_V2 = Layout(
    "hf-deberta-v2",
    HF_DEBERTA_V2_RULES,
    hf_deberta_v2_fields,
    model_types=("deberta-v2",),
    classifier=HEAD_AND_POOLER,
)
