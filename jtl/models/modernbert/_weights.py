"""The ModernBERT family's weight layout: Hugging Face ``modernbert`` (answerdotai/ModernBERT-*)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from jtl.weights import HEAD_AND_POOLER, Layout, Rule, WeightLoadError, first_match, layer_norm, linear

_HF = r"(?:model\.)?"
_HF_BLOCK = _HF + r"layers\.(\d+)\."
_FUSED = re.compile(r"(.*\.attn\.)Wqkv\.(weight|bias)")


def split_qkv(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Splits each block's fused ``attn.Wqkv`` (query, key and value stacked on the output axis) into
    ``attn.Wq``/``Wk``/``Wv``, so that the model keeps separate ``query``/``key``/``value`` layers (the names LoRA
    and masking rules target in every family).

    Args:
      state: ``{checkpoint key: array}``.

    Returns:
      The same tensors with the fused ones split.

    >>> sorted(split_qkv({"layers.0.attn.Wqkv.weight": np.zeros((6, 2))}))
    ['layers.0.attn.Wk.weight', 'layers.0.attn.Wq.weight', 'layers.0.attn.Wv.weight']
    """
    out = {}
    for key, array in state.items():
        match = _FUSED.fullmatch(key)
        if match is None:
            out[key] = array
            continue
        for name, part in zip("qkv", np.split(np.asarray(array), 3, axis=0), strict=True):
            out[f"{match.group(1)}W{name}.{match.group(2)}"] = part
    return out


HF_MODERNBERT_RULES = [
    Rule(_HF + r"embeddings\.tok_embeddings\.weight", "params/embed/word/embedding"),
    *layer_norm(_HF + r"embeddings\.norm", "embed/norm"),
    *linear(_HF_BLOCK + r"attn\.Wq", r"encoder/block_\1/attn/query"),
    *linear(_HF_BLOCK + r"attn\.Wk", r"encoder/block_\1/attn/key"),
    *linear(_HF_BLOCK + r"attn\.Wv", r"encoder/block_\1/attn/value"),
    *linear(_HF_BLOCK + r"attn\.Wo", r"encoder/block_\1/attn/out"),
    *layer_norm(_HF_BLOCK + r"attn_norm", r"encoder/block_\1/norm1"),
    *layer_norm(_HF_BLOCK + r"mlp_norm", r"encoder/block_\1/norm2"),
    *linear(_HF_BLOCK + r"mlp\.Wi", r"encoder/block_\1/mlp/fc1"),
    *linear(_HF_BLOCK + r"mlp\.Wo", r"encoder/block_\1/mlp/fc2"),
    *layer_norm(_HF + r"final_norm", "norm"),
    # The prediction head (masked LM and classifiers alike): Dense, activation, LayerNorm before the output layer.
    *linear(r"head\.dense", "pooler/dense"),
    *layer_norm(r"head\.norm", "pooler/norm"),
    *linear(r"classifier", "head"),
    Rule(r"decoder\.(?:weight|bias)", None),  # the masked-LM output layer (tied to the word embeddings)
]


def _rope_theta(config: dict[str, Any], kind: str, legacy: str, default: float) -> float:
    """A layer type's rope base from ``rope_parameters`` (transformers 5) or the older ``*_rope_theta``."""
    params = (config.get("rope_parameters") or {}).get(kind) or {}
    if params.get("rope_type", "default") != "default":
        raise WeightLoadError(f"config.json: rope_type={params['rope_type']!r} for {kind} is not supported")
    return float(params.get("rope_theta", config.get(legacy, default)))


def hf_modernbert_fields(config: dict[str, Any], state: Mapping[str, Any]) -> dict[str, Any]:
    if config.get("rope_scaling"):
        raise WeightLoadError(f"config.json: rope_scaling={config['rope_scaling']!r} is not supported")
    layers = config.get("num_hidden_layers", 22)
    every = config.get("global_attn_every_n_layers", 3)
    layer_types = config.get("layer_types") or [
        "sliding_attention" if i % every else "full_attention" for i in range(layers)
    ]
    classifier = first_match(state, r"classifier\.weight")
    return {
        "vocab_size": config.get("vocab_size", 50368),
        "hidden_size": config.get("hidden_size", 768),
        "num_layers": layers,
        "num_heads": config.get("num_attention_heads", 12),
        "intermediate_size": config.get("intermediate_size", 1152),
        "layer_types": tuple(layer_types),
        "global_attn_every_n_layers": every,
        "local_attention": config.get("local_attention", 128),
        "global_rope_theta": _rope_theta(config, "full_attention", "global_rope_theta", 160000.0),
        "local_rope_theta": _rope_theta(config, "sliding_attention", "local_rope_theta", 10000.0),
        "norm_eps": config.get("norm_eps", 1e-5),
        "norm_bias": config.get("norm_bias", False),
        "attention_bias": config.get("attention_bias", False),
        "mlp_bias": config.get("mlp_bias", False),
        "classifier_bias": config.get("classifier_bias", False),
        "hidden_act": config.get("hidden_activation", "gelu"),
        "classifier_act": config.get("classifier_activation", "gelu"),
        "embedding_dropout_rate": config.get("embedding_dropout", 0.0),
        "attention_dropout_rate": config.get("attention_dropout", 0.0),
        "mlp_dropout_rate": config.get("mlp_dropout", 0.0),
        "classifier_dropout_rate": config.get("classifier_dropout", 0.0),
        "pooling": config.get("classifier_pooling", "cls"),
        "num_classes": 0 if classifier is None else classifier.shape[0],
    }


# ModernBertModel has no head.dense/head.norm (jtl's pooler): the masked-LM and classifier models have them, so a
# masked-LM file keeps its own and a base model's gets a fresh one with a new head.
HF_MODERNBERT = Layout(
    "hf-modernbert",
    HF_MODERNBERT_RULES,
    hf_modernbert_fields,
    model_types=("modernbert",),
    prepare=split_qkv,
    classifier=HEAD_AND_POOLER,
)
