"""The dual encoder (CLIP's ``CLIPModel``, SigLIP's ``SiglipModel``): both towers and the learned logit scale (and
SigLIP's bias), loaded from one checkpoint; the zero-shot classifier head built from the text tower; and what the
two families' towers share (text embeddings, the encoders' weight rules, the vision resizers).

The towers are registered families of their own (``clip``: images, ``clip-text``: token ids), since a family has
one input kind; the dual model is not a family but a module over the two, loaded with :func:`load_dual`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jtl.models._layers import features_head, patch_grid
from jtl.weights import (
    LoadReport,
    Pretrained,
    Rule,
    WeightLoadError,
    adapt_input_channels,
    download_from_hub,
    layer_norm,
    linear,
    load_pretrained,
    load_tokenizer,
    resample_pos_embedding,
)

# --- What the towers of CLIP and SigLIP share: the text embeddings, the encoders' weight rules, the resizers ----


class ClipTextEmbed(nn.Module):
    """Token ids -> ``word`` plus ``position`` embeddings (positions from 0); a sequence longer than
    ``max_position_embeddings`` is an error."""

    vocab_size: int
    hidden_size: int
    max_position_embeddings: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids: jax.Array) -> jax.Array:
        length = input_ids.shape[1]
        if length > self.max_position_embeddings:
            raise ValueError(f"sequence length {length} exceeds max_position_embeddings={self.max_position_embeddings}")
        init = nn.initializers.normal(stddev=0.02)
        word = nn.Embed(self.vocab_size, self.hidden_size, embedding_init=init, dtype=self.dtype, name="word")
        position = nn.Embed(
            self.max_position_embeddings, self.hidden_size, embedding_init=init, dtype=self.dtype, name="position"
        )
        return word(input_ids) + position(jnp.arange(length))[None]


def tower_head(module: nn.Module, x: jax.Array) -> jax.Array:
    """What both families' towers end with: the optional L2 normalisation (``module.normalize``), then
    ``features_head`` (the sown features and the classifier head).

    Args:
      module: the calling tower (``normalize``, ``num_classes``, ``head_zero_init``, ``dtype`` fields).
      x: the pooled (batch, width) features.

    Returns:
      The logits, or the (normalised) features when ``module.num_classes`` is 0.

    >>> class Tiny(nn.Module):
    ...     normalize: bool = True
    ...     num_classes: int = 0
    ...     head_zero_init: bool = True
    ...     dtype: jnp.dtype = jnp.float32
    ...     @nn.compact
    ...     def __call__(self, x):
    ...         return tower_head(self, x)
    >>> Tiny().apply({}, jnp.array([[3.0, 4.0]])).tolist()
    [[0.6000000238418579, 0.800000011920929]]
    """
    if module.normalize:
        x = x / jnp.linalg.norm(x, axis=-1, keepdims=True)
    return features_head(module, x)


def encoder_rules(prefix: str) -> list[Rule]:
    """The rules of a CLIP/SigLIP encoder (``{prefix}encoder.layers.N.``) -> ``encoder/block_N``.

    Args:
      prefix: the regex before ``encoder.`` (``vision_model\\.``).

    Returns:
      The rules.

    >>> len(encoder_rules(r"vision_model\\."))
    16
    """
    block = prefix + r"encoder\.layers\.(\d+)\."
    return [
        *layer_norm(block + r"layer_norm1", r"encoder/block_\1/norm1"),
        *linear(block + r"self_attn\.q_proj", r"encoder/block_\1/attn/query"),
        *linear(block + r"self_attn\.k_proj", r"encoder/block_\1/attn/key"),
        *linear(block + r"self_attn\.v_proj", r"encoder/block_\1/attn/value"),
        *linear(block + r"self_attn\.out_proj", r"encoder/block_\1/attn/out"),
        *layer_norm(block + r"layer_norm2", r"encoder/block_\1/norm2"),
        *linear(block + r"mlp\.fc1", r"encoder/block_\1/mlp/fc1"),
        *linear(block + r"mlp\.fc2", r"encoder/block_\1/mlp/fc2"),
    ]


def vision_resizers(num_prefix_tokens: int, method: str, default_image_size: int, default_patch_size: int):
    """Position embeddings follow the image size as Hugging Face's ``interpolate_pos_encoding`` resamples them
    (the prefix tokens' kept); the patch embedding follows the number of input channels."""

    def resizers(fields: dict[str, Any], source: dict[str, Any]) -> dict:
        grid, source_grid = (
            patch_grid(f.get("image_size", default_image_size), f.get("patch_size", default_patch_size))
            for f in (fields, source)
        )
        return {
            r"params/embed/pos_embedding": resample_pos_embedding(num_prefix_tokens, method, grid, source_grid),
            r"params/embed/patch/kernel": adapt_input_channels,
        }

    return resizers


# --- The dual model ------------------------------------------------------------------------------------------------


def _normalise(x: jax.Array) -> jax.Array:
    return x / jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))


