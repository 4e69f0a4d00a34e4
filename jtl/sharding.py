"""Parameter sharding by ordered regex rules on parameter names, as big_vision's ``sharding_strategy``.

A rule is ``(regex, strategy)``; the first rule whose regex fullmatches a parameter's name (``jtl.masking``'s rule
matching) gives its strategy, a ``+``-joined list of:

- ``replicate``: every device holds the whole leaf;
- ``fsdp``: the largest dimension not otherwise sharded whose size the ``data`` axis divides is split over the
  ``data`` axis (fully sharded data parallelism: parameters and optimizer state are gathered for the step's use);
- ``model:D``: dimension ``D`` (negative counts from the end) is split over the ``model`` axis (tensor parallelism).

Leaves smaller than ``min_size`` elements stay replicated (gathering a bias costs more than it saves), and a
dimension that the axis does not divide is left whole. Every other leaf of a train state (optimizer moments,
EMA copies, ...) whose name ends with a parameter's name and has its shape takes that parameter's sharding; the
rest (step, keys, counts, BatchNorm statistics) is replicated.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import jtl.masking as jm

DATA, MODEL = "data", "model"
REPLICATE, FSDP = "replicate", "fsdp"

# Tensor-parallel splits for jtl's transformer blocks (Megatron-style: the query/key/value and first MLP kernels
# split their outputs, the attention output and second MLP kernels their inputs, so each block needs one
# all-reduce per branch); every family's kernels are also FSDP-sharded over the data axis when asked. ModernBERT's
# fc1 is a fused GLU (value and gate side by side): split by output it is still right, at the cost of more traffic.
TENSOR_PARALLEL_RULES = (
    (r".*/attn/(query|key|value)/kernel", "model:-1"),
    (r".*/attn/(query|key|value)/bias", "model:0"),
    (r".*/attn/out/kernel", "model:0"),
    (r".*/mlp/fc1/kernel", "model:-1"),
    (r".*/mlp/fc1/bias", "model:0"),
    (r".*/mlp/fc2/kernel", "model:0"),
)


class ShardingError(ValueError):
    """A sharding rule, strategy or mesh that does not fit; the message names the rule or leaf at fault."""


def default_rules(*, fsdp: bool, tensor_parallel: bool) -> tuple[tuple[str, str], ...]:
    """The rules every family gets when a config gives none: tensor-parallel splits of the attention and MLP
    kernels (jtl's uniform names, so every transformer family), FSDP for everything else.

    Args:
      fsdp: shard parameters and optimizer state over the data axis.
      tensor_parallel: split the transformer blocks over the model axis.

    Returns:
      Ordered ``(regex, strategy)`` rules ending with a catch-all.

    >>> default_rules(fsdp=True, tensor_parallel=False)
    (('.*', 'fsdp'),)
    >>> default_rules(fsdp=True, tensor_parallel=True)[0]
    ('.*/attn/(query|key|value)/kernel', 'model:-1+fsdp')
    """
    rules = []
    if tensor_parallel:
        rules = [(regex, f"{strategy}+{FSDP}" if fsdp else strategy) for regex, strategy in TENSOR_PARALLEL_RULES]
    return (*rules, (".*", FSDP if fsdp else REPLICATE))


def partition_spec(
    shape: Sequence[int], strategy: str, axis_sizes: dict[str, int], *, min_size: int = 0, where: str = ""
) -> PartitionSpec:
    """The ``PartitionSpec`` of one leaf under a strategy.

    Args:
      shape: the leaf's shape.
      strategy: ``replicate``, ``fsdp``, ``model:D`` or a ``+``-joined combination.
      axis_sizes: the mesh's axis sizes, e.g. ``{"data": 4, "model": 2}``.
      min_size: leaves with fewer elements stay replicated.
      where: what to name in an error (the rule).

    Returns:
      The spec (one entry per dimension, ``None`` for an unsplit one).

    >>> partition_spec((1024, 4096), "model:-1+fsdp", {"data": 4, "model": 2})
    P('data', 'model')
    >>> partition_spec((3, 7), "fsdp", {"data": 4, "model": 1})  # 4 divides neither: stays whole
    P(None, None)
    """
    parts = [part.strip() for part in strategy.split("+")]
    model_dims = []
    for part in parts:
        axis, _, dim_text = part.partition(":")
        if part in (REPLICATE, FSDP):
            continue
        if axis != MODEL or not dim_text.lstrip("-").isdigit():
            raise ShardingError(
                f"{where}strategy {strategy!r}: unknown part {part!r} (known: replicate, fsdp, model:<dim>)"
            )
        if not shape:
            continue  # a scalar has nothing to split
        if not -len(shape) <= int(dim_text) < len(shape):
            raise ShardingError(f"{where}strategy {strategy!r}: dimension {dim_text} of a leaf of shape {tuple(shape)}")
        model_dims.append(int(dim_text) % len(shape))
    if len(set(model_dims)) > 1:
        raise ShardingError(f"{where}strategy {strategy!r}: the model axis can split one dimension of a leaf")
    spec: list[str | None] = [None] * len(shape)
    if int(np.prod(shape, dtype=np.int64)) < max(min_size, 1):
        return PartitionSpec(*spec)
    model = axis_sizes.get(MODEL, 1)
    for dim in model_dims:
        if model > 1 and shape[dim] % model == 0:  # on a model axis of one device, FSDP may take the dimension
            spec[dim] = MODEL
    data = axis_sizes.get(DATA, 1)
    free = [d for d in range(len(shape)) if spec[d] is None and shape[d] % data == 0]
    if FSDP in parts and data > 1 and free:
        spec[max(free, key=lambda d: (shape[d], -d))] = DATA  # the largest; the first of equals
    return PartitionSpec(*spec)


class Plan:
    """Where every leaf of a train state lives on a mesh: the rules resolved on the parameters once, then applied
    by name to any tree that holds them (the state, its optimizer moments, the variables to load).

    Args:
      mesh: a mesh with ``data`` and ``model`` axes (:func:`jtl.parallel.make_mesh`).
      params: the parameter trees whose names the rules match (arrays or ``jax.ShapeDtypeStruct``), e.g. the
        model's params and the objective's.
      rules: ordered ``(regex, strategy)`` pairs.
      unmatched: ``"replicate"`` or ``"error"`` for a parameter that no rule matches.
      min_size: leaves with fewer elements stay replicated.
      allow_unused: accept rules that match no parameter (defaults written for many families); otherwise such a
        rule, a likely typo, is an error naming it.

    >>> mesh = Mesh(np.asarray(jax.devices()[:4]).reshape(4, 1), (DATA, MODEL))
    >>> plan = Plan(mesh, [{"w": np.zeros((8, 2)), "b": np.zeros(2)}], [(".*", "fsdp")])
    >>> plan.specs({"params": {"w": np.zeros((8, 2)), "b": np.zeros(2)}, "step": np.zeros(())})
    {'params': {'b': P(None,), 'w': P('data', None)}, 'step': P()}
    """

    def __init__(
        self,
        mesh: Mesh,
        params: Sequence[Any],
        rules: Sequence[tuple[str, str]],
        *,
        unmatched: str = REPLICATE,
        min_size: int = 0,
        allow_unused: bool = False,
    ) -> None:
        if unmatched not in (REPLICATE, "error"):
            raise ShardingError(f"unmatched={unmatched!r}; known: replicate, error")
        self.mesh = mesh
        sizes = dict(mesh.shape)
        self._by_name: dict[tuple[str, tuple[int, ...]], PartitionSpec] = {}
        rules = [tuple(rule) for rule in rules]
        # Each leaf is labelled with its rule's index, so that rules matching nothing in any tree can be named.
        indexed = [(regex, i) for i, (regex, _) in enumerate(rules)]
        used = set()
        for tree in params:
            named = jm.named_leaves(tree)
            if not named:
                continue
            names = [name for name, _ in named]
            default = {} if unmatched == "error" else {"default": None}
            try:
                chosen = jm.label_by_rules(dict(zip(names, names, strict=True)), indexed, allow_unused=True, **default)
            except jm.MaskingError as e:
                raise ShardingError(f"sharding rules: {e}") from e
            for name, leaf in named:
                used.add(chosen[name])
                strategy = REPLICATE if chosen[name] is None else rules[chosen[name]][1]
                where = f"the rule for {name!r}: "
                spec = partition_spec(leaf.shape, strategy, sizes, min_size=min_size, where=where)
                self._by_name[(name, tuple(leaf.shape))] = spec
        unused = [rules[i] for i in range(len(rules)) if i not in used]
        if unused and not allow_unused:
            raise ShardingError(
                f"sharding rules: these rules give no parameter its sharding (a typo, or every parameter they match "
                f"is taken by an earlier rule): {unused}"
            )

    def spec_of(self, name: str, shape: Sequence[int]) -> PartitionSpec:
        """The spec of a leaf: that of the parameter its name ends with (same shape), else replicated.

        Args:
          name: the leaf's name in its tree (``jtl.masking`` names).
          shape: its shape.

        Returns:
          The ``PartitionSpec``.
        """
        parts, shape = name.split("/"), tuple(shape)
        for start in range(len(parts)):
            spec = self._by_name.get(("/".join(parts[start:]), shape))
            if spec is not None:
                return spec
        return PartitionSpec()

    def specs(self, tree: Any) -> Any:
        """The ``PartitionSpec`` of every leaf of ``tree``.

        Args:
          tree: any pytree of arrays or ``jax.ShapeDtypeStruct``.

        Returns:
          The same structure, of specs.
        """
        return jm.map_with_names(lambda name, x: self.spec_of(name, np.shape(x)), tree)

    def shardings(self, tree: Any) -> Any:
        """The ``NamedSharding`` of every leaf of ``tree``.

        Args:
          tree: any pytree of arrays or ``jax.ShapeDtypeStruct``.

        Returns:
          The same structure, of shardings.
        """
        return jm.map_with_names(lambda name, x: NamedSharding(self.mesh, self.spec_of(name, np.shape(x))), tree)

    def put(self, tree: Any) -> Any:
        """``tree`` placed on the mesh. Host (NumPy) leaves go shard by shard: each device receives only its
        slice, so a large pretrained model never sits whole on one device; device arrays are resharded.

        Args:
          tree: a pytree of NumPy or JAX arrays (every host holds the same values).

        Returns:
          The tree of global ``jax.Array``.
        """

        def place(x: Any, sharding: NamedSharding) -> jax.Array:
            if isinstance(x, jax.Array):
                return jax.device_put(x, sharding)
            host = np.asarray(x)
            return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

        return jax.tree_util.tree_map(place, tree, self.shardings(tree))

    def bytes_per_device(self, tree: Any) -> int:
        """The bytes of ``tree`` that one device holds under this plan (the most loaded device).

        Args:
          tree: a pytree of arrays or ``jax.ShapeDtypeStruct``.

        Returns:
          The byte count.
        """

        def shard_bytes(name: str, x: Any) -> int:
            shard = NamedSharding(self.mesh, self.spec_of(name, x.shape)).shard_shape(tuple(x.shape))
            return int(np.prod(shard, dtype=np.int64)) * np.dtype(x.dtype).itemsize

        return sum(jax.tree_util.tree_leaves(jm.map_with_names(shard_bytes, tree)))
