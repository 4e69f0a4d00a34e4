"""EfficientNet (the architecture of Hugging Face's ``google/efficientnet-b*``): MBConv blocks with
squeeze-and-excitation, BatchNorm (statistics in ``batch_stats``) and swish.

Names: ``embed/{conv,bn}``, ``encoder/block_{n}/{expand,depthwise,project}/{conv,bn}``,
``encoder/block_{n}/se/{reduce,expand}``, ``top/{conv,bn}`` (the 1x1 convolution before pooling), ``head``.
Blocks are numbered through the whole network, as Hugging Face numbers them: a checkpoint's tensors do not say
where one stage (one row of the architecture table) ends and the next begins, its ``config.json`` does; the
stages are in :func:`stage_ends`.

Padding is explicit, as Hugging Face pads: the stem and stride-2 depthwise convolutions pad one more pixel at the
bottom/right than at the top/left (TensorFlow's ``'SAME'``), except the blocks listed in ``depthwise_padding``,
which pad symmetrically; stride-1 convolutions pad symmetrically.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jtl.masking import block_layer_index
from jtl.models._conv import ConvBN
from jtl.models._layers import ImageInputs, activation, features_head

# name: (width coefficient, depth coefficient, image size, dropout rate), as the hub's config.json files give them
SIZES = {
    "efficientnet-b0": (1.0, 1.0, 224, 0.2),
    "efficientnet-b1": (1.0, 1.1, 240, 0.2),
    "efficientnet-b2": (1.1, 1.2, 260, 0.3),
    "efficientnet-b3": (1.2, 1.4, 300, 0.3),
    "efficientnet-b4": (1.4, 1.8, 380, 0.4),
    "efficientnet-b5": (1.6, 2.2, 456, 0.4),
    "efficientnet-b6": (1.8, 2.6, 528, 0.5),
    "efficientnet-b7": (2.0, 3.1, 600, 0.5),
}
# The b7 checkpoints pad these depthwise convolutions symmetrically (transformers' convert script).
B7_DEPTHWISE_PADDING = (11, 18, 38)


def round_filters(channels: int, width_coefficient: float, divisor: int) -> int:
    """A stage's width scaled by ``width_coefficient`` and rounded to a multiple of ``divisor`` (never down by
    more than 10%), as Hugging Face's and TensorFlow's ``round_filters``.

    Args:
      channels: the base width.
      width_coefficient: the scale.
      divisor: the multiple.

    Returns:
      The width.

    >>> round_filters(32, 1.1, 8), round_filters(1280, 2.0, 8)
    (32, 2560)
    """
    scaled = channels * width_coefficient
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def _pad(kernel: int, stride: int, symmetric: bool) -> tuple[tuple[int, int], tuple[int, int]]:
    half = kernel // 2
    before = half if stride == 1 or symmetric else half - 1
    return ((before, half), (before, half))


class SqueezeExcite(nn.Module):
    """Global average pooling, 1x1 ``reduce``, the activation, 1x1 ``expand``, sigmoid: a per-channel gate."""

    channels: int
    hidden_act: str
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        s = x.mean(axis=(1, 2), keepdims=True)
        s = activation(self.hidden_act)(nn.Conv(self.channels, (1, 1), dtype=self.dtype, name="reduce")(s))
        return x * nn.sigmoid(nn.Conv(x.shape[-1], (1, 1), dtype=self.dtype, name="expand")(s))


class MBConv(nn.Module):
    """An inverted residual block: 1x1 expansion (unless ``expand_ratio`` is 1), depthwise convolution,
    squeeze-and-excitation, 1x1 projection; the input is added back on every block but a stage's first."""

    out_channels: int
    stride: int
    kernel_size: int
    expand_ratio: int
    se_channels: int
    symmetric_padding: bool
    residual: bool
    drop_rate: float
    hidden_act: str
    bn_momentum: float
    bn_eps: float
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        conv_bn = partial(ConvBN, bn_momentum=self.bn_momentum, bn_eps=self.bn_eps, dtype=self.dtype)
        y = x
        width = x.shape[-1] * self.expand_ratio
        if self.expand_ratio != 1:
            y = conv_bn(width, act=self.hidden_act, name="expand")(y, train=train)
        k = self.kernel_size
        padding = _pad(k, self.stride, self.symmetric_padding)
        y = conv_bn(width, k, self.stride, width, act=self.hidden_act, padding=padding, name="depthwise")(
            y, train=train
        )
        y = SqueezeExcite(self.se_channels, self.hidden_act, self.dtype, name="se")(y)
        y = conv_bn(self.out_channels, name="project")(y, train=train)
        if not self.residual:
            return y
        # Hugging Face drops single activations here (nn.Dropout), not whole examples' branches.
        return nn.Dropout(self.drop_rate)(y, deterministic=not train) + x


