"""Model registry: names -> architectures, from-scratch creation, and each family's layer-index function."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax

import jtl.masking as jm
from jtl.masking import block_layer_index
from jtl.models import bert, resnet, vgg, vit

# Tiny configurations of every family, for end-to-end tests (vit_jax's `testing` model configs).
TESTING = {
    "vit-testing": (
        vit.ViT,
        {"patch_size": 4, "hidden_size": 16, "num_layers": 2, "num_heads": 2, "mlp_dim": 32, "image_size": 16},
    ),
    "bert-testing": (
        bert.Bert,
        {
            "vocab_size": 100,
            "hidden_size": 16,
            "num_layers": 2,
            "num_heads": 2,
            "intermediate_size": 32,
            "max_position_embeddings": 32,
        },
    ),
    "resnet-testing": (
        resnet.ResNet,
        {"depths": (1, 1), "hidden_sizes": (8, 16), "embedding_size": 8, "image_size": 32},
    ),
    "vgg-testing": (
        vgg.VGG,
        {"layers": (8, "M", 16, "M"), "classifier_width": 16, "pool_size": 2, "image_size": 16},
    ),
}


# The offline testbeds' model (configs/quickstart.py, domain_adaptation.py, multitask.py): a small ViT over
# scikit-learn's 8x8 one-channel digits, 2x2 patches, 18k parameters.
DIGITS = {
    "vit-digits": (
        vit.ViT,
        {
            "image_size": 8,
            "patch_size": 2,
            "num_channels": 1,
            "hidden_size": 32,
            "num_heads": 2,
            "mlp_dim": 64,
            "num_layers": 2,
            "dropout_rate": 0.1,
            "head_zero_init": False,
        },
    ),
}


def _registry() -> dict[str, tuple[type[nn.Module], dict[str, Any]]]:
    entries: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {**TESTING, **DIGITS}
    for size in vit.SIZES:
        for patch in vit.PATCHES:
            name = f"vit-{size}{patch}"
            entries[name] = (vit.ViT, vit.vit_config(name))
    entries.update({name: (bert.Bert, bert.bert_config(name)) for name in bert.SIZES})
    entries.update({name: (resnet.ResNet, resnet.resnet_config(name)) for name in resnet.SIZES})
    entries.update({name: (vgg.VGG, vgg.vgg_config(name)) for name in vgg.CONFIGS})
    return entries


REGISTRY = _registry()


def available() -> list[str]:
    """Returns the names :func:`create` accepts.

    Returns:
      Sorted model names.

    >>> [n for n in available() if n.startswith("resnet-")]
    ['resnet-101', 'resnet-152', 'resnet-18', 'resnet-34', 'resnet-50', 'resnet-testing']
    """
    return sorted(REGISTRY)


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
    if name not in REGISTRY:
        close = [n for n in available() if n.split("-")[0] == name.split("-")[0]] or available()
        raise ValueError(f"unknown model {name!r}; known: {close}")
    cls, fields = REGISTRY[name]
    unknown = set(overrides) - set(cls.__dataclass_fields__)
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
    return cls(**{**fields, "num_classes": num_classes, **overrides})


def init(model: nn.Module, seed: int = 0) -> dict[str, Any]:
    """Initialises a model's variables from its example inputs.

    Args:
      model: a jtl model.
      seed: the PRNG seed.

    Returns:
      The variables (``{"params": ..., "batch_stats": ...}``).

    >>> sorted(init(create("resnet-testing", num_classes=2)))
    ['batch_stats', 'params']
    """
    # One compiled program: run eagerly, every initialiser op would compile on its own (seconds on CPU).
    return jax.jit(model.init)(jax.random.PRNGKey(seed), *model.example_inputs())


_STAGE_BLOCK = re.compile(r"(?:.*/)?stage_(\d+)/block_(\d+)/.*")
_VGG_BLOCK = re.compile(r"(?:.*/)?encoder/block_(\d+)/.*")


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
    if isinstance(model, vit.ViT | bert.Bert):
        return block_layer_index(model.num_layers), model.num_layers + 1
    if isinstance(model, resnet.ResNet):
        offsets = [sum(model.depths[:s]) for s in range(len(model.depths))]
        top = sum(model.depths) + 1

        def resnet_layer(name: str) -> int:
            if name.startswith("embed/"):
                return 0
            match = _STAGE_BLOCK.fullmatch(name)
            return offsets[int(match.group(1))] + int(match.group(2)) + 1 if match else top

        return resnet_layer, top
    if isinstance(model, vgg.VGG):
        convs = sum(1 for layer in model.layers if layer != vgg.POOL)
        top = convs + 2
        fixed = {"fc1": convs, "fc2": convs + 1}

        def vgg_layer(name: str) -> int:
            match = _VGG_BLOCK.fullmatch(name)
            return int(match.group(1)) if match else fixed.get(name.split("/")[0], top)

        return vgg_layer, top
    raise TypeError(f"no layer index for {type(model).__name__}")


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


def model_inputs(batch: dict) -> tuple:
    """The positional inputs a jtl model takes from a batch: ``(input_ids, attention_mask)`` for text models,
    else ``(image,)``.

    Args:
      batch: a dict of arrays.

    Returns:
      A tuple to unpack into ``model.apply(variables, *inputs)``.

    >>> import numpy as np
    >>> [x.shape for x in model_inputs({"image": np.zeros((2, 8, 8, 1)), "label": np.zeros(2)})]
    [(2, 8, 8, 1)]
    """
    return (batch["input_ids"], batch["attention_mask"]) if "input_ids" in batch else (batch["image"],)