class ClipModel(nn.Module):
    """Image and text towers side by side: ``encode_image`` / ``encode_text`` give L2-normalised embeddings and
    ``__call__`` gives ``logits_per_image`` (images x texts): ``exp(logit_scale)`` times their cosine similarity,
    plus ``logit_bias`` for SigLIP (``logit_bias=True``). Params: ``vision/...``, ``text/...``, ``logit_scale``
    (and ``logit_bias``).

    Args (fields):
      vision: the image tower (:class:`jtl.models.clip.Clip`, or SigLIP's), without head (``num_classes=0``).
      text: the text tower, without head.
      logit_bias: SigLIP's learned bias on the logits.

    >>> from jtl.models import create
    >>> model = ClipModel(create("clip-testing", num_classes=0), create("clip-text-testing", num_classes=0))
    >>> variables = model.init(jax.random.PRNGKey(0), *model.example_inputs())
    >>> model.apply(variables, jnp.zeros((3, 16, 16, 3)), jnp.array([[1, 63], [2, 63]])).shape
    (3, 2)
    """

    vision: nn.Module
    text: nn.Module
    logit_bias: bool = False

    def setup(self) -> None:
        self.logit_scale = self.param("logit_scale", nn.initializers.constant(math.log(1 / 0.07)), (), jnp.float32)
        if self.logit_bias:
            self.bias = self.param("logit_bias", nn.initializers.constant(-10.0), (), jnp.float32)

    def example_inputs(self, batch_size: int = 1) -> tuple[jax.Array, ...]:
        """Images, token ids and an attention mask of the right shapes for ``init``."""
        return (*self.vision.example_inputs(batch_size), *self.text.example_inputs(batch_size))

    def encode_image(self, images: jax.Array) -> jax.Array:
        """L2-normalised image embeddings (``model.apply(variables, images, method="encode_image")``)."""
        return _normalise(self.vision(images))

    def encode_text(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """L2-normalised text embeddings."""
        return _normalise(self.text(input_ids, attention_mask))

    def __call__(self, images: jax.Array, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        logits = jnp.exp(self.logit_scale) * self.encode_image(images) @ self.encode_text(input_ids, attention_mask).T
        return logits + self.bias if self.logit_bias else logits


def zero_shot_head(
    model: ClipModel, variables: dict, input_ids: jax.Array, attention_mask: jax.Array | None = None
) -> dict[str, jax.Array]:
    """The zero-shot classifier: each class's text embedding over its prompt templates (normalised, averaged,
    renormalised), times ``exp(logit_scale)``, with ``logit_bias`` (SigLIP) or zero as bias.

    On L2-normalised image embeddings (the vision tower with ``normalize=True``, as :func:`zero_shot_classifier`
    builds it) the head gives the dual model's ``logits_per_image`` when each class has one prompt.

    Args:
      model: the dual model.
      variables: its variables.
      input_ids: (classes, templates, length) token ids, or (classes, length) for one prompt a class.
      attention_mask: the same shape, or ``None`` (no padding).

    Returns:
      ``{"kernel": (embed dim, classes), "bias": (classes,)}``, the ``head`` params.

    >>> from jtl.models import create
    >>> model = ClipModel(create("clip-testing", num_classes=0), create("clip-text-testing", num_classes=0))
    >>> variables = model.init(jax.random.PRNGKey(0), *model.example_inputs())
    >>> head = zero_shot_head(model, variables, jnp.array([[[1, 63], [2, 63]], [[3, 63], [4, 63]]]))
    >>> head["kernel"].shape, head["bias"].shape
    ((8, 2), (2,))
    """
    input_ids = jnp.asarray(input_ids)
    if input_ids.ndim == 2:
        input_ids = input_ids[:, None]
        attention_mask = None if attention_mask is None else jnp.asarray(attention_mask)[:, None]
    classes, templates, length = input_ids.shape
    flat_mask = None if attention_mask is None else jnp.asarray(attention_mask).reshape(-1, length)
    embeddings = model.apply(variables, input_ids.reshape(-1, length), flat_mask, method="encode_text")
    embeddings = _normalise(embeddings.reshape(classes, templates, -1).mean(axis=1))
    params = variables["params"]
    kernel = jnp.exp(params["logit_scale"]) * embeddings.T
    bias = jnp.full((classes,), params["logit_bias"]) if "logit_bias" in params else jnp.zeros((classes,))
    return {"kernel": kernel.astype(jnp.float32), "bias": bias.astype(jnp.float32)}


def zero_shot_classifier(
    model: ClipModel, variables: dict, input_ids: jax.Array, attention_mask: jax.Array | None = None
) -> tuple[nn.Module, dict]:
    """The vision tower as a zero-shot classifier: L2-normalised image embeddings into :func:`zero_shot_head`,
    ready to fine-tune (WiSE-FT's starting point).

    Args:
      model: the dual model.
      variables: its variables.
      input_ids: (classes, templates, length) token ids of the class prompts (or (classes, length)).
      attention_mask: the same shape, or ``None``.

    Returns:
      ``(vision model with num_classes=classes and normalize=True, its variables)``.

    >>> from jtl.models import create
    >>> model = ClipModel(create("clip-testing", num_classes=0), create("clip-text-testing", num_classes=0))
    >>> variables = model.init(jax.random.PRNGKey(0), *model.example_inputs())
    >>> vision, vision_variables = zero_shot_classifier(model, variables, jnp.array([[1, 63], [2, 63]]))
    >>> vision.apply(vision_variables, jnp.zeros((4, 16, 16, 3))).shape
    (4, 2)
    """
    head = zero_shot_head(model, variables, input_ids, attention_mask)
    vision = model.vision.clone(parent=None, name=None, num_classes=head["kernel"].shape[1], normalize=True)
    return vision, {"params": {**variables["params"]["vision"], "head": head}}


def _read_tensors(where: str, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """A few tensors of a checkpoint file (safetensors read by name, not whole)."""
    path = Path(where)
    if path.name.endswith(".safetensors.index.json"):
        weight_map = json.loads(path.read_text())["weight_map"]
        files = {name: path.parent / weight_map[name] for name in names if name in weight_map}
    else:
        files = {name: path for name in names}
    out = {}
    for name, file in files.items():
        if file.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(file), "np") as f:
                if name in f.keys():  # noqa: SIM118 (safe_open has no __contains__)
                    out[name] = f.get_tensor(name)
        else:
            from jtl.weights import read_file

            state = read_file(file)
            if name in state:
                out[name] = state[name]
    return out


def _prefixed(report: LoadReport, tower: str) -> dict[str, list]:
    def rename(rows: list) -> list:
        return [(name.replace("params/", f"params/{tower}/", 1), *rest) for name, *rest in rows]

    return {
        field: rename(getattr(report, field))
        for field in ("loaded", "missing", "unexpected", "reinitialised", "resized")
    }


def load_dual(
    source: str | os.PathLike,
    text_layout: str,
    *,
    logit_bias: bool = False,
    image_size: int | tuple[int, int] | None = None,
    verbose: bool = True,
    revision: str | None = None,
    **overrides: Any,
) -> Pretrained:
    """Loads a dual encoder's checkpoint (both towers and the logit scale) into a :class:`ClipModel`; the public
    entries are :func:`jtl.models.clip.load_dual` and :func:`jtl.models.siglip.load_dual`.

    Args:
      source: a Hugging Face hub id or directory of the dual model.
      text_layout: the registered layout of its text tower.
      logit_bias: read SigLIP's ``logit_bias`` too.
      image_size: a new input resolution for the vision tower.
      verbose: print the load report.
      revision: the hub revision.
      **overrides: fields of both towers (``dtype=jnp.bfloat16``).

    Returns:
      :class:`jtl.weights.Pretrained` ``(ClipModel, variables, report)``, the towers' names prefixed.
    """
    vision = load_pretrained(
        source, num_classes=0, image_size=image_size, verbose=False, revision=revision, **overrides
    )
    text = load_pretrained(source, num_classes=0, verbose=False, revision=revision, layout=text_layout, **overrides)
    names = ("logit_scale", "logit_bias") if logit_bias else ("logit_scale",)
    scalars = _read_tensors(vision.report.source, names)
    missing = [name for name in names if name not in scalars]
    if missing:
        raise WeightLoadError(f"{vision.report.source}: no {missing}: not a dual (image and text) model's checkpoint")
    model = ClipModel(vision.model, text.model, logit_bias)
    params = {"vision": vision.variables["params"], "text": text.variables["params"]}
    params.update({name: np.asarray(value, np.float32).reshape(()) for name, value in scalars.items()})
    rows = {
        field: a + b
        for (field, a), b in zip(
            _prefixed(vision.report, "vision").items(), _prefixed(text.report, "text").values(), strict=True
        )
    }
    rows["loaded"] += [(f"params/{name}", ()) for name in names]
    report = LoadReport(vision.report.source, **rows)
    if verbose:
        print(report)
    return Pretrained(model, {"params": params}, report)


# model_type -> (the text tower's layout, whether the logits have a learned bias)
DUAL_MODEL_TYPES = {
    "clip": ("hf-clip-text", False),
    "siglip": ("hf-siglip-text", True),
    "siglip2": ("hf-siglip-text", True),
}


def zero_shot_model(
    source: str | os.PathLike,
    class_names: Sequence[str],
    templates: Sequence[str] = ("a photo of a {}.",),
    *,
    tokenizer: Any = None,
    verbose: bool = True,
    revision: str | None = None,
    **overrides: Any,
) -> Pretrained:
    """The vision tower of a CLIP or SigLIP checkpoint as a zero-shot classifier of ``class_names``: its head built
    from the text tower's embeddings of every template filled with every class name (:func:`zero_shot_head`), the
    starting point of zero-shot fine-tuning and WiSE-FT (``config.model.zero_shot``).

    The prompts are tokenised as Hugging Face's zero-shot image classification pipeline does: SigLIP's padded to
    the text tower's full length (as it was trained), CLIP's to the longest prompt; the attention mask goes with
    them where the tokenizer returns one (``tests/weights/test_zero_shot.py`` checks both against
    ``logits_per_image``).

    Args:
      source: a Hugging Face hub id or directory (``model_type`` ``clip``, ``siglip`` or ``siglip2``) with its
        tokenizer files.
      class_names: the classes, in label order.
      templates: prompt templates with one ``{}`` for the class name; a class's embedding averages over them.
      tokenizer: a ``transformers`` tokenizer to use instead of the checkpoint's.
      verbose: print the load report.
      revision: the hub revision.
      **overrides: fields of both towers (``dtype``, ``image_size``).

    Returns:
      :class:`jtl.weights.Pretrained` ``(vision model with num_classes=len(class_names), variables, report)``.

    Raises:
      WeightLoadError: the checkpoint is not a dual model's (naming the ``model_type``s that are).

    >>> import json, tempfile
    >>> path = tempfile.mkdtemp()
    >>> _ = open(f"{path}/config.json", "w").write(json.dumps({"model_type": "vit"}))
    >>> zero_shot_model(path, ["cat", "dog"])
    Traceback (most recent call last):
    ...
    jtl.weights._readers.WeightLoadError: ...: model_type='vit' is not a dual image-text model; zero-shot heads ...
    """
    directory = Path(source)
    if not directory.is_dir():
        directory = download_from_hub(str(source), revision)
    config_path = directory / "config.json"
    model_type = json.loads(config_path.read_text()).get("model_type") if config_path.exists() else None
    if model_type not in DUAL_MODEL_TYPES:
        raise WeightLoadError(
            f"{config_path}: model_type={model_type!r} is not a dual image-text model; zero-shot heads need one of "
            f"{sorted(DUAL_MODEL_TYPES)}"
        )
    text_layout, logit_bias = DUAL_MODEL_TYPES[model_type]
    dual = load_dual(directory, text_layout, logit_bias=logit_bias, verbose=verbose, **overrides)
    tokenizer = load_tokenizer(source, revision) if tokenizer is None else tokenizer
    prompts = [template.format(name) for name in class_names for template in templates]
    if logit_bias:
        length = dual.model.text.max_position_embeddings
        encoded = tokenizer(prompts, padding="max_length", max_length=length, truncation=True, return_tensors="np")
    else:
        encoded = tokenizer(prompts, padding=True, return_tensors="np")
    shape = (len(class_names), len(templates), -1)
    input_ids = np.asarray(encoded["input_ids"]).reshape(shape)
    mask = encoded.get("attention_mask")
    mask = None if mask is None else np.asarray(mask).reshape(shape)
    model, variables = zero_shot_classifier(dual.model, dual.variables, input_ids, mask)
    return Pretrained(model, variables, dual.report)
