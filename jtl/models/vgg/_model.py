"""VGG in the torchvision layout, the classic feature extractor.

Names: ``encoder/block_{i}`` for the i-th 3x3 convolution, ``fc1``, ``fc2`` and ``head`` for the classifier.
As in torchvision, the features are average-pooled to a fixed 7x7 grid (adaptively) before the classifier.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jtl.models._layers import ImageInputs, features_head

POOL = "M"
# torchvision's configurations "D" (VGG16) and "E" (VGG19).
SIZES = {
    "vgg16": (64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL, 512, 512, 512, POOL, 512, 512, 512, POOL),
    "vgg19": (
        64,
        64,
        POOL,
        128,
        128,
        POOL,
        256,
        256,
        256,
        256,
        POOL,
        512,
        512,
        512,
        512,
        POOL,
        512,
        512,
        512,
        512,
        POOL,
    ),
}


def adaptive_avg_pool(x: jax.Array, size: int) -> jax.Array:
    """PyTorch's ``AdaptiveAvgPool2d(size)`` on NHWC: window ``i`` spans ``[floor(i*H/size), ceil((i+1)*H/size))``.

    Args:
      x: (batch, height, width, channels).
      size: the output grid size.

    Returns:
      (batch, size, size, channels).

    >>> adaptive_avg_pool(jnp.arange(4.0).reshape(1, 2, 2, 1), 1).ravel().tolist()
    [1.5]
    """

    def windows(n: int) -> list[tuple[int, int]]:
        return [((i * n) // size, -(-((i + 1) * n) // size)) for i in range(size)]

    rows = [x[:, a:b].mean(axis=1, keepdims=True) for a, b in windows(x.shape[1])]
    x = jnp.concatenate(rows, axis=1)
    cols = [x[:, :, a:b].mean(axis=2, keepdims=True) for a, b in windows(x.shape[2])]
    return jnp.concatenate(cols, axis=2)


class Convs(nn.Module):
    layers: tuple
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        block = 0
        for layer in self.layers:
            if layer == POOL:
                self.sow("intermediates", "hidden_states", x)  # each stage's output, before its pooling
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
            else:
                x = nn.Conv(layer, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype, name=f"block_{block}")(x)
                x = nn.relu(x)
                block += 1
        return x


class VGG(ImageInputs, nn.Module):
    """VGG over NHWC images; ``num_classes=0`` returns the ``fc2`` features (4096-d for VGG16).

    >>> import jax, jax.numpy as jnp
    >>> model = VGG(layers=(4, "M", 8, "M"), classifier_width=16, pool_size=2, num_classes=3, image_size=16)
    >>> variables = model.init(jax.random.PRNGKey(0), *model.example_inputs())
    >>> model.apply(variables, jnp.ones((2, 16, 16, 3))).shape
    (2, 3)
    """

    layers: tuple = SIZES["vgg16"]
    classifier_width: int = 4096
    pool_size: int = 7
    dropout_rate: float = 0.5
    num_channels: int = 3
    image_size: int = 224
    num_classes: int = 1000
    head_zero_init: bool = False
    dtype: jnp.dtype = jnp.float32

    example_max_size = 32  # example_inputs' size: parameters do not depend on the resolution

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        x = Convs(tuple(self.layers), self.dtype, name="encoder")(images.astype(self.dtype))
        x = adaptive_avg_pool(x, self.pool_size).reshape(x.shape[0], -1)
        for name in ("fc1", "fc2"):
            x = nn.relu(nn.Dense(self.classifier_width, dtype=self.dtype, name=name)(x))
            x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
        return features_head(self, x)


def vgg_config(name: str) -> dict:
    """Architecture fields for ``vgg16`` and ``vgg19``.

    Args:
      name: ``vgg16`` or ``vgg19``.

    Returns:
      The architecture fields, as ``VGG``'s keyword arguments.

    >>> len([layer for layer in vgg_config("vgg16")["layers"] if layer != "M"])
    13
    """
    if name not in SIZES:
        raise ValueError(f"unknown VGG name {name!r}; known: {sorted(SIZES)}")
    return {"layers": SIZES[name]}


_BLOCK = re.compile(r"(?:.*/)?encoder/block_(\d+)/.*")


def feature_maps(model: VGG, intermediates: dict, layers: Sequence[int] | None) -> dict[str, jax.Array]:
    """Each chosen stage's output before its max-pooling (default: every stage; see
    :func:`jtl.models.feature_maps`)."""
    stages = intermediates["encoder"]["hidden_states"]
    return {f"stage_{s}": stages[s] for s in (range(len(stages)) if layers is None else layers)}


def layer_index(model: VGG) -> tuple[Callable[[str], int], int]:
    """Convolution ``block_{i}`` is layer ``i`` (the first is 0), then ``fc1``, ``fc2``, and the head on top."""
    convs = sum(1 for layer in model.layers if layer != POOL)
    top = convs + 2
    fixed = {"fc1": convs, "fc2": convs + 1}

    def vgg_layer(name: str) -> int:
        match = _BLOCK.fullmatch(name)
        return int(match.group(1)) if match else fixed.get(name.split("/")[0], top)

    return vgg_layer, top


CONFIGS: dict[str, dict[str, Any]] = {
    **{name: vgg_config(name) for name in SIZES},
    # The tiny configuration for end-to-end tests.
    "vgg-testing": {"layers": (8, "M", 16, "M"), "classifier_width": 16, "pool_size": 2, "image_size": 16},
}
