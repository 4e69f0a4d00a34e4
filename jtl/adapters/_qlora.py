"""QLoRA (Dettmers et al., 2023): LoRA adapters beside frozen base kernels held quantized (NF4 or int8).

The chosen Dense layers lose their ``kernel``: :meth:`QLoRASpec.add` stores it quantized with ``qwix`` as two plain
array leaves, ``kernel_q`` (the codes: NF4's 4-bit codes packed two to a ``uint8``, or ``int8``) and
``kernel_scale`` (float32 absmax scales, one per block of ``block_size`` inputs and per output), so masking,
optimizers and checkpoints see arrays only. NF4 is packed by hand: JAX holds a ``uint4`` array in a byte per
element on the CPU, and Orbax (tensorstore) cannot write ``uint4`` at all. The
interceptor computes those layers itself (their ``kernel`` is absent, so ``nn.Dense`` would fail): the dequantized
kernel as ``nn.Dense`` uses a kernel, plus ``scale * dropout(x) @ lora_a @ lora_b``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import qwix

from jtl.adapters._lora import LoRASpec, low_rank_leaves
from jtl.adapters._method import (
    adapter_dropout,
    add_to_layers,
    attach_adapters,
    fold,
    is_dense,
    matching_layers,
    register,
)

PyTree = Any

#: ``format -> qwix qtype``.
QTYPES = {"nf4": "nf4", "int8": jnp.int8}


def pack_nibbles(codes: jax.Array) -> jax.Array:
    """4-bit codes, two to a byte along the first axis (even rows in the low half): (in, out) -> (in / 2, out).

    Args:
      codes: unsigned 4-bit codes (``uint4`` or any integer dtype below 16), an even number of rows.

    Returns:
      The ``uint8`` array.

    >>> pack_nibbles(jnp.array([[1], [2]], jnp.uint4)).tolist()
    [[33]]
    """
    codes = codes.astype(jnp.uint8)
    return codes[0::2] | (codes[1::2] << 4)


def unpack_nibbles(packed: jax.Array) -> jax.Array:
    """The inverse of :func:`pack_nibbles`: (in / 2, out) ``uint8`` -> (in, out) ``uint4``.

    Args:
      packed: what :func:`pack_nibbles` returned.

    Returns:
      The codes.

    >>> unpack_nibbles(jnp.array([[33]], jnp.uint8)).tolist()
    [[1], [2]]
    """
    both = jnp.stack([packed & 0xF, packed >> 4], axis=1)
    return both.reshape(-1, packed.shape[-1]).astype(jnp.uint4)


@register
class QLoRASpec(NamedTuple):
    """Where and how to adapt, and how the frozen base kernels are stored.

    Attributes:
      targets: regexes (``fullmatch``) on the Dense layers' names; by default every linear layer of the encoder
        blocks, as the QLoRA paper recommends.
      rank: the adapters' rank ``r``.
      alpha: the scale numerator: updates are scaled by ``alpha / r`` (or ``alpha / sqrt(r)`` with ``rslora``).
      dropout: dropout on the adapter's input while training.
      rslora: rank-stabilised scaling (Kalajdzievski, 2023).
      format: ``"nf4"`` (4-bit NormalFloat) or ``"int8"`` (symmetric).
      block_size: inputs per absmax scale (QLoRA's 64); an input size it does not divide takes their greatest
        common divisor.

    The scales stay float32 (QLoRA's double quantization of the scales is not applied).

    >>> spec = QLoRASpec(rank=2, format="int8")
    >>> spec.kind, spec.leaves, spec.trainable
    ('qlora', ('lora_a', 'lora_b', 'kernel_q', 'kernel_scale'), ('.*/lora_a', '.*/lora_b'))
    """

    targets: tuple[str, ...] = (r"encoder/block_\d+/(attn/(query|key|value|out)|mlp/fc[12])",)
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    rslora: bool = False
    format: str = "nf4"
    block_size: int = 64

    kind = "qlora"
    # The quantized base travels with the adapters (split_adapters): unmerge gives it back without re-quantizing.
    leaves = ("lora_a", "lora_b", "kernel_q", "kernel_scale")

    @property
    def lora(self) -> LoRASpec:
        """The LoRA method the adapters follow (its scale, update and dropout)."""
        return LoRASpec(self.targets, self.rank, self.alpha, self.dropout, self.rslora)

    @property
    def scale(self) -> float:
        """The adapters' scale: ``alpha / r`` (``alpha / sqrt(r)`` with ``rslora``)."""
        return self.lora.scale

    @property
    def trainable(self) -> tuple[str, ...]:
        """Only the adapters train; the quantized kernels stay frozen."""
        return (".*/lora_a", ".*/lora_b")

    def quantize(self, kernel: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Quantizes an (in, out) kernel blockwise along its input axis.

        Args:
          kernel: a 2-D float kernel.

        Returns:
          ``(kernel_q, kernel_scale)``: the codes (int8 shaped like ``kernel``; NF4 packed, ``(in / 2, out)``
          ``uint8``) and the float32 scales, shaped ``(in / block, out)``.

        Raises:
          ValueError: an unknown format, or NF4 for an odd number of inputs (its codes go two to a byte).

        >>> q, s = QLoRASpec(format="nf4").quantize(jnp.ones((128, 3)))
        >>> q.dtype, q.shape, s.shape
        (dtype('uint8'), (64, 3), (2, 3))
        """
        if self.format not in QTYPES:
            raise ValueError(f"QLoRA format {self.format!r}: expected one of {sorted(QTYPES)}")
        if self.format == "nf4" and kernel.shape[0] % 2:
            raise ValueError(f"QLoRA nf4: a kernel {kernel.shape} with an odd number of inputs cannot be packed")
        block = math.gcd(kernel.shape[0], self.block_size)
        q = qwix.quantize(kernel.astype(jnp.float32), QTYPES[self.format], channelwise_axes=(1,), tiled_axes={0: block})
        return (pack_nibbles(q.qvalue) if self.format == "nf4" else q.qvalue), q.scale

    def dequantize(self, layer: dict) -> jax.Array:
        """The float32 kernel that a layer's ``kernel_q`` and ``kernel_scale`` stand for.

        Args:
          layer: a Dense layer's leaves (a params dict, or its module's variables).

        Returns:
          The (in, out) float32 kernel.

        >>> spec = QLoRASpec(format="int8")
        >>> kernel = jnp.array([[1.0, -2.0], [0.5, 4.0]])
        >>> q, s = spec.quantize(kernel)
        >>> q.tolist(), bool(jnp.abs(spec.dequantize({"kernel_q": q, "kernel_scale": s}) - kernel).max() < 0.02)
        ([[127, -64], [64, 127]], True)
        """
        codes = unpack_nibbles(layer["kernel_q"]) if self.format == "nf4" else layer["kernel_q"]
        return qwix.dequantize(qwix.QArray(codes, layer["kernel_scale"], qtype=QTYPES[self.format]))

    def add(self, params: PyTree, rng: jax.Array) -> PyTree:
        """Quantizes every 2-D Dense kernel that a target matches into ``kernel_q``/``kernel_scale`` (dropping
        ``kernel``) and adds ``lora_a`` (in, r; random) and ``lora_b`` (r, out; zeros) beside it.

        Args:
          params: the model's parameter tree, with float kernels.
          rng: the PRNG key for ``lora_a``.

        Returns:
          The new tree; the wrapped model (:func:`jtl.adapters.with_adapters`) starts as the base model run on
          the dequantized kernels.

        Raises:
          jtl.masking.MaskingError: a target matches no 2-D Dense kernel.

        >>> params = {"q": {"kernel": jnp.ones((64, 6)), "bias": jnp.zeros(6)}}
        >>> adapted = QLoRASpec(targets=("q",), rank=2).add(params, jax.random.PRNGKey(0))
        >>> {k: (v.shape, str(v.dtype)) for k, v in sorted(adapted["q"].items())}  # doctest: +NORMALIZE_WHITESPACE
        {'bias': ((6,), 'float32'), 'kernel_q': ((32, 6), 'uint8'), 'kernel_scale': ((1, 6), 'float32'),
         'lora_a': ((64, 2), 'float32'), 'lora_b': ((2, 6), 'float32')}
        """

        def build(layer: dict, path: str, key: jax.Array) -> dict:
            out = dict(layer)
            kernel = out.pop("kernel")
            out["kernel_q"], out["kernel_scale"] = self.quantize(kernel)
            # As LoRA, so training starts at the quantized base.
            return {**out, **low_rank_leaves(kernel.shape, self.rank, key)}

        return add_to_layers(params, matching_layers(params, self.targets, is_dense, "2-D Dense kernel"), rng, build)

    def intercept(self, next_fun: Any, args: tuple, kwargs: dict, context: Any, train: bool) -> Any:
        """Runs a quantized Dense layer (without calling it: its ``kernel`` is absent) as ``nn.Dense`` would run
        on the dequantized kernel, plus the adapters; other calls pass through."""
        module = context.module
        if not (
            isinstance(module, nn.Dense)
            and context.method_name == "__call__"
            and module.has_variable("params", "kernel_q")
        ):
            return next_fun(*args, **kwargs)
        x = args[0]
        leaves = {name: module.get_variable("params", name) for name in ("kernel_q", "kernel_scale")}
        bias = module.get_variable("params", "bias") if module.use_bias else None
        # nn.Dense's own promotion, dot_general choice and bias broadcast, so the result matches it exactly.
        inputs, kernel, bias = module.promote_dtype(x, self.dequantize(leaves), bias, dtype=module.dtype)
        if module.dot_general_cls is not None:
            dot_general = module.dot_general_cls()
        else:
            dot_general = module.dot_general or jax.lax.dot_general
        y = dot_general(inputs, kernel, (((inputs.ndim - 1,), (0,)), ((), ())), precision=module.precision)
        if bias is not None:
            y += jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))
        h = adapter_dropout(module, x, self.dropout, train).astype(y.dtype)
        lora_a = module.get_variable("params", "lora_a").astype(y.dtype)
        lora_b = module.get_variable("params", "lora_b").astype(y.dtype)
        return y + jnp.asarray(self.scale, y.dtype) * ((h @ lora_a) @ lora_b)

    def delta(self, layer: dict) -> jax.Array:
        """The kernel's update ``scale * lora_a @ lora_b`` (float32), as LoRA's."""
        return self.lora.delta(layer)

    def merge(self, params: PyTree) -> PyTree:
        """Replaces each quantized layer's leaves by a float32 ``kernel``: dequantized plus the adapters' update.

        Args:
          params: a parameter tree with QLoRA layers.

        Returns:
          The tree the base model runs, in full precision.

        >>> spec = QLoRASpec(targets=("q",), rank=1, alpha=1.0, format="int8")
        >>> params = spec.add({"q": {"kernel": jnp.eye(2)}}, jax.random.PRNGKey(0))
        >>> spec.merge(params)["q"]["kernel"].tolist()
        [[1.0, 0.0], [0.0, 1.0]]
        """
        return fold(params, self.leaves, lambda layer: self.dequantize(layer) + self.delta(layer))

    def unmerge(self, merged: PyTree, adapters: PyTree) -> PyTree:
        """Gives back the quantized tree from before :meth:`merge`: the merged float kernels of the adapted layers
        are dropped and ``adapters`` (``split_adapters(params, spec)`` before merging, which holds the quantized
        kernels as well as the adapters) put back. Re-quantizing the merged kernels would lose precision, so this
        is the exact inverse only given those split-off leaves.

        Args:
          merged: what :meth:`merge` returned (possibly with other leaves changed since).
          adapters: the spec's leaves, split off before merging.

        Returns:
          The quantized tree with its adapters.

        Raises:
          jtl.masking.MaskingError: an adapter's layer is not in ``merged``.

        >>> from jtl.adapters import split_adapters
        >>> spec = QLoRASpec(targets=("q",), rank=1, format="int8")
        >>> params = spec.add({"q": {"kernel": jnp.eye(2), "bias": jnp.ones(2)}}, jax.random.PRNGKey(0))
        >>> _, adapters = split_adapters(params, spec)
        >>> sorted(spec.unmerge(spec.merge(params), adapters)["q"])
        ['bias', 'kernel_q', 'kernel_scale', 'lora_a', 'lora_b']
        """

        def strip(node: dict, extra: dict) -> dict:
            return {
                key: strip(value, extra[key]) if isinstance(value, dict) and isinstance(extra.get(key), dict) else value
                for key, value in node.items()
                if not (key == "kernel" and "kernel_q" in extra)
            }

        return attach_adapters(strip(merged, adapters), adapters)
