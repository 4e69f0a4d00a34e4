"""Bottleneck adapters (Houlsby et al., 2019; Pfeiffer et al., 2020): a small down-projection, nonlinearity and
zero-initialised up-projection added residually to the output of chosen Dense layers.

The four leaves sit beside the adapted Dense layer's own kernel (``.../mlp/fc2/adapter_down_kernel``, ...), where
the interceptor finds them among that layer's variables. They add computation the base model lacks, so they cannot
be merged.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jtl.adapters._method import add_to_layers, is_dense, matching_layers, register

PyTree = Any

#: The adapters' nonlinearities by name (``gelu`` is the exact form, ``gelu_tanh`` the approximation).
ACTIVATIONS = {
    "relu": nn.relu,
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: nn.gelu(x, approximate=True),
    "silu": nn.silu,
    "tanh": jnp.tanh,
}

# The attention output projection and the MLP's second layer of every encoder block, the names every jtl
# transformer family (ViT, DeiT, BERT, DINOv2, CLIP, SigLIP, ...) shares.
_ATTENTION_OUT = r"encoder/block_\d+/attn/out"
_MLP_OUT = r"encoder/block_\d+/mlp/fc2"


@register
class BottleneckSpec(NamedTuple):
    """Where and how to adapt.

    Attributes:
      targets: regexes (``fullmatch``) on the Dense layers' names whose outputs get an adapter.
      size: the bottleneck width ``r``.
      activation: the nonlinearity between the projections, one of ``ACTIVATIONS``.

    >>> BottleneckSpec.houlsby(16).targets
    ('encoder/block_\\\\d+/attn/out', 'encoder/block_\\\\d+/mlp/fc2')
    >>> BottleneckSpec.pfeiffer(16, activation="gelu")
    BottleneckSpec(targets=('encoder/block_\\\\d+/mlp/fc2',), size=16, activation='gelu')
    """

    targets: tuple[str, ...] = (_MLP_OUT,)
    size: int = 64
    activation: str = "relu"

    kind = "bottleneck"
    leaves = ("adapter_down_kernel", "adapter_down_bias", "adapter_up_kernel", "adapter_up_bias")

    @classmethod
    def houlsby(cls, size: int = 64, activation: str = "relu") -> BottleneckSpec:
        """Houlsby et al.'s placement: after the attention output projection and after the MLP of every block.

        Args:
          size: the bottleneck width.
          activation: the nonlinearity.

        Returns:
          The spec.

        >>> len(BottleneckSpec.houlsby().targets)
        2
        """
        return cls((_ATTENTION_OUT, _MLP_OUT), size, activation)

    @classmethod
    def pfeiffer(cls, size: int = 64, activation: str = "relu") -> BottleneckSpec:
        """Pfeiffer et al.'s placement: after the MLP of every block only.

        Args:
          size: the bottleneck width.
          activation: the nonlinearity.

        Returns:
          The spec.

        >>> BottleneckSpec.pfeiffer(8).size
        8
        """
        return cls((_MLP_OUT,), size, activation)

    @property
    def trainable(self) -> tuple[str, ...]:
        """The adapters' four leaves."""
        return tuple(f".*/{leaf}" for leaf in self.leaves)

    def add(self, params: PyTree, rng: jax.Array) -> PyTree:
        """Adds an adapter beside every 2-D Dense kernel a target matches: ``adapter_down_kernel`` (out, r;
        Kaiming-uniform), ``adapter_down_bias`` (r), ``adapter_up_kernel`` (r, out) and ``adapter_up_bias``
        (out), all but the first zero, so the model starts as the base model.

        Args:
          params: the model's parameter tree.
          rng: the PRNG key for the down-projections.

        Returns:
          The new tree; the base leaves are the same arrays.

        Raises:
          ValueError: an unknown activation.
          jtl.masking.MaskingError: a target matches no 2-D Dense kernel.

        >>> params = {"fc2": {"kernel": jnp.ones((8, 6)), "bias": jnp.zeros(6)}}
        >>> adapted = BottleneckSpec(("fc2",), size=2).add(params, jax.random.PRNGKey(0))
        >>> {k: v.shape for k, v in sorted(adapted["fc2"].items())}  # doctest: +NORMALIZE_WHITESPACE
        {'adapter_down_bias': (2,), 'adapter_down_kernel': (6, 2), 'adapter_up_bias': (6,),
         'adapter_up_kernel': (2, 6), 'bias': (6,), 'kernel': (8, 6)}
        """
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"bottleneck activation {self.activation!r}: expected one of {sorted(ACTIVATIONS)}")

        def build(layer: dict, path: str, key: jax.Array) -> dict:
            width = layer["kernel"].shape[1]
            bound = math.sqrt(3.0 / width)
            return {
                **layer,
                "adapter_down_kernel": jax.random.uniform(key, (width, self.size), jnp.float32, -bound, bound),
                "adapter_down_bias": jnp.zeros((self.size,), jnp.float32),
                # A zero up-projection makes each adapter the identity at the start (Houlsby et al.'s near-identity).
                "adapter_up_kernel": jnp.zeros((self.size, width), jnp.float32),
                "adapter_up_bias": jnp.zeros((width,), jnp.float32),
            }

        return add_to_layers(params, matching_layers(params, self.targets, is_dense, "2-D Dense kernel"), rng, build)

    def intercept(self, next_fun: Any, args: tuple, kwargs: dict, context: Any, train: bool) -> Any:
        """Adds ``up(act(down(y)))`` to the output ``y`` of every Dense layer holding an adapter."""
        module = context.module
        out = next_fun(*args, **kwargs)
        if not (isinstance(module, nn.Dense) and context.method_name == "__call__"):
            return out
        if not module.has_variable("params", "adapter_down_kernel"):
            return out
        leaf = {name: module.get_variable("params", name).astype(out.dtype) for name in self.leaves}
        h = ACTIVATIONS[self.activation](out @ leaf["adapter_down_kernel"] + leaf["adapter_down_bias"])
        return out + (h @ leaf["adapter_up_kernel"] + leaf["adapter_up_bias"])

    def merge(self, params: PyTree) -> PyTree:
        """Bottleneck adapters cannot be merged.

        Raises:
          ValueError: always; the nonlinearity between the projections has no linear equivalent.

        >>> BottleneckSpec().merge({})
        Traceback (most recent call last):
        ...
        ValueError: bottleneck adapters cannot be merged: ...
        """
        raise ValueError(
            "bottleneck adapters cannot be merged: their nonlinearity between the projections has no "
            "equivalent in the base model's weights; run the model from with_adapters"
        )

    def unmerge(self, merged: PyTree, adapters: PyTree) -> PyTree:
        """Bottleneck adapters are never merged (see :meth:`merge`), so there is nothing to unmerge.

        Raises:
          ValueError: always.
        """
        return self.merge(merged)
