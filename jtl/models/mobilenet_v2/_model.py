"""MobileNetV2 (the architecture of Hugging Face's ``google/mobilenet_v2_*``, converted from TensorFlow): inverted
residual blocks, BatchNorm (statistics in ``batch_stats``), ReLU6.

Names: ``embed/{conv,expand,depthwise,project}/{conv,bn}`` (the stem: a 3x3 convolution and the first inverted
residual, which has no 1x1 expansion unless ``first_layer_is_expansion`` is False),
``encoder/block_{n}/{expand,depthwise,project}/{conv,bn}``, ``top/{conv,bn}`` (the 1x1 convolution before pooling),
``head``. Blocks are numbered as Hugging Face numbers them (``layer.{n}``).

With ``tf_padding`` (the converted checkpoints' default) every convolution pads as TensorFlow's ``'SAME'`` does, from
the input's size: the extra pixel of an odd total goes to the bottom/right. Without it, PyTorch's symmetric padding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jtl.masking import block_layer_index
from jtl.models._conv import ConvBN
from jtl.models._layers import ImageInputs, features_head

# The 16 inverted residual blocks after the stem: output channels (before the depth multiplier) and strides.
CHANNELS = (16, 24, 24, 32, 32, 32, 64, 64, 64, 64, 96, 96, 96, 160, 160, 160, 320)
STRIDES = (2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1)

# name: (depth multiplier, image size), as the hub's google/mobilenet_v2_{multiplier}_{size} give them
SIZES = {
    "mobilenet_v2-1.4-224": (1.4, 224),
    "mobilenet_v2-1.0-224": (1.0, 224),
    "mobilenet_v2-0.75-160": (0.75, 160),
    "mobilenet_v2-0.35-96": (0.35, 96),
}


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """A channel count rounded to a multiple of ``divisor`` (at least ``min_value``, never down by more than
    10%), as TensorFlow's and Hugging Face's ``make_divisible``.

    Args:
      value: the scaled count.
      divisor: the multiple.
      min_value: the smallest result (default ``divisor``).

    Returns:
      The count.

    >>> make_divisible(32 * 0.35), make_divisible(1280 * 1.4)
    (16, 1792)
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * value else rounded)


class InvertedResidual(nn.Module):
    """1x1 ``expand`` (optional), 3x3 ``depthwise``, linear 1x1 ``project``; the input is added back where the
    shape allows."""

    out_channels: int
    expanded: int
    stride: int
    dilation: int
    expand: bool
    residual: bool
    layer: Callable[..., ConvBN]
    hidden_act: str

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        y = x
        if self.expand:
            y = self.layer(self.expanded, act=self.hidden_act, name="expand")(y, train=train)
        y = self.layer(self.expanded, 3, self.stride, self.expanded, self.dilation, self.hidden_act, name="depthwise")(
            y, train=train
        )
        y = self.layer(self.out_channels, name="project")(y, train=train)
        return x + y if self.residual else y


class MobileNetV2(ImageInputs, nn.Module):
    """MobileNetV2 over NHWC images; ``num_classes=0`` returns the pooled features.

    The fields are Hugging Face's ``MobileNetV2Config``'s. ``bn_momentum`` follows Flax's convention (the running
    statistics keep ``momentum`` of themselves per step): TensorFlow's 0.997, as the checkpoints were trained.

    >>> import jax, jax.numpy as jnp
    >>> model = MobileNetV2(depth_multiplier=0.35, image_size=32, num_classes=3)
    >>> variables = jax.jit(model.init)(jax.random.PRNGKey(0), *model.example_inputs())
    >>> jax.jit(model.apply)(variables, jnp.ones((2, 32, 32, 3))).shape, len(variables["params"]["encoder"])
    ((2, 3), 16)
    """

    depth_multiplier: float = 1.0
    depth_divisible_by: int = 8
    min_depth: int = 8
    expand_ratio: float = 6.0
    output_stride: int = 32
    first_layer_is_expansion: bool = True
    finegrained_output: bool = True
    hidden_act: str = "relu6"
    tf_padding: bool = True
    bn_eps: float = 1e-3
    bn_momentum: float = 0.997
    dropout_rate: float = 0.2
    num_channels: int = 3
    image_size: int = 224
    num_classes: int = 1000
    head_zero_init: bool = False
    dtype: jnp.dtype = jnp.float32

    example_max_size = 64  # example_inputs' size: parameters do not depend on the resolution

    def _channels(self, channels: int) -> int:
        return make_divisible(round(channels * self.depth_multiplier), self.depth_divisible_by, self.min_depth)

    def block_fields(self) -> list[dict[str, Any]]:
        """Each of the 16 blocks' stride, dilation and widths; past ``output_stride`` strides become dilations."""
        channels = [self._channels(c) for c in CHANNELS]
        blocks, current, dilation = [], 2, 1
        for i, block_stride in enumerate(STRIDES):
            if current == self.output_stride:
                stride, block_dilation = 1, dilation
                dilation *= block_stride
            else:
                stride, block_dilation = block_stride, 1
                current *= stride
            expanded = make_divisible(round(channels[i] * self.expand_ratio), self.depth_divisible_by, self.min_depth)
            blocks.append(
                {
                    "out_channels": channels[i + 1],
                    "expanded": expanded,
                    "stride": stride,
                    "dilation": block_dilation,
                    "residual": stride == 1 and channels[i] == channels[i + 1],
                }
            )
        return blocks

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        padding = "tf_same" if self.tf_padding else "symmetric"
        layer = partial(ConvBN, padding=padding, bn_momentum=self.bn_momentum, bn_eps=self.bn_eps, dtype=self.dtype)
        x = Stem(
            self._channels(32), self._channels(CHANNELS[0]), self.first_layer_is_expansion, layer, self.hidden_act,
            name="embed",
        )(images.astype(self.dtype), train=train)  # fmt: skip
        self.sow("intermediates", "hidden_states", x)  # not among Hugging Face's hidden states: a feature map
        x = Encoder(tuple(self.block_fields()), layer, self.hidden_act, name="encoder")(x, train=train)
        top = 1280 if self.finegrained_output and self.depth_multiplier < 1.0 else self._channels(1280)
        x = layer(top, act=self.hidden_act, name="top")(x, train=train)
        x = x.mean(axis=(1, 2))
        return features_head(self, x, self.dropout_rate, train=train)


