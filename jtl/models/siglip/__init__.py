"""The SigLIP families: ``siglip`` (the vision tower, images; SigLIP and SigLIP 2, ``siglip-*``, ``siglip2-*``,
``siglip-testing``, ``siglip2-testing``) and ``siglip-text`` (the text tower, token ids), with Hugging Face's
``siglip``, ``siglip2`` and their ``*_vision_model`` / ``*_text_model`` layouts; the dual model and zero-shot
classifier (sigmoid logits: scale and bias).

``load_pretrained(path)`` on a ``siglip``/``siglip2`` checkpoint gives the vision tower (attention-pooled image
embeddings); ``load_pretrained(path, layout="hf-siglip-text")`` its text tower; :func:`load_dual` both, with the
logit scale and bias, as :class:`jtl.models.clip.ClipModel`; :func:`zero_shot_classifier` the vision tower with a
head built from class prompts.
"""

from __future__ import annotations

import os
from typing import Any

from jtl.models._dual import load_dual as _load_dual
from jtl.models._dual import zero_shot_classifier, zero_shot_head
from jtl.models._registry import Family, register
from jtl.models.siglip._model import (
    CONFIGS,
    TEXT_CONFIGS,
    Siglip,
    SiglipText,
    feature_maps,
    layer_index,
    patchify,
    resize_positions,
)
from jtl.models.siglip._weights import HF_SIGLIP2_VISION, HF_SIGLIP_TEXT, HF_SIGLIP_VISION
from jtl.weights import Pretrained

FAMILY = register(
    Family("siglip", Siglip, CONFIGS, layer_index, "image", (HF_SIGLIP_VISION, HF_SIGLIP2_VISION), feature_maps)
)
TEXT_FAMILY = register(Family("siglip-text", SiglipText, TEXT_CONFIGS, layer_index, "text", (HF_SIGLIP_TEXT,)))


def load_dual(source: str | os.PathLike, **kwargs: Any) -> Pretrained:
    """Loads a Hugging Face SigLIP or SigLIP 2 checkpoint (``model_type`` ``siglip``/``siglip2``) as the dual
    model: both towers, the logit scale and the logit bias.

    Args:
      source: a hub id or directory.
      **kwargs: ``image_size``, ``verbose``, ``revision``, and fields of both towers (``dtype``).

    Returns:
      :class:`jtl.weights.Pretrained` ``(ClipModel, variables, report)``; its ``logits_per_image`` are
      SigLIP's sigmoid logits.

    >>> import tempfile
    >>> load_dual(tempfile.mkdtemp())
    Traceback (most recent call last):
    ...
    jtl.weights._readers.WeightLoadError: ...: no config.json; a Hugging Face model directory needs one
    """
    return _load_dual(source, "hf-siglip-text", logit_bias=True, **kwargs)


__all__ = [
    "FAMILY",
    "HF_SIGLIP2_VISION",
    "HF_SIGLIP_TEXT",
    "HF_SIGLIP_VISION",
    "TEXT_FAMILY",
    "Siglip",
    "SiglipText",
    "load_dual",
    "patchify",
    "resize_positions",
    "zero_shot_classifier",
    "zero_shot_head",
]
