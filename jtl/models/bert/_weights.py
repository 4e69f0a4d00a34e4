"""The BERT family's weight layout: Hugging Face BERT (bert-base-uncased, MiniLM, ...)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jtl.weights import Layout, Rule, WeightLoadError, first_match, hf_gelu_approximate, layer_norm, linear

_HF_BERT = r"(?:bert\.)?"
_HF_BERT_BLOCK = _HF_BERT + r"encoder\.layer\.(\d+)\."
HF_BERT_RULES = [
    Rule(_HF_BERT + r"embeddings\.word_embeddings\.weight", "params/embed/word/embedding"),
    Rule(_HF_BERT + r"embeddings\.position_embeddings\.weight", "params/embed/position/embedding"),
    Rule(_HF_BERT + r"embeddings\.token_type_embeddings\.weight", "params/embed/token_type/embedding"),
    Rule(_HF_BERT + r"embeddings\.position_ids", None),
    *layer_norm(_HF_BERT + r"embeddings\.LayerNorm", "embed/norm"),
    *linear(_HF_BERT_BLOCK + r"attention\.self\.(query|key|value)", r"encoder/block_\1/attn/\2"),
    *linear(_HF_BERT_BLOCK + r"attention\.output\.dense", r"encoder/block_\1/attn/out"),
    *layer_norm(_HF_BERT_BLOCK + r"attention\.output\.LayerNorm", r"encoder/block_\1/norm1"),
    *linear(_HF_BERT_BLOCK + r"intermediate\.dense", r"encoder/block_\1/mlp/fc1"),
    *linear(_HF_BERT_BLOCK + r"output\.dense", r"encoder/block_\1/mlp/fc2"),
    *layer_norm(_HF_BERT_BLOCK + r"output\.LayerNorm", r"encoder/block_\1/norm2"),
    *linear(_HF_BERT + r"pooler\.dense", "pooler"),
    *linear(r"classifier", "head"),
]


def hf_bert_fields(config: dict[str, Any], state: Mapping[str, Any]) -> dict[str, Any]:
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise WeightLoadError(
            f"config.json: position_embedding_type={config['position_embedding_type']!r} is not supported"
        )
    classifier = first_match(state, r"classifier\.weight")
    return {
        "vocab_size": config.get("vocab_size", 30522),
        "hidden_size": config.get("hidden_size", 768),
        "num_layers": config.get("num_hidden_layers", 12),
        "num_heads": config.get("num_attention_heads", 12),
        "intermediate_size": config.get("intermediate_size", 3072),
        "max_position_embeddings": config.get("max_position_embeddings", 512),
        "type_vocab_size": config.get("type_vocab_size", 2),
        "layer_norm_eps": config.get("layer_norm_eps", 1e-12),
        "gelu_approximate": hf_gelu_approximate(config),
        "dropout_rate": config.get("hidden_dropout_prob", 0.1),
        "attention_dropout_rate": config.get("attention_probs_dropout_prob", 0.1),
        "num_classes": 0 if classifier is None else classifier.shape[0],
    }


HF_BERT = Layout("hf-bert", HF_BERT_RULES, hf_bert_fields, model_types=("bert",))
