"""ResNet v1.5 (the architecture of torchvision's ``resnet*`` and Hugging Face's ``microsoft/resnet-*``).

Names: ``embed/conv``, ``embed/bn``, ``stage_{s}/block_{i}/{conv1,bn1,conv2,bn2[,conv3,bn3]}``,
``stage_{s}/block_{i}/shortcut/{conv,bn}``, ``head``; BatchNorm statistics live in ``batch_stats``.
Convolutions pad explicitly and symmetrically as PyTorch does: flax's ``'SAME'`` pads asymmetrically at
stride 2, which moves ResNet logits by ~2e-2.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jtl.models._layers import ImageInputs, features_head

# name: (block type, blocks per stage, output channels per stage)
SIZES = {
    "resnet-18": ("basic", (2, 2, 2, 2), (64, 128, 256, 512)),
    "resnet-34": ("basic", (3, 4, 6, 3), (64, 128, 256, 512)),
    "resnet-50": ("bottleneck", (3, 4, 6, 3), (256, 512, 1024, 2048)),
    "resnet-101": ("bottleneck", (3, 4, 23, 3), (256, 512, 1024, 2048)),
    "resnet-152": ("bottleneck", (3, 8, 36, 3), (256, 512, 1024, 2048)),
}
BOTTLENECK_REDUCTION = 4


def _conv(features: int, kernel: int, stride: int, name: str, dtype: jnp.dtype) -> nn.Conv:
    pad = kernel // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        dtype=dtype,
        name=name,
    )


class Block(nn.Module):
    """A basic (two 3x3) or bottleneck (1x1, 3x3, 1x1) residual block."""

    out_channels: int
    stride: int
    bottleneck: bool
    downsample_in_bottleneck: bool = False
    bn_momentum: float = 0.9
    bn_eps: float = 1e-5
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        norm = partial(
            nn.BatchNorm,
            use_running_average=not train,
            momentum=self.bn_momentum,
            epsilon=self.bn_eps,
            dtype=self.dtype,
        )
        residual = x
        if x.shape[-1] != self.out_channels or self.stride != 1:
            residual = ShortCut(
                self.out_channels, self.stride, self.bn_momentum, self.bn_eps, self.dtype, name="shortcut"
            )(x, train=train)
        if self.bottleneck:
            mid = self.out_channels // BOTTLENECK_REDUCTION
            first_stride = self.stride if self.downsample_in_bottleneck else 1
            y = nn.relu(norm(name="bn1")(_conv(mid, 1, first_stride, "conv1", self.dtype)(x)))
            y = nn.relu(norm(name="bn2")(_conv(mid, 3, self.stride // first_stride, "conv2", self.dtype)(y)))
            y = norm(name="bn3")(_conv(self.out_channels, 1, 1, "conv3", self.dtype)(y))
        else:
            y = nn.relu(norm(name="bn1")(_conv(self.out_channels, 3, self.stride, "conv1", self.dtype)(x)))
            y = norm(name="bn2")(_conv(self.out_channels, 3, 1, "conv2", self.dtype)(y))
        return nn.relu(y + residual)


class Stage(nn.Module):
    """``depth`` blocks named ``block_{i}``; the first one changes the stride and width."""

    depth: int
    out_channels: int
    first_stride: int
    bottleneck: bool
    downsample_in_bottleneck: bool
    bn_momentum: float
    bn_eps: float
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        for i in range(self.depth):
            x = Block(
                self.out_channels,
                self.first_stride if i == 0 else 1,
                self.bottleneck,
                self.downsample_in_bottleneck,
                self.bn_momentum,
                self.bn_eps,
                self.dtype,
                name=f"block_{i}",
            )(x, train=train)
        return x


class ShortCut(nn.Module):
    out_channels: int
    stride: int
    bn_momentum: float
    bn_eps: float
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = _conv(self.out_channels, 1, self.stride, "conv", self.dtype)(x)
        bn = nn.BatchNorm(
            use_running_average=not train, momentum=self.bn_momentum, epsilon=self.bn_eps, dtype=self.dtype, name="bn"
        )
        return bn(x)


class Stem(nn.Module):
    width: int
    bn_momentum: float
    bn_eps: float
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = _conv(self.width, 7, 2, "conv", self.dtype)(x)
        bn = nn.BatchNorm(
            use_running_average=not train, momentum=self.bn_momentum, epsilon=self.bn_eps, dtype=self.dtype, name="bn"
        )
        x = nn.relu(bn(x))
        return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


class ResNet(ImageInputs, nn.Module):
    """ResNet over NHWC images; ``num_classes=0`` returns the globally pooled features.

    >>> import jax, jax.numpy as jnp
    >>> model = ResNet(depths=(1, 1), hidden_sizes=(8, 16), embedding_size=8, num_classes=3)
    >>> variables = model.init(jax.random.PRNGKey(0), *model.example_inputs())
    >>> sorted(variables), model.apply(variables, jnp.ones((2, 32, 32, 3))).shape
    (['batch_stats', 'params'], (2, 3))
    """

    depths: tuple[int, ...] = (2, 2, 2, 2)
    hidden_sizes: tuple[int, ...] = (64, 128, 256, 512)
    embedding_size: int = 64
    layer_type: str = "basic"
    downsample_in_first_stage: bool = False
    downsample_in_bottleneck: bool = False
    num_channels: int = 3
    image_size: int = 224
    num_classes: int = 1000
    bn_momentum: float = 0.9
    bn_eps: float = 1e-5
    head_zero_init: bool = False
    dtype: jnp.dtype = jnp.float32

    example_max_size = 64  # example_inputs' size: parameters do not depend on the resolution

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        if self.layer_type not in ("basic", "bottleneck"):
            raise ValueError(f"ResNet layer_type must be 'basic' or 'bottleneck', got {self.layer_type!r}")
        if len(self.depths) != len(self.hidden_sizes):
            raise ValueError(f"depths {self.depths} and hidden_sizes {self.hidden_sizes} differ in length")
        x = Stem(self.embedding_size, self.bn_momentum, self.bn_eps, self.dtype, name="embed")(
            images.astype(self.dtype), train=train
        )
        self.sow("intermediates", "hidden_states", x)
        for s, (depth, width) in enumerate(zip(self.depths, self.hidden_sizes, strict=True)):
            x = Stage(
                depth=depth,
                out_channels=width,
                first_stride=2 if s > 0 or self.downsample_in_first_stage else 1,
                bottleneck=self.layer_type == "bottleneck",
                downsample_in_bottleneck=self.downsample_in_bottleneck,
                bn_momentum=self.bn_momentum,
                bn_eps=self.bn_eps,
                dtype=self.dtype,
                name=f"stage_{s}",
            )(x, train=train)
            self.sow("intermediates", "hidden_states", x)
        x = x.mean(axis=(1, 2))
        return features_head(self, x)


def resnet_config(name: str) -> dict:
    """Architecture fields for ``resnet-{18,34,50,101,152}``.

    Args:
      name: ``resnet-18``, ``resnet-34``, ``resnet-50``, ``resnet-101`` or ``resnet-152``.

    Returns:
      The architecture fields, as ``ResNet``'s keyword arguments.

    >>> resnet_config("resnet-50")["layer_type"]
    'bottleneck'
    """
    if name not in SIZES:
        raise ValueError(f"unknown ResNet name {name!r}; known: {sorted(SIZES)}")
    layer_type, depths, hidden = SIZES[name]
    return {"layer_type": layer_type, "depths": depths, "hidden_sizes": hidden, "embedding_size": 64}


_STAGE_BLOCK = re.compile(r"(?:.*/)?stage_(\d+)/block_(\d+)/.*")


def feature_maps(model: ResNet, intermediates: dict, layers: Sequence[int] | None) -> dict[str, jax.Array]:
    """The stem's output and each chosen stage's (default: the stem and every stage; see
    :func:`jtl.models.feature_maps`)."""
    stem, *stages = intermediates["hidden_states"]
    chosen = {"stem": stem} if layers is None else {}
    chosen.update({f"stage_{s}": stages[s] for s in (range(len(stages)) if layers is None else layers)})
    return chosen


def layer_index(model: ResNet) -> tuple[Callable[[str], int], int]:
    """The stem is layer 0, blocks count up from 1 through the stages, the head is the top."""
    offsets = [sum(model.depths[:s]) for s in range(len(model.depths))]
    top = sum(model.depths) + 1

    def resnet_layer(name: str) -> int:
        if name.startswith("embed/"):
            return 0
        match = _STAGE_BLOCK.fullmatch(name)
        return offsets[int(match.group(1))] + int(match.group(2)) + 1 if match else top

    return resnet_layer, top


CONFIGS: dict[str, dict[str, Any]] = {
    **{name: resnet_config(name) for name in SIZES},
    # The tiny configuration for end-to-end tests.
    "resnet-testing": {"depths": (1, 1), "hidden_sizes": (8, 16), "embedding_size": 8, "image_size": 32},
}