class Stem(nn.Module):
    """A 3x3 stride-2 convolution (``conv``), then an inverted residual without its residual: ``expand`` (only
    where ``first_layer_is_expansion`` is False), ``depthwise``, ``project``."""

    expanded: int
    out_channels: int
    first_layer_is_expansion: bool
    layer: Callable[..., ConvBN]
    hidden_act: str

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = self.layer(self.expanded, 3, 2, act=self.hidden_act, name="conv")(x, train=train)
        if not self.first_layer_is_expansion:
            x = self.layer(self.expanded, act=self.hidden_act, name="expand")(x, train=train)
        x = self.layer(self.expanded, 3, 1, self.expanded, act=self.hidden_act, name="depthwise")(x, train=train)
        return self.layer(self.out_channels, name="project")(x, train=train)


class Encoder(nn.Module):
    """The 16 inverted residual blocks, ``block_{n}``."""

    blocks: tuple[dict[str, Any], ...]
    layer: Callable[..., ConvBN]
    hidden_act: str

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        for n, fields in enumerate(self.blocks):
            block = InvertedResidual(
                **fields, expand=True, layer=self.layer, hidden_act=self.hidden_act, name=f"block_{n}"
            )
            x = block(x, train=train)
            self.sow("intermediates", "hidden_states", x)
        return x


def mobilenet_v2_config(name: str) -> dict:
    """Architecture fields for ``mobilenet_v2-{1.4-224,1.0-224,0.75-160,0.35-96}``.

    Args:
      name: one of those names.

    Returns:
      The architecture fields, as ``MobileNetV2``'s keyword arguments.

    >>> mobilenet_v2_config("mobilenet_v2-0.35-96")
    {'depth_multiplier': 0.35, 'image_size': 96}
    """
    if name not in SIZES:
        raise ValueError(f"unknown MobileNetV2 name {name!r}; known: {sorted(SIZES)}")
    multiplier, size = SIZES[name]
    return {"depth_multiplier": multiplier, "image_size": size}


def feature_maps(model: MobileNetV2, intermediates: dict, layers: Sequence[int] | None) -> dict[str, jax.Array]:
    """The last block's output at each resolution, ``stage_{s}`` (the stem's output is stage 0; see
    :func:`jtl.models.feature_maps`); default: every stage."""
    blocks = [*intermediates["hidden_states"], *intermediates["encoder"]["hidden_states"]]
    ends = [n for n in range(len(blocks)) if n + 1 == len(blocks) or blocks[n + 1].shape[1] != blocks[n].shape[1]]
    return {f"stage_{s}": blocks[ends[s]] for s in (range(len(ends)) if layers is None else layers)}


def layer_index(model: MobileNetV2) -> tuple[Callable[[str], int], int]:
    """The stem is layer 0, block n is n + 1, the top convolution and the head are the top (17)."""
    return block_layer_index(len(STRIDES)), len(STRIDES) + 1


CONFIGS: dict[str, dict[str, Any]] = {
    **{name: mobilenet_v2_config(name) for name in SIZES},
    # The tiny configuration for end-to-end tests: the narrowest widths (8 channels, expanded 48 at most).
    "mobilenet_v2-testing": {
        "depth_multiplier": 0.05,
        "image_size": 32,
        "expand_ratio": 2.0,
        "finegrained_output": False,
    },  # 8 channels (16 expanded), 64 before pooling
}