class Encoder(nn.Module):
    """The blocks, ``block_{n}`` numbered through all stages."""

    blocks: tuple[dict[str, Any], ...]
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        for n, fields in enumerate(self.blocks):
            x = MBConv(**fields, dtype=self.dtype, name=f"block_{n}")(x, train=train)
            self.sow("intermediates", "hidden_states", x)
        return x


class EfficientNet(ImageInputs, nn.Module):
    """EfficientNet over NHWC images; ``num_classes=0`` returns the pooled features.

    The fields are Hugging Face's ``EfficientNetConfig``'s (base widths, repeats, kernel sizes per stage, scaled
    by ``width_coefficient``/``depth_coefficient``). ``bn_momentum`` follows Flax's convention (the running
    statistics keep ``momentum`` of themselves per step), the original TensorFlow models' 0.99.

    >>> import jax, jax.numpy as jnp
    >>> model = EfficientNet(width_coefficient=0.25, depth_coefficient=0.3, num_classes=3)
    >>> variables = jax.jit(model.init)(jax.random.PRNGKey(0), *model.example_inputs())
    >>> jax.jit(model.apply)(variables, jnp.ones((2, 32, 32, 3))).shape, len(variables["params"]["encoder"])
    ((2, 3), 8)
    """

    width_coefficient: float = 1.0
    depth_coefficient: float = 1.0
    depth_divisor: int = 8
    kernel_sizes: tuple[int, ...] = (3, 3, 5, 3, 5, 5, 3)
    in_channels: tuple[int, ...] = (32, 16, 24, 40, 80, 112, 192)
    out_channels: tuple[int, ...] = (16, 24, 40, 80, 112, 192, 320)
    strides: tuple[int, ...] = (1, 2, 2, 2, 1, 2, 1)
    num_block_repeats: tuple[int, ...] = (1, 2, 2, 3, 3, 4, 1)
    expand_ratios: tuple[int, ...] = (1, 6, 6, 6, 6, 6, 6)
    depthwise_padding: tuple[int, ...] = ()
    squeeze_expansion_ratio: float = 0.25
    hidden_act: str = "swish"
    pooling_type: str = "mean"
    bn_eps: float = 1e-3
    bn_momentum: float = 0.99
    dropout_rate: float = 0.2
    drop_connect_rate: float = 0.2
    num_channels: int = 3
    image_size: int = 224
    num_classes: int = 1000
    head_zero_init: bool = False
    dtype: jnp.dtype = jnp.float32

    example_max_size = 64  # example_inputs' size: parameters do not depend on the resolution

    def _filters(self, channels: int) -> int:
        return round_filters(channels, self.width_coefficient, self.depth_divisor)

    def repeats(self) -> tuple[int, ...]:
        """The blocks in each stage, after the depth scaling."""
        return tuple(math.ceil(self.depth_coefficient * n) for n in self.num_block_repeats)

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        if self.pooling_type not in ("mean", "max"):
            raise ValueError(f"EfficientNet pooling_type must be 'mean' or 'max', got {self.pooling_type!r}")
        conv_bn = partial(
            ConvBN, act=self.hidden_act, bn_momentum=self.bn_momentum, bn_eps=self.bn_eps, dtype=self.dtype
        )
        # The stem pads one pixel at the bottom and right only, as TensorFlow's 'SAME' at stride 2.
        x = conv_bn(self._filters(32), 3, 2, padding=((0, 1), (0, 1)), name="embed")(
            images.astype(self.dtype), train=train
        )
        self.sow("intermediates", "hidden_states", x)
        x = Encoder(self.block_fields(), self.dtype, name="encoder")(x, train=train)
        x = conv_bn(self._filters(1280), name="top")(x, train=train)
        x = x.mean(axis=(1, 2)) if self.pooling_type == "mean" else x.max(axis=(1, 2))
        return features_head(self, x, self.dropout_rate, train=train)

    def block_fields(self) -> tuple[dict[str, Any], ...]:
        """Each block's :class:`MBConv` fields, through all stages."""
        repeats = self.repeats()
        total, blocks = sum(repeats), []
        for s, count in enumerate(repeats):
            for i in range(count):
                n = len(blocks)
                in_channels = self._filters(self.in_channels[s] if i == 0 else self.out_channels[s])
                blocks.append(
                    {
                        "out_channels": self._filters(self.out_channels[s]),
                        "stride": self.strides[s] if i == 0 else 1,
                        "kernel_size": self.kernel_sizes[s],
                        "expand_ratio": self.expand_ratios[s],
                        "se_channels": max(1, int(in_channels * self.squeeze_expansion_ratio)),
                        "symmetric_padding": n in self.depthwise_padding,
                        "residual": i > 0,
                        "drop_rate": self.drop_connect_rate * n / total,
                        "hidden_act": self.hidden_act,
                        "bn_momentum": self.bn_momentum,
                        "bn_eps": self.bn_eps,
                    }
                )
        return tuple(blocks)


