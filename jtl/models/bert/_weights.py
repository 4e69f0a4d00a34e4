"""The BERT family's weight layouts: Hugging Face BERT (bert-base-uncased, MiniLM, ...), RoBERTa / XLM-RoBERTa,
DistilBERT and ELECTRA (the discriminator)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

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


def _hf_rules(prefix: str, head: list[Rule], extra: Sequence[Rule] = ()) -> list[Rule]:
    """The encoder's table under a model prefix (``bert.``, ``roberta.``), then the model's own head rules."""
    block = prefix + r"encoder\.layer\.(\d+)\."
    return [
        *extra,
        Rule(prefix + r"embeddings\.word_embeddings\.weight", "params/embed/word/embedding"),
        Rule(prefix + r"embeddings\.position_embeddings\.weight", "params/embed/position/embedding"),
        Rule(prefix + r"embeddings\.token_type_embeddings\.weight", "params/embed/token_type/embedding"),
        Rule(prefix + r"embeddings\.(?:position_ids|token_type_ids)", None),
        *layer_norm(prefix + r"embeddings\.LayerNorm", "embed/norm"),
        *linear(block + r"attention\.self\.(query|key|value)", r"encoder/block_\1/attn/\2"),
        *linear(block + r"attention\.output\.dense", r"encoder/block_\1/attn/out"),
        *layer_norm(block + r"attention\.output\.LayerNorm", r"encoder/block_\1/norm1"),
        *linear(block + r"intermediate\.dense", r"encoder/block_\1/mlp/fc1"),
        *linear(block + r"output\.dense", r"encoder/block_\1/mlp/fc2"),
        *layer_norm(block + r"output\.LayerNorm", r"encoder/block_\1/norm2"),
        *linear(prefix + r"pooler\.dense", "pooler"),
        *head,
    ]


HF_BERT_RULES = _hf_rules(r"(?:bert\.)?", linear(r"classifier", "head"))
# RoBERTa's sequence-classification head (dense, tanh, out_proj on the first token) is BERT's pooler and head.
HF_ROBERTA_RULES = _hf_rules(
    r"(?:roberta\.)?", [*linear(r"classifier\.dense", "pooler"), *linear(r"classifier\.out_proj", "head")]
)


def hf_bert_fields(config: dict[str, Any], state: Mapping[str, Any], head: str = r"classifier") -> dict[str, Any]:
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise WeightLoadError(
            f"config.json: position_embedding_type={config['position_embedding_type']!r} is not supported"
        )
    classifier = first_match(state, head + r"\.weight")
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


def hf_roberta_fields(config: dict[str, Any], state: Mapping[str, Any]) -> dict[str, Any]:
    return {
        **hf_bert_fields(config, state, r"classifier\.out_proj"),
        "type_vocab_size": config.get("type_vocab_size", 1),
        "position_padding_idx": config.get("pad_token_id", 1),
        "layer_norm_eps": config.get("layer_norm_eps", 1e-5),
        "max_position_embeddings": config.get("max_position_embeddings", 514),
        "vocab_size": config.get("vocab_size", 50265),
    }


# RobertaForSequenceClassification has no base-model pooler, only its classifier.dense (jtl's pooler): a RoBERTa file
# without pooler.dense (saved from RobertaForMaskedLM) gets a fresh one with a new head, as that class does.
HF_ROBERTA = Layout(
    "hf-roberta",
    HF_ROBERTA_RULES,
    hf_roberta_fields,
    model_types=("roberta", "xlm-roberta"),
    classifier=HEAD_AND_POOLER,
)


_DISTILBERT_BLOCK = r"(?:distilbert\.)?transformer\.layer\.(\d+)\."
HF_DISTILBERT_RULES = [
    Rule(r"(?:distilbert\.)?embeddings\.word_embeddings\.weight", "params/embed/word/embedding"),
    Rule(r"(?:distilbert\.)?embeddings\.position_embeddings\.weight", "params/embed/position/embedding"),
    Rule(r"(?:distilbert\.)?embeddings\.position_ids", None),
    *layer_norm(r"(?:distilbert\.)?embeddings\.LayerNorm", "embed/norm"),
    *linear(_DISTILBERT_BLOCK + r"attention\.q_lin", r"encoder/block_\1/attn/query"),
    *linear(_DISTILBERT_BLOCK + r"attention\.k_lin", r"encoder/block_\1/attn/key"),
    *linear(_DISTILBERT_BLOCK + r"attention\.v_lin", r"encoder/block_\1/attn/value"),
    *linear(_DISTILBERT_BLOCK + r"attention\.out_lin", r"encoder/block_\1/attn/out"),
    *layer_norm(_DISTILBERT_BLOCK + r"sa_layer_norm", r"encoder/block_\1/norm1"),
    *linear(_DISTILBERT_BLOCK + r"ffn\.lin1", r"encoder/block_\1/mlp/fc1"),
    *linear(_DISTILBERT_BLOCK + r"ffn\.lin2", r"encoder/block_\1/mlp/fc2"),
    *layer_norm(_DISTILBERT_BLOCK + r"output_layer_norm", r"encoder/block_\1/norm2"),
    # The sequence classifier: ReLU(pre_classifier(first token)), then classifier; jtl's pooler and head.
    *linear(r"pre_classifier", "pooler"),
    *linear(r"classifier", "head"),
]


def hf_distilbert_fields(config: dict[str, Any], state: Mapping[str, Any]) -> dict[str, Any]:
    activation = config.get("activation", "gelu")
    try:
        gelu_approximate = hf_gelu_approximate({"hidden_act": activation})
    except WeightLoadError:
        raise WeightLoadError(f"config.json: activation={activation!r} is not supported (GELU variants only)") from None
    classifier = first_match(state, r"classifier\.weight")
    return {
        "vocab_size": config.get("vocab_size", 30522),
        "hidden_size": config.get("dim", 768),
        "num_layers": config.get("n_layers", 6),
        "num_heads": config.get("n_heads", 12),
        "intermediate_size": config.get("hidden_dim", 3072),
        "max_position_embeddings": config.get("max_position_embeddings", 512),
        "type_vocab_size": 0,
        "sinusoidal_positions": config.get("sinusoidal_pos_embds", False),
        "pooler_activation": "relu",
        "layer_norm_eps": 1e-12,  # fixed in DistilBERT's code
        "gelu_approximate": gelu_approximate,
        "dropout_rate": config.get("dropout", 0.1),
        "attention_dropout_rate": config.get("attention_dropout", 0.1),
        "num_classes": 0 if classifier is None else classifier.shape[0],
    }


# pre_classifier (jtl's pooler) exists only in DistilBertForSequenceClassification, not in DistilBertModel.
HF_DISTILBERT = Layout(
    "hf-distilbert",
    HF_DISTILBERT_RULES,
    hf_distilbert_fields,
    model_types=("distilbert",),
    classifier=HEAD_AND_POOLER,
)


# ELECTRA's discriminator is BERT with a projection from the embedding width (embeddings_project) and a
# classification head of dense, GELU, out_proj on the first token: jtl's pooler (GELU) and head.
HF_ELECTRA_RULES = _hf_rules(
    r"(?:electra\.)?",
    [*linear(r"classifier\.dense", "pooler"), *linear(r"classifier\.out_proj", "head")],
    linear(r"(?:electra\.)?embeddings_project", "embed/project"),
)


def hf_electra_fields(config: dict[str, Any], state: Mapping[str, Any]) -> dict[str, Any]:
    hidden, embedding = config.get("hidden_size", 256), config.get("embedding_size", 128)
    return {
        **hf_bert_fields(config, state, r"classifier\.out_proj"),
        "hidden_size": hidden,
        "embedding_size": None if embedding == hidden else embedding,
        "pooler_activation": "gelu",
        "num_heads": config.get("num_attention_heads", 4),
        "intermediate_size": config.get("intermediate_size", 1024),
    }


# ElectraModel has no pooler: classifier.dense (jtl's pooler) exists only in ElectraForSequenceClassification.
HF_ELECTRA = Layout(
    "hf-electra", HF_ELECTRA_RULES, hf_electra_fields, model_types=("electra",), classifier=HEAD_AND_POOLER
)
