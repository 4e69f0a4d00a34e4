"""(IA)^3 (Liu et al., 2022): a learned vector rescales chosen Dense layers, as PEFT's ``IA3`` for ``nn.Linear``.

A layer that ``targets`` matches gets ``ia3_scale`` (ones, so training starts at the base model). A plain target
(attention key and value) scales its output, bias included: ``(x W + b) * l`` with ``l`` (out,). A
``feedforward`` target (the MLP's second layer) scales its input: ``(x * l) W + b`` with ``l`` (in,). Both merge
into the kernel (and, for outputs, the bias) exactly.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

import jtl.masking as jm
from jtl.adapters._method import add_to_layers, attach_adapters, is_dense, matching_layers, register, split_adapters

PyTree = Any


@register
class IA3Spec(NamedTuple):
    """Where to rescale.

    Attributes:
      targets: regexes (``fullmatch``) on the Dense layers' names.
      feedforward: regexes for the targets whose input (not output) is scaled, as PEFT's
        ``feedforward_modules``; each must match a target.

    >>> import jax.numpy as jnp
    >>> params = {"k": {"kernel": jnp.ones((4, 6))}, "fc2": {"kernel": jnp.ones((8, 4))}}
    >>> adapted = IA3Spec(targets=("k", "fc2"), feedforward=("fc2",)).add(params, None)
    >>> adapted["k"]["ia3_scale"].shape, adapted["fc2"]["ia3_scale"].shape  # output scaled, input scaled
    ((6,), (8,))
    """

    targets: tuple[str, ...] = (r"encoder/block_\d+/attn/(key|value)", r"encoder/block_\d+/mlp/fc2")
    feedforward: tuple[str, ...] = (r"encoder/block_\d+/mlp/fc2",)

    kind = "ia3"
    leaves = ("ia3_scale",)

    @property
    def trainable(self) -> tuple[str, ...]:
        return (".*/ia3_scale",)

    def is_feedforward(self, name: str) -> bool:
        """Whether the layer named ``name`` scales its input."""
        return any(re.fullmatch(p, name) for p in self.feedforward)

    def add(self, params: PyTree, rng: jax.Array) -> PyTree:
        """``ia3_scale`` (ones): (in,) beside feed-forward targets, (out,) beside the others; ``rng`` is unused."""
        layers = matching_layers(params, self.targets, is_dense, "Dense kernel")
        outside = [p for p in self.feedforward if not any(re.fullmatch(p, name) for name in layers)]
        if outside:
            raise jm.MaskingError(f"feedforward patterns {outside} match no layer of the targets {list(self.targets)}")

        def build(layer: dict, path: str, key: jax.Array) -> dict:
            fan_in, fan_out = layer["kernel"].shape
            return {**layer, "ia3_scale": jnp.ones(fan_in if self.is_feedforward(path) else fan_out, jnp.float32)}

        return add_to_layers(params, layers, rng, build)

    def intercept(self, next_fun: Any, args: tuple, kwargs: dict, context: Any, train: bool) -> Any:
        module = context.module
        adapted = isinstance(module, nn.Dense) and context.method_name == "__call__"
        if not (adapted and module.has_variable("params", "ia3_scale")):
            return next_fun(*args, **kwargs)
        scale = module.get_variable("params", "ia3_scale")
        if self.is_feedforward("/".join(module.scope.path)):
            x = args[0]
            # As PEFT: the product in the vector's dtype, then back to the input's.
            return next_fun((x.astype(scale.dtype) * scale).astype(x.dtype), *args[1:], **kwargs)
        out = next_fun(*args, **kwargs)
        return (out * scale).astype(out.dtype)

    def _rescale(self, params: PyTree, op: Any) -> PyTree:
        """``op(leaf, ia3_scale)`` (multiply to merge, divide to unmerge) for each scaled layer's kernel (along its
        input or output axis) and an output-scaled layer's bias."""

        def visit(node: Any, path: tuple[str, ...]) -> Any:
            if not isinstance(node, dict):
                return node
            out = {k: visit(v, (*path, k)) for k, v in node.items() if k != "ia3_scale"}
            if "ia3_scale" in node:
                scale = node["ia3_scale"].astype(jnp.float32)
                kernel = node["kernel"]
                if self.is_feedforward("/".join(path)):
                    out["kernel"] = op(kernel, scale[:, None]).astype(kernel.dtype)
                else:
                    out["kernel"] = op(kernel, scale).astype(kernel.dtype)
                    if "bias" in node:
                        out["bias"] = op(node["bias"], scale).astype(node["bias"].dtype)
            return out

        return visit(params, ())

    def merge(self, params: PyTree) -> PyTree:
        return self._rescale(params, jnp.multiply)

    def unmerge(self, merged: PyTree, adapters: PyTree) -> PyTree:
        own = split_adapters(adapters, self)[1]
        return attach_adapters(self._rescale(attach_adapters(merged, own), jnp.divide), own)
