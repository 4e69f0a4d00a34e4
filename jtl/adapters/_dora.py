"""DoRA (Liu et al., 2024): LoRA's low-rank direction update plus a learned magnitude per output feature.

A Dense kernel ``W`` (in, out) becomes ``m * (W + s A B) / ||W + s A B||``, the norm taken over the input axis
(one per output feature, as PEFT's ``lora_magnitude_vector``), with ``m`` (``lora_magnitude``, (out,)) initialised
to ``||W||`` so that training starts at the base model. The forward pass is PEFT 0.21's for ``nn.Linear``: the norm
is detached (no gradient, section 4.3 of the paper) and the bias is not rescaled.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jtl.adapters._lora import LoRASpec, add_low_rank
from jtl.adapters._method import adapter_dropout, attach_adapters, fold, is_dense, register

PyTree = Any

#: The leaf :func:`jtl.adapters.merge_record` keeps for DoRA: ``||W + s A B||`` at merge time.
_NORM = "lora_weight_norm"


@register
class DoRASpec(NamedTuple):
    """Where and how to adapt; the fields are :class:`jtl.adapters.LoRASpec`'s.

    Attributes:
      targets: regexes (``fullmatch``) on the Dense layers' names.
      rank: the rank ``r`` of the direction update.
      alpha: the scale numerator: ``alpha / r`` (or ``alpha / sqrt(r)`` with ``rslora``).
      dropout: dropout on the adapter's input while training.
      rslora: rank-stabilised scaling.

    >>> spec = DoRASpec(rank=4)
    >>> spec.kind, spec.leaves
    ('dora', ('lora_a', 'lora_b', 'lora_magnitude'))
    """

    targets: tuple[str, ...] = (r"encoder/block_\d+/attn/(query|value)",)
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    rslora: bool = False

    kind = "dora"
    leaves = ("lora_a", "lora_b", "lora_magnitude")

    @property
    def scale(self) -> float:
        return LoRASpec(*self).scale

    @property
    def trainable(self) -> tuple[str, ...]:
        return tuple(f".*/{leaf}" for leaf in self.leaves)

    def add(self, params: PyTree, rng: jax.Array) -> PyTree:
        """LoRA's ``lora_a`` and ``lora_b`` (zeros) beside every 2-D Dense kernel a target matches, and
        ``lora_magnitude`` (out,): the kernel's norm per output feature."""
        params = add_low_rank(params, self.targets, self.rank, rng, is_dense, "2-D Dense kernel")

        def visit(node: Any) -> Any:
            if not isinstance(node, dict):
                return node
            out = {k: visit(v) for k, v in node.items()}
            if "lora_a" in node:
                out["lora_magnitude"] = jnp.linalg.norm(node["kernel"].astype(jnp.float32), axis=0)
            return out

        return visit(params)

    def intercept(self, next_fun: Any, args: tuple, kwargs: dict, context: Any, train: bool) -> Any:
        module = context.module
        out = next_fun(*args, **kwargs)
        adapted = isinstance(module, nn.Dense) and context.method_name == "__call__"
        if not (adapted and module.has_variable("params", "lora_magnitude")):
            return out
        dtype = out.dtype
        kernel, lora_a, lora_b, magnitude = (
            module.get_variable("params", name).astype(dtype) for name in ("kernel", *self.leaves)
        )
        scale = jnp.asarray(self.scale, dtype)
        norm = jax.lax.stop_gradient(jnp.linalg.norm(kernel + scale * (lora_a @ lora_b), axis=0))
        factor = magnitude / norm
        x = args[0]
        if train and self.dropout > 0:
            # PEFT recomputes the base term on the dropped-out input (``base_result = None`` in DoraLinearVariant).
            x = adapter_dropout(module, x, self.dropout, train)
            base = x.astype(dtype) @ kernel
        else:
            base = out - module.get_variable("params", "bias").astype(dtype) if module.use_bias else out
        return out + (factor - 1) * base + factor * ((x.astype(dtype) @ lora_a) @ lora_b) * scale

    def _direction(self, node: dict) -> jax.Array:
        """``W + s A B`` in float32."""
        return node["kernel"].astype(jnp.float32) + LoRASpec(*self).delta(node)

    def merge(self, params: PyTree) -> PyTree:
        def kernel(node: dict) -> jax.Array:
            direction = self._direction(node)
            factor = node["lora_magnitude"] / jnp.linalg.norm(direction, axis=0)
            return (factor * direction).astype(node["kernel"].dtype)

        return fold(params, self.leaves, kernel)

    def record(self, params: PyTree) -> PyTree:
        """``lora_weight_norm`` (out,), ``||W + s A B||`` per DoRA layer: what the merge divides by and unmerging
        multiplies back (see :func:`jtl.adapters.merge_record`)."""

        def visit(node: Any) -> Any:
            out = {k: visit(v) for k, v in node.items() if isinstance(v, dict)}
            if "lora_magnitude" in node:
                out[_NORM] = jnp.linalg.norm(self._direction(node), axis=0)
            return {k: v for k, v in out.items() if not isinstance(v, dict) or v}

        return visit(params)

    def unmerge(self, merged: PyTree, adapters: PyTree) -> PyTree:
        def kernel(node: dict) -> jax.Array:
            if _NORM not in node:
                raise ValueError(
                    "DoRA's merge divides each output feature by ||W + s A B||, which the merged kernel no longer "
                    "holds: unmerge with jtl.adapters.merge_record(params, spec) taken before merging"
                )
            direction = node["kernel"].astype(jnp.float32) * (node[_NORM] / node["lora_magnitude"])
            return (direction - LoRASpec(*self).delta(node)).astype(node["kernel"].dtype)

        return fold(attach_adapters(merged, adapters), (_NORM,), kernel, marker="lora_magnitude")