def efficientnet_config(name: str) -> dict:
    """Architecture fields for ``efficientnet-b{0..7}``.

    Args:
      name: ``efficientnet-b0`` ... ``efficientnet-b7``.

    Returns:
      The architecture fields, as ``EfficientNet``'s keyword arguments.

    >>> efficientnet_config("efficientnet-b7")["depthwise_padding"]
    (11, 18, 38)
    """
    if name not in SIZES:
        raise ValueError(f"unknown EfficientNet name {name!r}; known: {sorted(SIZES)}")
    width, depth, size, dropout = SIZES[name]
    return {
        "width_coefficient": width,
        "depth_coefficient": depth,
        "image_size": size,
        "dropout_rate": dropout,
        "depthwise_padding": B7_DEPTHWISE_PADDING if name == "efficientnet-b7" else (),
    }


def stage_ends(model: EfficientNet) -> list[int]:
    """The index of each stage's last block (stages: the rows of the architecture table).

    >>> stage_ends(EfficientNet())
    [0, 2, 4, 7, 10, 14, 15]
    """
    ends, n = [], -1
    for count in model.repeats():
        n += count
        ends.append(n)
    return ends


def feature_maps(model: EfficientNet, intermediates: dict, layers: Sequence[int] | None) -> dict[str, jax.Array]:
    """Each chosen stage's last block's output (default: every stage; see :func:`jtl.models.feature_maps`)."""
    blocks = intermediates["encoder"]["hidden_states"]
    ends = stage_ends(model)
    return {f"stage_{s}": blocks[ends[s]] for s in (range(len(ends)) if layers is None else layers)}


def layer_index(model: EfficientNet) -> tuple[Callable[[str], int], int]:
    """The stem is layer 0, block n is n + 1, the top convolution and the head are the top."""
    blocks = sum(model.repeats())
    return block_layer_index(blocks), blocks + 1


CONFIGS: dict[str, dict[str, Any]] = {
    **{name: efficientnet_config(name) for name in SIZES},
    # The tiny configuration for end-to-end tests: 8-channel stages, one block each.
    "efficientnet-testing": {
        "width_coefficient": 0.25,
        "depth_coefficient": 0.3,
        "image_size": 32,
        "num_block_repeats": (1, 1, 1, 1),
        "in_channels": (32, 16, 24, 40),
        "out_channels": (16, 24, 40, 80),
        "kernel_sizes": (3, 3, 5, 3),
        "strides": (1, 2, 2, 2),
        "expand_ratios": (1, 6, 6, 6),
    },
}
