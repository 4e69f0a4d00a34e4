"""The ALBERT family's weight layout: Hugging Face ``albert`` (albert-base-v2, ...)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from jtl.weights import Layout, Rule, WeightLoadError, first_match, hf_gelu_approximate, layer_norm, linear

_PREFIX = r"(?:albert\.)?"


def hf_albert_rules(state: Mapping[str, Any]) -> list[Rule]:
    """The table for these tensors: group ``g``'s layer ``j`` is ``encoder/block_{g * inner_group_num + j}``, with
    the groups and ``inner_group_num`` read from the keys."""
    found = [re.search(r"albert_layer_groups\.(\d+)\.albert_layers\.(\d+)\.", key) for key in state]
    pairs = {(int(m.group(1)), int(m.group(2))) for m in found if m}
    groups, inner = (1 + max(g for g, _ in pairs), 1 + max(j for _, j in pairs)) if pairs else (0, 0)
    blocks = []
    for g in range(groups):
        for j in range(inner):
            source = _PREFIX + rf"encoder\.albert_layer_groups\.{g}\.albert_layers\.{j}\."
            target = f"encoder/block_{g * inner + j}"
            blocks += [
                *linear(source + r"attention\.(query|key|value)", target + r"/attn/\1"),
                *linear(source + r"attention\.dense", target + "/attn/out"),
                *layer_norm(source + r"attention\.LayerNorm", target + "/norm1"),
                *linear(source + r"ffn", target + "/mlp/fc1"),
                *linear(source + r"ffn_output", target + "/mlp/fc2"),
                *layer_norm(source + r"full_layer_layer_norm", target + "/norm2"),
            ]
    return [
        Rule(_PREFIX + r"embeddings\.word_embeddings\.weight", "params/embed/word/embedding"),
        Rule(_PREFIX + r"embeddings\.position_embeddings\.weight", "params/embed/position/embedding"),
        Rule(_PREFIX + r"embeddings\.token_type_embeddings\.weight", "params/embed/token_type/embedding"),
        Rule(_PREFIX + r"embeddings\.(?:position_ids|token_type_ids)", None),
        *layer_norm(_PREFIX + r"embeddings\.LayerNorm", "embed/norm"),
        *linear(_PREFIX + r"encoder\.embedding_hidden_mapping_in", "embed/project"),
        *blocks,
        *linear(_PREFIX + r"pooler", "pooler"),
        *linear(r"classifier", "head"),
    ]


def hf_albert_fields(config: dict[str, Any], state: Mapping[str, Any]) -> dict[str, Any]:
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise WeightLoadError(
            f"config.json: position_embedding_type={config['position_embedding_type']!r} is not supported"
        )
    classifier = first_match(state, r"classifier\.weight")
    return {
        "vocab_size": config.get("vocab_size", 30000),
        "embedding_size": config.get("embedding_size", 128),
        "hidden_size": config.get("hidden_size", 4096),
        "num_layers": config.get("num_hidden_layers", 12),
        "num_hidden_groups": config.get("num_hidden_groups", 1),
        "inner_group_num": config.get("inner_group_num", 1),
        "num_heads": config.get("num_attention_heads", 64),
        "intermediate_size": config.get("intermediate_size", 16384),
        "max_position_embeddings": config.get("max_position_embeddings", 512),
        "type_vocab_size": config.get("type_vocab_size", 2),
        "layer_norm_eps": config.get("layer_norm_eps", 1e-12),
        "gelu_approximate": hf_gelu_approximate({"hidden_act": config.get("hidden_act", "gelu_new")}),
        "dropout_rate": config.get("hidden_dropout_prob", 0.0),
        "attention_dropout_rate": config.get("attention_probs_dropout_prob", 0.0),
        "classifier_dropout_rate": config.get("classifier_dropout_prob", 0.1),
        "num_classes": 0 if classifier is None else classifier.shape[0],
    }


HF_ALBERT = Layout("hf-albert", hf_albert_rules, hf_albert_fields, model_types=("albert",))
