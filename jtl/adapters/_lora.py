"""LoRA (Hu et al., 2021) for any jtl model: low-rank adapters beside chosen Dense and convolution kernels, merged
for inference.

The adapters live in the parameter tree itself, next to the kernel they adapt (``.../query/lora_a``,
``.../query/lora_b``), so ``jtl.masking`` rules train them (``LORA_TRAINABLE``) and checkpoints, reports and
optimizers see them like any other parameter. :func:`with_lora` wraps a model so that every ``nn.Dense`` that
holds adapters adds ``scale * dropout(x) @ lora_a @ lora_b`` to its output, and every ``nn.Conv`` adds
``scale * conv(dropout(x), lora_a) @ lora_b``: as PEFT's Conv2d LoRA, ``lora_a`` (kh, kw, in, r) is a convolution
with the layer's own strides, padding and dilation and ``lora_b`` (r, out) a 1x1 convolution.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

import jtl.masking as jm
from jtl.adapters._method import (
    Method,
    adapter_dropout,
    add_to_layers,
    attach_adapters,
    fold,
    matching_layers,
    register,
    split_adapters,
    with_adapters,
)

PyTree = Any

#: Trainable patterns for LoRA fine-tuning: the adapters and the (new) head.
LORA_TRAINABLE = (".*/lora_a", ".*/lora_b", "head/.*")
#: BitFit (Ben Zaken et al., 2022): only the biases and the head train.
BITFIT_TRAINABLE = (".*/bias", "head/.*")


@register
class LoRASpec(NamedTuple):
    """Where and how to adapt.

    Attributes:
      targets: regexes (``fullmatch``) on the Dense layers' names, e.g. ``encoder/.*/attn/(query|value)``.
      rank: the adapters' rank ``r``.
      alpha: the scale numerator: updates are scaled by ``alpha / r`` (or ``alpha / sqrt(r)`` with ``rslora``).
      dropout: dropout on the adapter's input while training.
      rslora: rank-stabilised scaling (Kalajdzievski, 2023).

    >>> spec = LoRASpec(rank=4, alpha=8.0)
    >>> spec.kind, spec.leaves, spec.scale, spec.trainable
    ('lora', ('lora_a', 'lora_b'), 2.0, ('.*/lora_a', '.*/lora_b'))
    """

    targets: tuple[str, ...] = (r"encoder/block_\d+/attn/(query|value)",)  # Dense or (ungrouped) Conv layers
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    rslora: bool = False

    kind = "lora"
    leaves = ("lora_a", "lora_b")

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)

    @property
    def trainable(self) -> tuple[str, ...]:
        return tuple(f".*/{leaf}" for leaf in self.leaves)

    def add(self, params: PyTree, rng: jax.Array) -> PyTree:
        """Adds ``lora_a`` (in, r) or (kh, kw, in, r) (random) and ``lora_b`` (r, out; zeros) beside every 2-D Dense
        or 4-D convolution kernel that a target matches (see :func:`jtl.adapters.add_adapters`)."""
        return add_low_rank(params, self.targets, self.rank, rng, _is_dense_or_conv, "2-D Dense or 4-D Conv kernel")

    def intercept(self, next_fun: Any, args: tuple, kwargs: dict, context: Any, train: bool) -> Any:
        module = context.module
        out = next_fun(*args, **kwargs)
        adapted = isinstance(module, nn.Dense | nn.Conv) and context.method_name == "__call__"
        if not (adapted and module.has_variable("params", "lora_a")):
            return out
        x = adapter_dropout(module, args[0], self.dropout, train)
        lora_a = module.get_variable("params", "lora_a")
        lora_b = module.get_variable("params", "lora_b")
        dtype = out.dtype
        if isinstance(module, nn.Conv):
            down = low_rank_conv(module, x, lora_a).astype(dtype)
        else:
            down = x.astype(dtype) @ lora_a.astype(dtype)
        return out + jnp.asarray(self.scale, dtype) * (down @ lora_b.astype(dtype))

    def delta(self, node: dict) -> jax.Array:
        """The kernel's update ``scale * A @ B`` (float32; for a convolution, over A's last axis)."""
        return self.scale * (node["lora_a"].astype(jnp.float32) @ node["lora_b"].astype(jnp.float32))

    def merge(self, params: PyTree) -> PyTree:
        return fold(params, self.leaves, lambda node: (node["kernel"] + self.delta(node)).astype(node["kernel"].dtype))

    def unmerge(self, merged: PyTree, adapters: PyTree) -> PyTree:
        return fold(
            attach_adapters(merged, split_adapters(adapters, self)[1]),
            (),
            lambda node: (node["kernel"] - self.delta(node)).astype(node["kernel"].dtype),
            marker=self.leaves[0],
        )


def _is_dense_or_conv(node: dict) -> bool:
    return jnp.ndim(node.get("kernel")) in (2, 4)


def low_rank_leaves(kernel_shape: tuple[int, ...], rank: int, key: jax.Array) -> dict[str, jax.Array]:
    """LoRA's initial ``lora_a`` (the kernel's shape with ``rank`` as its last axis; Kaiming-uniform, as PEFT) and
    ``lora_b`` (rank, out; zeros), so that training starts at the base model (Hu et al.).

    Args:
      kernel_shape: the adapted kernel's shape, (in, out) or (kh, kw, in, out).
      rank: the adapters' rank.
      key: the PRNG key for ``lora_a``.

    Returns:
      ``{"lora_a": ..., "lora_b": ...}`` in float32.

    >>> leaves = low_rank_leaves((4, 6), 2, jax.random.PRNGKey(0))
    >>> leaves["lora_a"].shape, leaves["lora_b"].shape, float(abs(leaves["lora_b"]).sum())
    ((4, 2), (2, 6), 0.0)
    """
    *window, fan_out = kernel_shape
    bound = math.sqrt(3.0 / math.prod(window))
    return {
        "lora_a": jax.random.uniform(key, (*window, rank), jnp.float32, -bound, bound),
        "lora_b": jnp.zeros((rank, fan_out), jnp.float32),
    }


def add_low_rank(params: PyTree, targets: tuple[str, ...], rank: int, rng: jax.Array, accept: Any, what: str) -> PyTree:
    """Adds LoRA's ``lora_a`` (random) and ``lora_b`` (zeros) beside the kernels of the layers that ``targets``
    match and ``accept`` (LoRA's and DoRA's ``add``).

    Args:
      params: the parameter tree.
      targets: regexes on the layers' names.
      rank: the rank ``r``.
      rng: the PRNG key.
      accept: ``layer dict -> bool``.
      what: the accepted layers, for the error when a target matches none.

    Returns:
      The new tree: ``lora_a`` has the kernel's shape with ``r`` as its last axis, ``lora_b`` is (r, out).

    >>> params = {"conv": {"kernel": jnp.ones((3, 3, 4, 6))}}
    >>> out = add_low_rank(params, ("conv",), 2, jax.random.PRNGKey(0), lambda node: True, "kernel")
    >>> out["conv"]["lora_a"].shape, out["conv"]["lora_b"].shape
    ((3, 3, 4, 2), (2, 6))
    """

    def build(layer: dict, path: str, key: jax.Array) -> dict:
        return {**layer, **low_rank_leaves(layer["kernel"].shape, rank, key)}

    return add_to_layers(params, matching_layers(params, targets, accept, what), rng, build)


def low_rank_conv(module: nn.Conv, x: jax.Array, lora_a: jax.Array) -> jax.Array:
    """``module``'s convolution of ``x`` with ``lora_a`` as its kernel: the same strides, padding (explicit, SAME
    or VALID), dilations, dtype and precision, without the bias.

    Args:
      module: the (bound) ``nn.Conv`` being adapted.
      x: its input.
      lora_a: (kh, kw, in, r).

    Returns:
      The (..., r) feature map.

    Raises:
      jtl.masking.MaskingError: a grouped (e.g. depthwise) convolution: its kernel mixes no channels, so a
        low-rank channel update has no meaning there.

    >>> conv = nn.Conv(4, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), name="conv")
    >>> x = jnp.ones((1, 8, 8, 2))
    >>> variables = conv.init(jax.random.PRNGKey(0), x)
    >>> conv.apply(variables, x, jnp.ones((3, 3, 2, 5)), method=low_rank_conv).shape
    (1, 4, 4, 5)
    """
    if module.feature_group_count != 1:
        raise jm.MaskingError(
            f"LoRA on {'/'.join(module.scope.path)}: a grouped convolution (feature_group_count="
            f"{module.feature_group_count}) cannot take a low-rank update; leave depthwise layers out of the targets"
        )
    down = module.clone(parent=None, name=None, features=lora_a.shape[-1], use_bias=False)
    return down.apply({"params": {"kernel": lora_a}}, x)


def add_adapters(params: PyTree, spec: Method, rng: jax.Array) -> PyTree:
    """Adds a method's adapters to a parameter tree; the model's output is unchanged until they train.

    For LoRA: ``lora_a`` (in, r) or (kh, kw, in, r) (random) and ``lora_b`` (r, out; zeros) beside every Dense or
    convolution kernel that a target matches.

    Args:
      params: the model's parameter tree (nested dicts).
      spec: the method, e.g. a :class:`LoRASpec` with its targets and rank.
      rng: the PRNG key for random initialisations.

    Returns:
      A new tree with the adapters; the base leaves are the same arrays.

    Raises:
      jtl.masking.MaskingError: if a target matches no layer the method can adapt.

    >>> params = {"attn": {"query": {"kernel": jnp.ones((4, 6)), "bias": jnp.zeros(6)}}}
    >>> adapted = add_adapters(params, LoRASpec(targets=("attn/query",), rank=2), jax.random.PRNGKey(0))
    >>> {k: v.shape for k, v in sorted(adapted["attn"]["query"].items())}
    {'bias': (6,), 'kernel': (4, 6), 'lora_a': (4, 2), 'lora_b': (2, 6)}
    """
    return spec.add(params, rng)


def with_lora(model: nn.Module, spec: LoRASpec) -> nn.Module:
    """:func:`jtl.adapters.with_adapters` with one LoRA method.

    Args:
      model: a jtl model.
      spec: the LoRA settings.

    Returns:
      The wrapped model.

    >>> from jtl import models
    >>> model = with_lora(models.create("vit-testing", num_classes=3), LoRASpec(rank=2))
    >>> type(model).__name__, model.adapters == (LoRASpec(rank=2),)
    ('AdaptedViT', True)
    """
    return with_adapters(model, spec)
