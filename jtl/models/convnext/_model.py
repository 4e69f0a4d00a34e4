"""ConvNeXt and ConvNeXt V2 (the architectures of Hugging Face's ``facebook/convnext-*`` and
``facebook/convnextv2-*``), one module: V2 adds Global Response Normalization (``grn``) in each block's MLP and
drops the LayerScale.

Names: ``embed/{patch,norm}``, ``stage_{s}/downsample/{norm,conv}`` (stages after the first),
``stage_{s}/block_{i}/{dwconv,norm,fc1,grn,fc2,scale}``, ``norm`` (after global pooling), ``head``.
Convolutions pad explicitly and symmetrically, as PyTorch does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jtl.models._layers import DropPath, ImageInputs, LayerScale, activation, features_head

INNER_EPS = 1e-6  # the stem's, the downsampling layers' and the blocks' LayerNorms (the final one's is a field)

# name: (blocks per stage, channels per stage), as the hub's config.json files give them
SIZES = {
    "convnext-tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "convnext-small": ((3, 3, 27, 3), (96, 192, 384, 768)),
    "convnext-base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
    "convnext-large": ((3, 3, 27, 3), (192, 384, 768, 1536)),
    "convnextv2-atto": ((2, 2, 6, 2), (40, 80, 160, 320)),
    "convnextv2-femto": ((2, 2, 6, 2), (48, 96, 192, 384)),
    "convnextv2-pico": ((2, 2, 6, 2), (64, 128, 256, 512)),
    "convnextv2-nano": ((2, 2, 8, 2), (80, 160, 320, 640)),
    "convnextv2-tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "convnextv2-base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
    "convnextv2-large": ((3, 3, 27, 3), (192, 384, 768, 1536)),
    "convnextv2-huge": ((3, 3, 27, 3), (352, 704, 1408, 2816)),
}


class GRN(nn.Module):
    """Global Response Normalization (ConvNeXt V2): each channel's L2 norm over the image, divided by the mean of
    those norms over the channels, rescales the input (params ``scale`` and ``bias``, zero-initialised)."""

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width = x.shape[-1]
        scale = self.param("scale", nn.initializers.zeros, (width,), jnp.float32).astype(self.dtype)
        bias = self.param("bias", nn.initializers.zeros, (width,), jnp.float32).astype(self.dtype)
        norms = jnp.sqrt(jnp.sum(jnp.square(x), axis=(1, 2), keepdims=True))
        relative = norms / (norms.mean(axis=-1, keepdims=True) + 1e-6)
        return scale * (x * relative) + bias + x


class Block(nn.Module):
    """Depthwise 7x7 convolution, LayerNorm, MLP (4x wide; GRN inside in V2), LayerScale, residual."""

    hidden_act: str
    layer_scale: float | None
    grn: bool
    drop_path_rate: float
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        width = x.shape[-1]
        y = nn.Conv(
            width, (7, 7), padding=((3, 3), (3, 3)), feature_group_count=width, dtype=self.dtype, name="dwconv"
        )(x)
        y = nn.LayerNorm(epsilon=INNER_EPS, dtype=self.dtype, name="norm")(y)
        y = activation(self.hidden_act)(nn.Dense(4 * width, dtype=self.dtype, name="fc1")(y))
        if self.grn:
            y = GRN(self.dtype, name="grn")(y)
        y = nn.Dense(width, dtype=self.dtype, name="fc2")(y)
        if self.layer_scale is not None:
            y = LayerScale(self.layer_scale, self.dtype, name="scale")(y)
        return x + DropPath(self.drop_path_rate)(y, train=train)


class Downsample(nn.Module):
    """LayerNorm, then a 2x2 stride-2 convolution to the stage's width."""

    width: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.LayerNorm(epsilon=INNER_EPS, dtype=self.dtype, name="norm")(x)
        return nn.Conv(self.width, (2, 2), strides=(2, 2), padding="VALID", dtype=self.dtype, name="conv")(x)


class Stem(nn.Module):
    """A ``patch_size`` x ``patch_size`` convolution at that stride (``patch``), then LayerNorm (``norm``)."""

    width: int
    patch_size: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        p = self.patch_size
        x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype, name="patch")(x)
        return nn.LayerNorm(epsilon=INNER_EPS, dtype=self.dtype, name="norm")(x)


class Stage(nn.Module):
    """The downsampling layer (stages after the first), then ``depth`` blocks named ``block_{i}``."""

    depth: int
    width: int
    downsample: bool
    hidden_act: str
    layer_scale: float | None
    grn: bool
    drop_path_rates: tuple[float, ...]
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        if self.downsample:
            x = Downsample(self.width, self.dtype, name="downsample")(x)
        for i in range(self.depth):
            block = Block(
                self.hidden_act, self.layer_scale, self.grn, self.drop_path_rates[i], self.dtype, name=f"block_{i}"
            )
            x = block(x, train=train)
        return x


