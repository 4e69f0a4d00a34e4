"""The convolution + BatchNorm + activation layer the BatchNorm CNNs converted from TensorFlow (EfficientNet,
MobileNetV2) are built from, with jtl's names ``conv`` and ``bn``."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jtl.models._layers import activation


def tf_same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow's ``'SAME'`` padding of one axis as Hugging Face computes it (from the kernel, then scaled by the
    dilation): the extra pixel of an odd total goes after.

    Args:
      size: the input's length along the axis.
      kernel: the kernel's length.
      stride: the stride.
      dilation: the dilation.

    Returns:
      (before, after) padding.

    >>> tf_same_padding(32, 3, 2), tf_same_padding(33, 3, 2), tf_same_padding(8, 3, 1, dilation=2)
    ((0, 1), (1, 1), (2, 2))
    """
    total = max(kernel - (stride if size % stride == 0 else size % stride), 0)
    return (total // 2 * dilation, (total - total // 2) * dilation)


class ConvBN(nn.Module):
    """A convolution without bias (``conv``), BatchNorm (``bn``, statistics in ``batch_stats``), and the activation
    unless ``act`` is None.

    ``padding``: explicit ``((top, bottom), (left, right))`` pairs, ``"tf_same"`` (TensorFlow's ``'SAME'`` from the
    input's size, see :func:`tf_same_padding`) or ``"symmetric"`` (PyTorch's ``(kernel - 1) // 2 * dilation`` on
    each side).

    >>> import jax
    >>> layer = ConvBN(4, 3, 2, act="relu6", padding="tf_same")
    >>> variables = layer.init(jax.random.PRNGKey(0), jnp.ones((1, 8, 8, 3)))
    >>> sorted(variables["params"]), layer.apply(variables, jnp.ones((1, 8, 8, 3))).shape
    (['bn', 'conv'], (1, 4, 4, 4))
    """

    features: int
    kernel_size: int = 1
    stride: int = 1
    groups: int = 1
    dilation: int = 1
    act: str | None = None
    padding: Any = "symmetric"
    bn_momentum: float = 0.99
    bn_eps: float = 1e-3
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        k, s, d = self.kernel_size, self.stride, self.dilation
        padding = self.padding
        if padding == "tf_same":
            padding = [tf_same_padding(x.shape[axis], k, s, d) for axis in (1, 2)]
        elif padding == "symmetric":
            padding = [((k - 1) // 2 * d,) * 2] * 2
        x = nn.Conv(
            self.features, (k, k), strides=(s, s), padding=padding, kernel_dilation=(d, d),
            feature_group_count=self.groups, use_bias=False, dtype=self.dtype, name="conv",
        )(x)  # fmt: skip
        x = nn.BatchNorm(
            use_running_average=not train, momentum=self.bn_momentum, epsilon=self.bn_eps, dtype=self.dtype, name="bn"
        )(x)
        return x if self.act is None else activation(self.act)(x)
