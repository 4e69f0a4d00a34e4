"""The SigLIP families' weight layouts: Hugging Face ``siglip`` / ``siglip_vision_model`` and ``siglip2`` /
``siglip2_vision_model`` for the vision tower, ``siglip_text_model`` / ``siglip2_text_model`` (and a dual
checkpoint through ``load_pretrained(..., layout="hf-siglip-text")``) for the text tower."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from jtl.models._dual import encoder_rules, vision_resizers
from jtl.models._layers import pair
from jtl.weights import (
    Layout,
    Rule,
    WeightLoadError,
    adapt_input_channels,
    conv,
    first_match,
    hf_gelu_approximate,
    layer_norm,
    linear,
)

_VISION = r"vision_model\."
_TEXT = r"(?:text_model\.)?"
_EMBED = _VISION + r"embeddings\."
_POOL = _VISION + r"head\."


def _tower_config(config: dict[str, Any], tower: str) -> dict[str, Any]:
    if config.get("model_type") in ("siglip", "siglip2"):
        return config.get(f"{tower}_config") or {}
    return config


def _add_axis(x: np.ndarray) -> np.ndarray:
    return x[None]


def _drop_axis(x: np.ndarray, fields: Mapping[str, Any]) -> np.ndarray:
    del fields
    return x[0]


def _vision_rules(state: Mapping[str, Any]) -> list[Rule]:
    classify = first_match(state, r"classifier\.weight") is not None
    naflex = getattr(first_match(state, _EMBED + r"patch_embedding\.weight"), "ndim", 4) == 2
    patch = (
        linear(_EMBED + r"patch_embedding", "embed/patch")
        if naflex
        else conv(_EMBED + r"patch_embedding", "embed/patch")
    )
    return [
        *patch,
        Rule(
            _EMBED + r"position_embedding\.weight",
            "params/embed/pos_embedding",
            lambda x: x[None],
            inverse=lambda x, f: x[0],
        ),
        Rule(_EMBED + r"position_ids", None),
        *encoder_rules(_VISION),
        *layer_norm(_VISION + r"post_layernorm", "norm"),
        # The classifiers pool the mean token and leave the attention-pooling head unused.
        *([Rule(_POOL + r".*", None)] if classify else []),
        Rule(_POOL + r"probe", "params/pool/probe"),
        Rule(
            _POOL + r"attention\.in_proj_weight", "params/pool/attn_qkv/kernel", lambda x: x.T, inverse=lambda x, f: x.T
        ),
        Rule(_POOL + r"attention\.in_proj_bias", "params/pool/attn_qkv/bias"),
        *linear(_POOL + r"attention\.out_proj", "pool/attn_out"),
        *layer_norm(_POOL + r"layernorm", "pool/norm"),
        *linear(_POOL + r"mlp\.fc1", "pool/mlp/fc1"),
        *linear(_POOL + r"mlp\.fc2", "pool/mlp/fc2"),
        *linear(r"classifier", "head"),
        Rule(r"(?:text_model\..*|logit_scale|logit_bias)", None),  # the dual model's text tower (load_dual)
    ]


def _text_rules(state: Mapping[str, Any]) -> list[Rule]:
    del state
    return [
        Rule(_TEXT + r"embeddings\.token_embedding\.weight", "params/embed/word/embedding"),
        Rule(_TEXT + r"embeddings\.position_embedding\.weight", "params/embed/position/embedding"),
        Rule(_TEXT + r"embeddings\.position_ids", None),
        *encoder_rules(_TEXT),
        *layer_norm(_TEXT + r"final_layer_norm", "norm"),
        *linear(_TEXT + r"head", "proj"),
        Rule(r"(?:vision_model\..*|logit_scale|logit_bias|classifier\..*)", None),
    ]


def hf_siglip_vision_fields(config: dict[str, Any], state: Mapping[str, Any]) -> dict[str, Any]:
    vision = _tower_config(config, "vision")
    classifier = first_match(state, r"classifier\.weight")
    naflex = config.get("model_type") in ("siglip2", "siglip2_vision_model")
    patch = vision.get("patch_size", 16)
    fields = {
        "patch_size": pair(patch),
        "hidden_size": vision.get("hidden_size", 768),
        "num_layers": vision.get("num_hidden_layers", 12),
        "num_heads": vision.get("num_attention_heads", 12),
        "mlp_dim": vision.get("intermediate_size", 3072),
        "num_channels": vision.get("num_channels", 3),
        "pooling": "mean" if classifier is not None else "map",
        "gelu_approximate": hf_gelu_approximate({"hidden_act": vision.get("hidden_act", "gelu_pytorch_tanh")}),
        "layer_norm_eps": vision.get("layer_norm_eps", 1e-6),
        "attention_dropout_rate": vision.get("attention_dropout", 0.0),
        "num_classes": 0 if classifier is None else classifier.shape[0],
    }
    if classifier is None and not vision.get("vision_use_head", True):
        raise WeightLoadError("vision_use_head=false: a SigLIP vision tower without its pooling head is not supported")
    if naflex:
        positions = vision.get("num_patches", 256)
        fields.update(naflex=True, num_positions=positions, image_size=round(positions**0.5) * patch)
    else:
        fields["image_size"] = pair(vision.get("image_size", 224))
    return fields


def hf_siglip_text_fields(config: dict[str, Any], state: Mapping[str, Any]) -> dict[str, Any]:
    text = _tower_config(config, "text")
    projection = first_match(state, _TEXT + r"head\.weight")
    return {
        "vocab_size": text.get("vocab_size", 32000),
        "hidden_size": text.get("hidden_size", 768),
        "num_layers": text.get("num_hidden_layers", 12),
        "num_heads": text.get("num_attention_heads", 12),
        "mlp_dim": text.get("intermediate_size", 3072),
        "max_position_embeddings": text.get("max_position_embeddings", 64),
        "projection_dim": None if projection is None else projection.shape[0],
        "gelu_approximate": hf_gelu_approximate({"hidden_act": text.get("hidden_act", "gelu_pytorch_tanh")}),
        "layer_norm_eps": text.get("layer_norm_eps", 1e-6),
        "attention_dropout_rate": text.get("attention_dropout", 0.0),
    }


def _naflex_resizers(fields: dict[str, Any], source: dict[str, Any]) -> dict:
    """SigLIP 2 resizes its position grid on every call (any image size), so only the input channels of its
    linear patch embedding, flattened (row, column, channel), may change."""
    del source
    p = pair(fields.get("patch_size", 16))[0]

    def adapt(kernel: np.ndarray, target_shape: tuple) -> np.ndarray:
        if tuple(kernel.shape) == tuple(target_shape):
            return kernel
        channels_in, channels_out = kernel.shape[0] // (p * p), target_shape[0] // (p * p)
        out = adapt_input_channels(kernel.reshape(p, p, channels_in, -1), (p, p, channels_out, target_shape[1]))
        return out.reshape(target_shape)

    return {r"params/embed/patch/kernel": adapt}


HF_SIGLIP_VISION = Layout(
    "hf-siglip",
    _vision_rules,
    hf_siglip_vision_fields,
    model_types=("siglip", "siglip_vision_model"),
    resizers=vision_resizers(0, "bicubic", 224, 16),
)
HF_SIGLIP2_VISION = Layout(
    "hf-siglip2",
    _vision_rules,
    hf_siglip_vision_fields,
    model_types=("siglip2", "siglip2_vision_model"),
    resizers=_naflex_resizers,
)
HF_SIGLIP_TEXT = Layout(
    "hf-siglip-text", _text_rules, hf_siglip_text_fields, model_types=("siglip_text_model", "siglip2_text_model")
)
