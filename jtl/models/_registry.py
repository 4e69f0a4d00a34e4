"""Model registry: the families register themselves (class, named configurations, layer index, input kind,
weight layouts); creation, layer indices and input kinds are looked up here and nowhere else."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax

import jtl.masking as jm
from jtl.weights import Layout

INPUT_KINDS = ("image", "text", "audio")


class Family(NamedTuple):
    """Everything jtl knows about one model family, registered as one unit with :func:`register`.

    Attributes:
      name: the family's name (``"vit"``).
      model: its Flax module class; subclasses (``jtl.adapters.with_adapters``'s) belong to the family too.
      configs: ``{registry name: fields}`` for :func:`create` (named sizes and a tiny ``*-testing`` config).
      layer_index: ``model -> (layer_of, top)``, see :func:`layer_index`.
      input_kind: ``"image"`` (``model(images)``), ``"text"`` (``model(input_ids, attention_mask)``) or
        ``"audio"`` (``model(inputs, attention_mask=None)``, ``inputs`` what the family's feature extractor
        gives: AST a log-mel filterbank (N, frames, mel bins), Wav2Vec2/HuBERT the normalised waveform
        (N, samples); ``attention_mask`` (N, frames or samples), 1 where the input is real, not padding).
      layouts: the checkpoint layouts :func:`jtl.weights.load_pretrained` reads (and may export) for it.
      feature_maps: ``(model, intermediates, layers) -> {name: (N, H, W, C) map}`` from what the model sows in
        ``intermediates`` (an image family's multi-scale features, :func:`feature_maps`); ``None``: none.

    >>> family = Family("dense", nn.Dense, {"dense-testing": {"features": 2}}, lambda m: (lambda name: 0, 0))
    >>> family.input_kind, family.layouts
    ('image', ())
    """

    name: str
    model: type[nn.Module]
    configs: Mapping[str, Mapping[str, Any]]
    layer_index: Callable[[nn.Module], tuple[Callable[[str], int], int]]
    input_kind: str = "image"
    layouts: tuple[Layout, ...] = ()
    feature_maps: Callable[[nn.Module, dict, Sequence[int] | None], dict[str, jax.Array]] | None = None


_FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Adds a model family to the registry (each family package does so when ``jtl.models`` is imported).

    Args:
      family: the family; its name, class, config names, layout names and ``model_type`` values must be new.

    Returns:
      The family, so that a package can write ``FAMILY = register(Family(...))``.

    Raises:
      ValueError: naming what another registered family already holds.

    >>> class Linear(nn.Module):
    ...     num_classes: int = 2
    ...     @nn.compact
    ...     def __call__(self, x):
    ...         return nn.Dense(self.num_classes, name="head")(x)
    >>> family = register(Family("linear", Linear, {"linear-testing": {}}, lambda m: (lambda name: 1, 1)))
    >>> "linear-testing" in available(), family_of(create("linear-testing", num_classes=3)).name
    (True, 'linear')
    >>> _ = unregister("linear")
    """
    if family.input_kind not in INPUT_KINDS:
        raise ValueError(f"family {family.name!r}: input_kind must be one of {INPUT_KINDS}, got {family.input_kind!r}")
    taken = {
        "name": ({family.name}, set(_FAMILIES)),
        "config": (set(family.configs), {n for f in _FAMILIES.values() for n in f.configs}),
        # jtl's own format records the class by name.
        "class name": ({family.model.__name__}, {f.model.__name__ for f in _FAMILIES.values()}),
        "layout": ({lay.name for lay in family.layouts}, {lay.name for f in _FAMILIES.values() for lay in f.layouts}),
        "model_type": (
            {t for lay in family.layouts for t in lay.model_types},
            {t for f in _FAMILIES.values() for lay in f.layouts for t in lay.model_types},
        ),
    }
    clashes = {what: sorted(new & old) for what, (new, old) in taken.items() if new & old}
    if clashes:
        raise ValueError(f"family {family.name!r}: already registered: {clashes}")
    _FAMILIES[family.name] = family
    return family


def unregister(name: str) -> Family:
    """Removes a family from the registry (a test's toy family, at the end of the test).

    Args:
      name: the family's name.

    Returns:
      The family removed.

    >>> class Linear(nn.Module):
    ...     num_classes: int = 2
    >>> _ = register(Family("linear", Linear, {"linear-testing": {}}, lambda m: (lambda name: 1, 1)))
    >>> unregister("linear").name, "linear-testing" in available()
    ('linear', False)
    """
    if name not in _FAMILIES:
        raise ValueError(f"no family {name!r} is registered; registered: {sorted(_FAMILIES)}")
    return _FAMILIES.pop(name)


def families() -> tuple[Family, ...]:
    """The registered families, in registration order.

    Returns:
      The :class:`Family` tuples.

    >>> {"vit", "bert", "resnet"} <= {family.name for family in families()}
    True
    """
    return tuple(_FAMILIES.values())


def family_of(model: nn.Module) -> Family:
    """The family a model belongs to, looked up along its class's MRO (a LoRA-wrapped model is its base's).

    Args:
      model: a jtl model.

    Returns:
      Its :class:`Family`.

    Raises:
      TypeError: for a model of no registered family.

    >>> family_of(create("resnet-testing")).name
    'resnet'
    """
    by_class = {family.model: family for family in _FAMILIES.values()}
    for cls in type(model).__mro__:
        if cls in by_class:
            return by_class[cls]
    raise TypeError(f"{type(model).__name__} is not a model of a registered family ({sorted(_FAMILIES)})")


def input_kind(model: nn.Module) -> str:
    """What a model takes: ``"image"`` (NHWC images), ``"text"`` (token ids and an attention mask) or
    ``"audio"`` (feature-extractor output and an optional attention mask).

    Args:
      model: a jtl model, LoRA-wrapped or not.

    Returns:
      ``"image"``, ``"text"`` or ``"audio"``.

    >>> input_kind(create("vit-testing")), input_kind(create("bert-testing")), input_kind(create("ast-testing"))
    ('image', 'text', 'audio')
    """
    return family_of(model).input_kind


def available() -> list[str]:
    """Returns the names :func:`create` accepts.

    Returns:
      Sorted model names.

    >>> [n for n in available() if n.startswith("resnet-")]
    ['resnet-101', 'resnet-152', 'resnet-18', 'resnet-34', 'resnet-50', 'resnet-testing']
    """
    return sorted(name for family in _FAMILIES.values() for name in family.configs)


def create(name: str, num_classes: int = 1000, **overrides: Any) -> nn.Module:
    """Creates a model by name, for training from scratch (or for :func:`jtl.weights.load_pretrained`).

    Args:
      name: one of :func:`available`, e.g. ``vit-b16``, ``resnet-50``, ``bert-base``, ``vgg16``.
      num_classes: the head's classes; 0 for a feature extractor without head.
      **overrides: any other field of the model (``image_size=384``, ``dtype=jnp.bfloat16``, ...).

    Returns:
      The Flax module; ``model.init(rng, *model.example_inputs())`` gives its variables.

    >>> model = create("vit-s16", num_classes=10, image_size=384)
    >>> type(model).__name__, model.hidden_size, model.num_classes, model.image_size
    ('ViT', 384, 10, 384)
    """
    family = next((family for family in _FAMILIES.values() if name in family.configs), None)
    if family is None:
        close = [n for n in available() if n.split("-")[0] == name.split("-")[0]] or available()
        raise ValueError(f"unknown model {name!r}; known: {close}")
    cls, fields = family.model, family.configs[name]
    unknown = set(overrides) - set(cls.__dataclass_fields__)
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
    return cls(**{**fields, "num_classes": num_classes, **overrides})


def init(model: nn.Module, seed: int = 0, shardings: Callable[[Any], Any] | None = None) -> dict[str, Any]:
    """Initialises a model's variables from its example inputs.

    Args:
      model: a jtl model.
      seed: the PRNG seed.
      shardings: ``abstract variables -> their shardings`` (e.g. :meth:`jtl.sharding.Plan.shardings`): each
        device computes only its shards, so a model larger than one device is never whole on any.

    Returns:
      The variables (``{"params": ..., "batch_stats": ...}``).

    >>> sorted(init(create("resnet-testing", num_classes=2)))
    ['batch_stats', 'params']
    """
    inputs = (jax.random.PRNGKey(seed), *model.example_inputs())
    out_shardings = None if shardings is None else shardings(jax.eval_shape(model.init, *inputs))
    # One compiled program: run eagerly, every initialiser op would compile on its own (seconds on CPU).
    return jax.jit(model.init, out_shardings=out_shardings)(*inputs)


def layer_index(model: nn.Module) -> tuple[Callable[[str], int], int]:
    """The family's map from parameter name (inside ``params``) to layer index, and the top index.

    Embeddings/stems are layer 0, blocks count up from 1, and the final norm, pooler and head share the top
    index: what :func:`jtl.masking.layerwise_lr_decay` and "train the last N blocks" need.

    Args:
      model: a jtl model.

    Returns:
      ``(layer_of, num_layers)``.

    >>> layer_of, top = layer_index(create("resnet-18"))
    >>> layer_of("embed/conv/kernel"), layer_of("stage_1/block_0/conv1/kernel"), layer_of("head/kernel"), top
    (0, 3, 9, 9)
    """
    return family_of(model).layer_index(model)


def top_layers(model: nn.Module, count: int) -> Callable[[Any], Any]:
    """The ``trainable`` spec for the top ``count`` layers of :func:`layer_index` (``count=1``: the final norm,
    pooler and head; ``N + 1``: also the last N blocks; ``top + 1``: everything).

    Args:
      model: a jtl model.
      count: how many layers, counted down from the top.

    Returns:
      ``params -> boolean tree``, for ``jtl.masking`` and the train step.

    >>> model = create("vit-testing", num_classes=2)
    >>> mask = top_layers(model, 2)(init(model)["params"])
    >>> mask["embed"]["patch"]["kernel"], mask["head"]["kernel"]
    (False, True)
    """
    layer_of, top = layer_index(model)
    return lambda tree: jm.map_with_names(lambda name, _: layer_of(name) > top - count, tree)


class FeatureMap(NamedTuple):
    """One scale of a backbone's features: ``features`` (N, H, W, C) and its ``stride`` in input pixels."""

    features: jax.Array
    stride: int


def feature_maps(
    model: nn.Module, variables: dict, images: jax.Array, layers: Sequence[int] | None = None
) -> dict[str, FeatureMap]:
    """A vision backbone's feature maps by stage, named and with their strides: what a detection head reads (the
    interface of timm's ``features_only``). CNNs give their stages (``stage_{s}``; ResNet also ``stem``),
    transformers chosen blocks' tokens on the patch grid (``block_{i}``; prefix tokens dropped).

    Args:
      model: a jtl vision model.
      variables: its variables.
      images: (N, H, W, C) inputs.
      layers: the stages (CNNs; default all) or blocks (transformers; default the last of each quarter of the
        encoder) to return, 0-based.

    Returns:
      ``{name: FeatureMap}``, from the finest to the coarsest.

    >>> model = create("resnet-testing", num_classes=0)
    >>> maps = feature_maps(model, init(model), jax.numpy.zeros((1, 64, 64, 3)))
    >>> [(name, fm.features.shape[1], fm.stride) for name, fm in maps.items()]
    [('stem', 16, 4), ('stage_0', 16, 4), ('stage_1', 8, 8)]
    """
    family = family_of(model)
    if family.feature_maps is None:
        raise ValueError(f"the {family.name} family offers no feature maps")
    maps = family.feature_maps(model, _intermediates(model, variables, images), layers)
    return {name: FeatureMap(x, images.shape[1] // x.shape[1]) for name, x in maps.items()}


# One compiled program per model (inlined where the caller jits): run eagerly, every op compiles on its own.
@functools.partial(jax.jit, static_argnums=0)
def _intermediates(model: nn.Module, variables: dict, images: jax.Array) -> dict:
    return model.apply(variables, images, mutable=["intermediates"])[1]["intermediates"]


def model_inputs(batch: dict) -> tuple:
    """The positional inputs a jtl model takes from a batch: ``(input_ids, attention_mask)`` for text models,
    ``(audio,)`` or ``(audio, attention_mask)`` for audio models, else ``(image,)``.

    Args:
      batch: a dict of arrays.

    Returns:
      A tuple to unpack into ``model.apply(variables, *inputs)``.

    >>> import numpy as np
    >>> [x.shape for x in model_inputs({"image": np.zeros((2, 8, 8, 1)), "label": np.zeros(2)})]
    [(2, 8, 8, 1)]
    """
    if "input_ids" in batch:
        return (batch["input_ids"], batch["attention_mask"])
    if "audio" in batch:
        return (batch["audio"], batch["attention_mask"]) if "attention_mask" in batch else (batch["audio"],)
    return (batch["image"],)