class ConvNeXt(ImageInputs, nn.Module):
    """ConvNeXt (``grn=False``, with LayerScale) or ConvNeXt V2 (``grn=True``, ``layer_scale=None``) over NHWC
    images; ``num_classes=0`` returns the pooled, normalised features.

    >>> import jax, jax.numpy as jnp
    >>> model = ConvNeXt(depths=(1, 1), hidden_sizes=(8, 16), num_classes=3)
    >>> variables = model.init(jax.random.PRNGKey(0), *model.example_inputs())
    >>> model.apply(variables, jnp.ones((2, 32, 32, 3))).shape, sorted(variables["params"]["stage_1"])
    ((2, 3), ['block_0', 'downsample'])
    """

    depths: tuple[int, ...] = (3, 3, 9, 3)
    hidden_sizes: tuple[int, ...] = (96, 192, 384, 768)
    patch_size: int = 4
    hidden_act: str = "gelu"
    layer_scale: float | None = 1e-6
    grn: bool = False
    drop_path_rate: float = 0.0
    layer_norm_eps: float = 1e-12
    num_channels: int = 3
    image_size: int = 224
    num_classes: int = 1000
    head_zero_init: bool = False
    dtype: jnp.dtype = jnp.float32

    example_max_size = 64  # example_inputs' size: parameters do not depend on the resolution

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        if len(self.depths) != len(self.hidden_sizes):
            raise ValueError(f"depths {self.depths} and hidden_sizes {self.hidden_sizes} differ in length")
        x = Stem(self.hidden_sizes[0], self.patch_size, self.dtype, name="embed")(images.astype(self.dtype))
        self.sow("intermediates", "hidden_states", x)
        # Stochastic depth grows linearly over the blocks, from 0 to drop_path_rate.
        rates = np.linspace(0.0, self.drop_path_rate, sum(self.depths)).tolist()
        first = 0
        for s, (depth, width) in enumerate(zip(self.depths, self.hidden_sizes, strict=True)):
            x = Stage(
                depth, width, s > 0, self.hidden_act, self.layer_scale, self.grn,
                tuple(rates[first : first + depth]), self.dtype, name=f"stage_{s}",
            )(x, train=train)  # fmt: skip
            first += depth
            self.sow("intermediates", "hidden_states", x)
        x = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="norm")(x.mean(axis=(1, 2)))
        return features_head(self, x)


def convnext_config(name: str) -> dict:
    """Architecture fields for ``convnext-{tiny,small,base,large}`` and
    ``convnextv2-{atto,femto,pico,nano,tiny,base,large,huge}``.

    Args:
      name: one of those names.

    Returns:
      The architecture fields, as ``ConvNeXt``'s keyword arguments.

    >>> convnext_config("convnextv2-atto")["hidden_sizes"], convnext_config("convnextv2-atto")["grn"]
    ((40, 80, 160, 320), True)
    """
    if name not in SIZES:
        raise ValueError(f"unknown ConvNeXt name {name!r}; known: {sorted(SIZES)}")
    depths, hidden = SIZES[name]
    v2 = name.startswith("convnextv2-")
    return {"depths": depths, "hidden_sizes": hidden, "grn": v2, "layer_scale": None if v2 else 1e-6}


_STAGE = re.compile(r"(?:.*/)?stage_(\d+)/(?:block_(\d+)|downsample)/.*")


def feature_maps(model: ConvNeXt, intermediates: dict, layers: Sequence[int] | None) -> dict[str, jax.Array]:
    """The stem's output and each chosen stage's (default: the stem and every stage; see
    :func:`jtl.models.feature_maps`). Hugging Face's ``ConvNextBackbone`` LayerNorms each map it returns with
    norms of its own (a detection neck's): these are the maps before those."""
    stem, *stages = intermediates["hidden_states"]
    chosen = {"stem": stem} if layers is None else {}
    chosen.update({f"stage_{s}": stages[s] for s in (range(len(stages)) if layers is None else layers)})
    return chosen


def layer_index(model: ConvNeXt) -> tuple[Callable[[str], int], int]:
    """The stem is layer 0, blocks count up from 1 through the stages (a stage's downsampling layer goes with its
    first block), the final norm and the head are the top."""
    offsets = [sum(model.depths[:s]) for s in range(len(model.depths))]
    top = sum(model.depths) + 1

    def convnext_layer(name: str) -> int:
        if name.startswith("embed/"):
            return 0
        match = _STAGE.fullmatch(name)
        if not match:
            return top
        return offsets[int(match.group(1))] + int(match.group(2) or 0) + 1

    return convnext_layer, top


CONFIGS: dict[str, dict[str, Any]] = {
    **{name: convnext_config(name) for name in SIZES},
    # The tiny configurations for end-to-end tests.
    "convnext-testing": {"depths": (1, 1), "hidden_sizes": (8, 16), "image_size": 32},
    "convnextv2-testing": {
        "depths": (1, 1),
        "hidden_sizes": (8, 16),
        "image_size": 32,
        "grn": True,
        "layer_scale": None,
    },
}
