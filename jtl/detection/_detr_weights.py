"""DETR's head from a Hugging Face ``DetrForObjectDetection`` directory (``facebook/detr-resnet-50``): the
input projection, query embeddings, transformer and prediction heads. The backbone in the same directory loads
with ``jtl.weights.load_pretrained`` (the ResNet family's ``detr-resnet`` layout)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jtl.detection._detr import DETR
from jtl.weights import (
    HF_WEIGHT_FILES,
    Pretrained,
    Rule,
    WeightLoadError,
    conv,
    convert,
    download_from_hub,
    fresh_init,
    layer_norm,
    linear,
    merge_into,
    read_file,
)

# Names as transformers 5.24 writes them (its legacy names: `out_proj`, `fc1`), and as it names them in memory
# (`o_proj`, `mlp.fc1`).
_ENCODER = r"model\.encoder\.layers\.(\d+)\."
_DECODER = r"model\.decoder\.layers\.(\d+)\."


def _attention(source: str, target: str) -> list[Rule]:
    return [
        *linear(source + r"\.q_proj", target + "/q_proj"),
        *linear(source + r"\.k_proj", target + "/k_proj"),
        *linear(source + r"\.v_proj", target + "/v_proj"),
        *linear(source + r"\.(?:out|o)_proj", target + "/out_proj"),
    ]


def _mlp_and_norms(source: str, target: str) -> list[Rule]:
    return [
        *layer_norm(source + r"self_attn_layer_norm", target + "/self_attn_norm"),
        *linear(source + r"(?:mlp\.)?fc1", target + "/fc1"),
        *linear(source + r"(?:mlp\.)?fc2", target + "/fc2"),
        *layer_norm(source + r"final_layer_norm", target + "/final_norm"),
    ]


DETR_HEAD_RULES = [
    *conv(r"model\.input_projection", "input_projection"),
    Rule(r"model\.query_position_embeddings\.weight", "params/query_position_embeddings"),
    *_attention(_ENCODER + "self_attn", r"encoder/layer_\1/self_attn"),
    *_mlp_and_norms(_ENCODER, r"encoder/layer_\1"),
    *_attention(_DECODER + "self_attn", r"decoder/layer_\1/self_attn"),
    *_attention(_DECODER + "encoder_attn", r"decoder/layer_\1/cross_attn"),
    *layer_norm(_DECODER + "encoder_attn_layer_norm", r"decoder/layer_\1/cross_attn_norm"),
    *_mlp_and_norms(_DECODER, r"decoder/layer_\1"),
    *layer_norm(r"model\.decoder\.layernorm", "decoder/norm"),
    *linear(r"class_labels_classifier", "class_head"),
    *linear(r"bbox_predictor\.layers\.(\d+)", r"box_head/layer_\1"),
    Rule(r"model\.backbone\..*", None),  # the backbone's own layout reads these
]
CLASS_HEAD = r"params/class_head/.*"


def detr_fields(config: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    """:class:`DETR`'s fields from a ``DetrConfig`` ``config.json`` and the class head's shape."""
    if config.get("position_embedding_type", "sine") != "sine":
        raise WeightLoadError(
            f"config.json: position_embedding_type={config['position_embedding_type']!r}; only 'sine' is supported"
        )
    classifier = state.get("class_labels_classifier.weight")
    if classifier is None:
        raise WeightLoadError("no 'class_labels_classifier.weight': not a DetrForObjectDetection checkpoint")
    return {
        "num_classes": int(np.shape(classifier)[0]) - 1,
        "d_model": config.get("d_model", 256),
        "encoder_layers": config.get("encoder_layers", 6),
        "decoder_layers": config.get("decoder_layers", 6),
        "encoder_attention_heads": config.get("encoder_attention_heads", 8),
        "decoder_attention_heads": config.get("decoder_attention_heads", 8),
        "encoder_ffn_dim": config.get("encoder_ffn_dim", 2048),
        "decoder_ffn_dim": config.get("decoder_ffn_dim", 2048),
        "num_queries": config.get("num_queries", 100),
        "dropout": config.get("dropout", 0.1),
        "attention_dropout": config.get("attention_dropout", 0.0),
        "activation_dropout": config.get("activation_dropout", 0.0),
        "activation": config.get("activation_function", "relu"),
        "auxiliary_loss": config.get("auxiliary_loss", False),
    }


def detr_from_hf(
    directory: str | os.PathLike, num_classes: int | None = None, *, seed: int = 0, verbose: bool = False
) -> Pretrained:
    """Loads DETR's head (all but the backbone) from a Hugging Face ``DetrForObjectDetection`` directory.

    Args:
      directory: ``config.json`` (``model_type: "detr"``) and its weights file, or a hub id
        (``facebook/detr-resnet-50``), downloaded as :func:`jtl.weights.load_pretrained` does.
      num_classes: foreground classes; a number other than the checkpoint's re-initialises the class head only.
        ``None`` keeps the checkpoint's (91 for ``facebook/detr-resnet-50``: COCO's category ids 0..90).
      seed: the seed of freshly initialised variables.
      verbose: print the load report.

    Returns:
      ``Pretrained(model, variables, report)``: a :class:`DETR`, its ``{"params": ...}`` (host arrays) and the load
      report (the backbone's keys are skipped, not reported).

    Raises:
      WeightLoadError: for a directory that is not a DETR, or tensors that do not fit, naming them.

    A directory without a ``config.json`` is refused, naming it (see ``tests/detection/test_detr.py`` for a load):

    >>> import tempfile
    >>> detr_from_hf(tempfile.mkdtemp())
    Traceback (most recent call last):
    ...
    jtl.weights._readers.WeightLoadError: ...: no config.json; a Hugging Face DETR directory needs one
    """
    path = Path(directory)
    if not path.exists() and str(directory).count("/") == 1:
        path = download_from_hub(str(directory))
    config_path = path / "config.json"
    if not config_path.exists():
        raise WeightLoadError(f"{path}: no config.json; a Hugging Face DETR directory needs one")
    config = json.loads(config_path.read_text())
    if config.get("model_type") != "detr":
        raise WeightLoadError(f"{config_path}: model_type={config.get('model_type')!r}, expected 'detr'")
    weights = next((path / name for name in HF_WEIGHT_FILES if (path / name).exists()), None)
    if weights is None or weights.suffix == ".msgpack":
        raise WeightLoadError(f"{path}: no PyTorch weights file; looked for {', '.join(HF_WEIGHT_FILES[:-1])}")
    state = read_file(weights)
    fields = detr_fields(config, state)
    replace = num_classes is not None and num_classes != fields["num_classes"]
    if num_classes is not None:
        fields["num_classes"] = num_classes
    model = DETR(**fields)
    channels = state["model.input_projection.weight"].shape[1]
    features = jax.ShapeDtypeStruct((1, 1, 1, channels), jnp.float32)
    shapes = jax.eval_shape(model.init, jax.eval_shape(jax.random.PRNGKey, seed), features)

    converted, unmatched = convert(state, DETR_HEAD_RULES, str(weights))
    variables, report = merge_into(
        shapes,
        fresh_init(model, [features], seed),
        converted,
        unmatched,
        source=str(weights),
        reinitialise=CLASS_HEAD if replace else None,
    )
    if verbose:
        print(report)
    return Pretrained(model, variables, report)
