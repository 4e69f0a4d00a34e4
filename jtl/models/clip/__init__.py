"""The CLIP families: ``clip`` (the vision tower, images; ``clip-vit-{b32,b16,l14}``, ``clip-testing``) and
``clip-text`` (the text tower, token ids; ``clip-text-{b32,b16,l14}``, ``clip-text-testing``), with Hugging Face's
``clip``, ``clip_vision_model`` and ``clip_text_model`` layouts; the dual model and zero-shot classifier.

``load_pretrained(path)`` on a ``clip`` checkpoint gives the vision tower (image embeddings, what fine-tuning
starts from); ``load_pretrained(path, layout="hf-clip-text")`` its text tower; :func:`load_dual` both, with the
logit scale, as :class:`ClipModel`; :func:`zero_shot_classifier` the vision tower with a head built from class
prompts.
"""

from __future__ import annotations

import os
from typing import Any

from jtl.models._dual import ClipModel, zero_shot_classifier, zero_shot_head
from jtl.models._dual import load_dual as _load_dual
from jtl.models._registry import Family, register
from jtl.models.clip._model import (
    CONFIGS,
    TEXT_CONFIGS,
    Clip,
    ClipText,
    eos_positions,
    feature_maps,
    layer_index,
    quick_gelu,
)
from jtl.models.clip._weights import HF_CLIP_TEXT, HF_CLIP_VISION
from jtl.weights import Pretrained

FAMILY = register(Family("clip", Clip, CONFIGS, layer_index, "image", (HF_CLIP_VISION,), feature_maps))
TEXT_FAMILY = register(Family("clip-text", ClipText, TEXT_CONFIGS, layer_index, "text", (HF_CLIP_TEXT,)))


def load_dual(source: str | os.PathLike, **kwargs: Any) -> Pretrained:
    """Loads a Hugging Face CLIP checkpoint (``model_type`` ``clip``, e.g. openai/clip-vit-base-patch32) as the
    dual model: both towers and the logit scale.

    Args:
      source: a hub id or directory.
      **kwargs: ``image_size``, ``verbose``, ``revision``, and fields of both towers (``dtype``).

    Returns:
      :class:`jtl.weights.Pretrained` ``(ClipModel, variables, report)``.

    >>> import tempfile
    >>> load_dual(tempfile.mkdtemp())
    Traceback (most recent call last):
    ...
    jtl.weights._readers.WeightLoadError: ...: no config.json; a Hugging Face model directory needs one
    """
    return _load_dual(source, "hf-clip-text", **kwargs)


__all__ = [
    "FAMILY",
    "HF_CLIP_TEXT",
    "HF_CLIP_VISION",
    "TEXT_FAMILY",
    "Clip",
    "ClipModel",
    "ClipText",
    "eos_positions",
    "load_dual",
    "quick_gelu",
    "zero_shot_classifier",
    "zero_shot_head",
]
