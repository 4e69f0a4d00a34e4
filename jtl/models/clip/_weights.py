"""The CLIP families' weight layouts: Hugging Face ``clip`` (the dual model's file, or
``CLIPForImageClassification``'s) and ``clip_vision_model`` for the vision tower, ``clip_text_model`` (and a
``clip`` file through ``load_pretrained(..., layout="hf-clip-text")``) for the text tower."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jtl.models._dual import encoder_rules, vision_resizers
from jtl.models._layers import pair
from jtl.weights import (
    Layout,
    Rule,
    conv,
    first_match,
    layer_norm,
    linear,
)


def _leading_axes(count: int):
    """``x -> x`` with ``count`` leading axes of 1 (a class token (D,) -> (1, 1, D)), and its inverse."""
    return (lambda x: x.reshape((1,) * count + x.shape), lambda x, fields: x.reshape(x.shape[count:]))


_VISION = r"vision_model\."
_TEXT = r"(?:text_model\.)?"
_EMBED = _VISION + r"embeddings\."
_OTHER_TOWER_VISION = r"(?:text_model\..*|text_projection\.weight|logit_scale)"
_OTHER_TOWER_TEXT = r"(?:vision_model\..*|visual_projection\.weight|logit_scale|classifier\..*)"


def _vision_rules(state: Mapping[str, Any]) -> list[Rule]:
    classify = first_match(state, r"classifier\.weight") is not None
    to_3d, from_3d = _leading_axes(1)
    to_token, from_token = _leading_axes(2)
    return [
        *conv(_EMBED + r"patch_embedding", "embed/patch"),
        Rule(_EMBED + r"class_embedding", "params/embed/cls", to_token, inverse=from_token),
        Rule(_EMBED + r"position_embedding\.weight", "params/embed/pos_embedding", to_3d, inverse=from_3d),
        Rule(_EMBED + r"position_ids", None),
        *layer_norm(_VISION + r"pre_layrnorm", "embed/norm"),
        *encoder_rules(_VISION),
        # CLIPForImageClassification pools the mean patch token before the final norm, which it leaves unused.
        *([Rule(_VISION + r"post_layernorm\.(?:weight|bias)", None)] if classify else []),
        *layer_norm(_VISION + r"post_layernorm", "norm"),
        Rule(r"visual_projection\.weight", "params/proj/kernel", lambda x: x.T, inverse=lambda x, f: x.T),
        *linear(r"classifier", "head"),
        Rule(_OTHER_TOWER_VISION, None),  # the dual model's text tower: ClipText's (load_dual reads both)
    ]


def _text_rules(state: Mapping[str, Any]) -> list[Rule]:
    del state
    return [
        Rule(_TEXT + r"embeddings\.token_embedding\.weight", "params/embed/word/embedding"),
        Rule(_TEXT + r"embeddings\.position_embedding\.weight", "params/embed/position/embedding"),
        Rule(_TEXT + r"embeddings\.position_ids", None),
        *encoder_rules(_TEXT),
        *layer_norm(_TEXT + r"final_layer_norm", "norm"),
        Rule(r"text_projection\.weight", "params/proj/kernel", lambda x: x.T, inverse=lambda x, f: x.T),
        Rule(_OTHER_TOWER_TEXT, None),
    ]


def _tower_config(config: dict[str, Any], tower: str) -> dict[str, Any]:
    """The tower's own config: the dual model's ``{tower}_config``, or the whole file of a tower's own."""
    if config.get("model_type") in ("clip", "siglip", "siglip2"):
        return config.get(f"{tower}_config") or {}
    return config


def hf_clip_vision_fields(config: dict[str, Any], state: Mapping[str, Any]) -> dict[str, Any]:
    vision = _tower_config(config, "vision")
    classifier = first_match(state, r"classifier\.weight")
    projection = first_match(state, r"visual_projection\.weight")
    return {
        "patch_size": pair(vision.get("patch_size", 32)),
        "hidden_size": vision.get("hidden_size", 768),
        "num_layers": vision.get("num_hidden_layers", 12),
        "num_heads": vision.get("num_attention_heads", 12),
        "mlp_dim": vision.get("intermediate_size", 3072),
        "image_size": pair(vision.get("image_size", 224)),
        "num_channels": vision.get("num_channels", 3),
        "projection_dim": None if projection is None or classifier is not None else projection.shape[0],
        "pooling": "cls" if classifier is None else "mean",
        "hidden_act": vision.get("hidden_act", "quick_gelu"),
        "layer_norm_eps": vision.get("layer_norm_eps", 1e-5),
        "attention_dropout_rate": vision.get("attention_dropout", 0.0),
        "num_classes": 0 if classifier is None else classifier.shape[0],
    }


def hf_clip_text_fields(config: dict[str, Any], state: Mapping[str, Any]) -> dict[str, Any]:
    text = _tower_config(config, "text")
    projection = first_match(state, r"text_projection\.weight")
    return {
        "vocab_size": text.get("vocab_size", 49408),
        "hidden_size": text.get("hidden_size", 512),
        "num_layers": text.get("num_hidden_layers", 12),
        "num_heads": text.get("num_attention_heads", 8),
        "mlp_dim": text.get("intermediate_size", 2048),
        "max_position_embeddings": text.get("max_position_embeddings", 77),
        "eos_token_id": text.get("eos_token_id", 49407),
        "projection_dim": None if projection is None else projection.shape[0],
        "hidden_act": text.get("hidden_act", "quick_gelu"),
        "layer_norm_eps": text.get("layer_norm_eps", 1e-5),
        "attention_dropout_rate": text.get("attention_dropout", 0.0),
    }


HF_CLIP_VISION = Layout(
    "hf-clip",
    _vision_rules,
    hf_clip_vision_fields,
    model_types=("clip", "clip_vision_model"),
    resizers=vision_resizers(1, "bicubic", 224, 32),
)
HF_CLIP_TEXT = Layout("hf-clip-text", _text_rules, hf_clip_text_fields, model_types=("clip_text_model",))
