"""The Wav2Vec2 family's weight layouts: Hugging Face ``wav2vec2`` (facebook/wav2vec2-*) and ``hubert``
(facebook/hubert-*), which share their names."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from jtl.weights import Layout, Rule, WeightLoadError, first_match, hf_gelu_approximate, layer_norm, linear


def _conv1d(x: np.ndarray) -> np.ndarray:
    """PyTorch ``Conv1d`` (out, in, width) -> Flax (width, in, out)."""
    return x.transpose(2, 1, 0)


def _weight_g(x: np.ndarray) -> np.ndarray:
    """PyTorch's weight-norm magnitude (1, 1, width), one per kernel position -> (width,)."""
    return x.reshape(-1)


_HF = r"(?:wav2vec2\.|hubert\.)?"
_HF_BLOCK = _HF + r"encoder\.layers\.(\d+)\."
_POS = _HF + r"encoder\.pos_conv_embed\.conv\."
HF_WAV2VEC2_RULES = [
    Rule(_HF + r"feature_extractor\.conv_layers\.(\d+)\.conv\.weight", r"params/embed/conv_\1/kernel", _conv1d),
    Rule(_HF + r"feature_extractor\.conv_layers\.(\d+)\.conv\.bias", r"params/embed/conv_\1/bias"),
    *layer_norm(_HF + r"feature_extractor\.conv_layers\.(\d+)\.layer_norm", r"embed/norm_\1"),
    *layer_norm(_HF + r"feature_projection\.layer_norm", "embed/proj_norm"),
    *linear(_HF + r"feature_projection\.projection", "embed/proj"),
    # The weight-normalised positional convolution, saved under the old (weight_g/weight_v) or the
    # parametrizations (original0/original1) names; the model computes the kernel from the two.
    Rule(_POS + r"(?:weight_g|parametrizations\.weight\.original0)", "params/embed/pos_conv/weight_g", _weight_g),
    Rule(_POS + r"(?:weight_v|parametrizations\.weight\.original1)", "params/embed/pos_conv/weight_v", _conv1d),
    Rule(_POS + r"bias", "params/embed/pos_conv/bias"),
    *linear(_HF_BLOCK + r"attention\.q_proj", r"encoder/block_\1/attn/query"),
    *linear(_HF_BLOCK + r"attention\.k_proj", r"encoder/block_\1/attn/key"),
    *linear(_HF_BLOCK + r"attention\.v_proj", r"encoder/block_\1/attn/value"),
    *linear(_HF_BLOCK + r"attention\.out_proj", r"encoder/block_\1/attn/out"),
    *layer_norm(_HF_BLOCK + r"layer_norm", r"encoder/block_\1/norm1"),
    *linear(_HF_BLOCK + r"feed_forward\.intermediate_dense", r"encoder/block_\1/mlp/fc1"),
    *linear(_HF_BLOCK + r"feed_forward\.output_dense", r"encoder/block_\1/mlp/fc2"),
    *layer_norm(_HF_BLOCK + r"final_layer_norm", r"encoder/block_\1/norm2"),
    *layer_norm(_HF + r"encoder\.layer_norm", "norm"),
    *linear(r"projector", "head/projector"),
    *linear(r"classifier", "head/classifier"),
    # Pre-training only: the masked-frame embedding, the quantizer and the contrastive projections.
    Rule(_HF + r"masked_spec_embed", None),
    Rule(r"(?:quantizer|project_hid|project_q)\..*", None),
]


def hf_wav2vec2_fields(config: dict[str, Any], state: Mapping[str, Any]) -> dict[str, Any]:
    for unsupported in ("use_weighted_layer_sum", "conv_pos_batch_norm", "add_adapter"):
        if config.get(unsupported):
            raise WeightLoadError(f"config.json: {unsupported}=True is not supported")
    feat_act = config.get("feat_extract_activation", "gelu")
    if feat_act not in ("gelu", "gelu_new", "gelu_python", "gelu_pytorch_tanh"):
        raise WeightLoadError(f"config.json: feat_extract_activation={feat_act!r} is not supported (GELU only)")
    classifier = first_match(state, r"classifier\.weight")
    projector = first_match(state, r"projector\.weight")
    conv_layers = tuple(
        (int(d), int(k), int(s))
        for d, k, s in zip(
            config.get("conv_dim", (512,) * 7),
            config.get("conv_kernel", (10, 3, 3, 3, 3, 2, 2)),
            config.get("conv_stride", (5, 2, 2, 2, 2, 2, 2)),
            strict=True,
        )
    )
    return {
        "conv_layers": conv_layers,
        "feat_extract_norm": config.get("feat_extract_norm", "group"),
        "conv_bias": config.get("conv_bias", False),
        "proj_norm": config.get("feat_proj_layer_norm", True),
        "hidden_size": config.get("hidden_size", 768),
        "num_layers": config.get("num_hidden_layers", 12),
        "num_heads": config.get("num_attention_heads", 12),
        "mlp_dim": config.get("intermediate_size", 3072),
        "pos_conv_kernel": config.get("num_conv_pos_embeddings", 128),
        "pos_conv_groups": config.get("num_conv_pos_embedding_groups", 16),
        "stable_layer_norm": config.get("do_stable_layer_norm", False),
        "proj_size": config.get("classifier_proj_size", 256) if projector is None else projector.shape[0],
        "gelu_approximate": hf_gelu_approximate(config),
        "feat_gelu_approximate": feat_act in ("gelu_new", "gelu_pytorch_tanh"),
        "layer_norm_eps": config.get("layer_norm_eps", 1e-5),
        "dropout_rate": config.get("hidden_dropout", 0.1),
        "attention_dropout_rate": config.get("attention_dropout", 0.1),
        "num_classes": 0 if classifier is None else classifier.shape[0],
    }


HF_WAV2VEC2 = Layout("hf-wav2vec2", HF_WAV2VEC2_RULES, hf_wav2vec2_fields, model_types=("wav2vec2",))
HF_HUBERT = Layout("hf-hubert", HF_WAV2VEC2_RULES, hf_wav2vec2_fields, model_types=("hubert",))
