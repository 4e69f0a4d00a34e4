"""A table of parameter groups: counts, bytes, trainable share and optimizer-state bytes, before compiling."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import numpy as np
import optax

from jtl.masking._freeze import freeze
from jtl.masking._names import SEPARATOR, PyTree, flatten_with_names
from jtl.masking._rules import MaskSpec, Rules, labels_for_names, trainable_mask

UNATTRIBUTED = "(optimizer scalars)"


class GroupRow(NamedTuple):
    """One group of the report; sizes are element counts and bytes."""

    group: str
    params: int
    trainable_params: int
    bytes: int
    opt_state_bytes: int

    @property
    def trainable_share(self) -> float:
        return self.trainable_params / self.params if self.params else 0.0


class MaskingReport(NamedTuple):
    """Rows per group plus the total; ``str()`` gives a terminal table, :meth:`to_dict` plain data."""

    rows: tuple[GroupRow, ...]
    total: GroupRow

    def to_dict(self) -> dict[str, Any]:
        """Returns the report as JSON-ready data."""

        def as_dict(row: GroupRow) -> dict[str, Any]:
            return {**row._asdict(), "trainable_share": row.trainable_share}

        return {"rows": [as_dict(r) for r in self.rows], "total": as_dict(self.total)}

    def __str__(self) -> str:
        header = ("group", "params", "% of all", "trainable", "bytes", "opt state")
        lines = [header]
        for row in (*self.rows, self.total):
            share_of_all = row.params / self.total.params if self.total.params else 0.0
            lines.append(
                (
                    row.group,
                    f"{row.params:,}",
                    f"{share_of_all:.1%}",
                    f"{row.trainable_params:,} ({row.trainable_share:.0%})",
                    _human_bytes(row.bytes),
                    _human_bytes(row.opt_state_bytes),
                )
            )
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        rule = "  ".join("-" * w for w in widths)
        fmt = [
            line[0].ljust(widths[0]) + "  " + "  ".join(c.rjust(w) for c, w in zip(line[1:], widths[1:], strict=True))
            for line in lines
        ]
        return "\n".join([fmt[0], rule, *fmt[1:-1], rule, fmt[-1]])


def _human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _nbytes(leaf: Any) -> int:
    return int(np.prod(np.shape(leaf), dtype=np.int64)) * np.dtype(leaf.dtype).itemsize


def report(
    params: PyTree,
    *,
    trainable: MaskSpec | None = None,
    frozen: MaskSpec | None = None,
    groups: Rules | None = None,
    depth: int = 1,
    optimizer: optax.GradientTransformation | None = None,
    leaf_groups: Mapping[str, str] | None = None,
) -> MaskingReport:
    """Reports parameter groups before anything compiles; nothing is allocated (``jax.eval_shape``).

    Args:
      params: the parameter tree; arrays or ``jax.ShapeDtypeStruct`` leaves.
      trainable: what trains (patterns, callable or boolean tree). Give this or ``frozen``; with neither,
        everything trains.
      frozen: what is frozen.
      groups: ``(regex, group)`` rules naming the rows; by default the first ``depth`` name components.
      depth: how many name components make a group when ``groups`` is not given.
      optimizer: if given, its state bytes per group when wrapped by :func:`freeze` (frozen leaves hold none).
      leaf_groups: ``{leaf name: group}``: leaves with these last name components form these groups whatever
        ``groups`` or ``depth`` say, e.g. adapters' leaves one row per method (``jtl.adapters.adapter_groups``).

    Returns:
      A :class:`MaskingReport`.

    >>> import jax.numpy as jnp, optax
    >>> params = {"backbone": {"kernel": jnp.ones((4, 4))}, "head": {"kernel": jnp.ones((4, 2))}}
    >>> r = report(params, trainable="head/.*", optimizer=optax.adam(1e-3))
    >>> [(row.group, row.params, row.trainable_params, row.opt_state_bytes) for row in r.rows]
    [('backbone', 16, 0, 0), ('head', 8, 8, 64), ('(optimizer scalars)', 0, 0, 4)]
    >>> print(r)
    group                params  % of all  trainable  bytes  opt state
    -------------------  ------  --------  ---------  -----  ---------
    backbone                 16     66.7%     0 (0%)   64 B        0 B
    head                      8     33.3%   8 (100%)   32 B       64 B
    (optimizer scalars)       0      0.0%     0 (0%)    0 B        4 B
    -------------------  ------  --------  ---------  -----  ---------
    total                    24    100.0%    8 (33%)   96 B       68 B

    Adapter leaves beside the kernels they adapt, in a row of their own:

    >>> params = {"q": {"kernel": jnp.ones((4, 4)), "lora_a": jnp.ones((4, 1)), "lora_b": jnp.ones((1, 4))}}
    >>> r = report(params, trainable=".*/lora_.", leaf_groups={"lora_a": "lora", "lora_b": "lora"})
    >>> [(row.group, row.params, row.trainable_params) for row in r.rows]
    [('q', 16, 0), ('lora', 8, 8)]
    """
    if trainable is None and frozen is None:
        mask = jax.tree_util.tree_map(lambda _: True, params)
    else:
        mask = trainable_mask(params, trainable=trainable, frozen=frozen)
    names, leaves, _ = flatten_with_names(params)
    is_trainable = jax.tree_util.tree_leaves(mask)
    if groups is not None:
        group_of = dict(zip(names, map(str, labels_for_names(names, groups)), strict=True))
    else:
        group_of = {n: SEPARATOR.join(n.split(SEPARATOR)[:depth]) for n in names}
    if leaf_groups:
        group_of.update({n: leaf_groups[leaf] for n in names if (leaf := n.rsplit(SEPARATOR, 1)[-1]) in leaf_groups})

    order = list(dict.fromkeys(group_of[n] for n in names))
    counts = {g: [0, 0, 0, 0] for g in order}
    for name, leaf, train in zip(names, leaves, is_trainable, strict=True):
        size = int(np.prod(np.shape(leaf), dtype=np.int64))
        row = counts[group_of[name]]
        row[0] += size
        row[1] += size if train else 0
        row[2] += _nbytes(leaf)

    total_state = 0
    if optimizer is not None:
        state = jax.eval_shape(freeze(optimizer, trainable=mask).init, params)
        for state_name, state_leaf in zip(*flatten_with_names(state)[:2], strict=True):
            nbytes = _nbytes(state_leaf)
            total_state += nbytes
            group = _owner(state_name, group_of)
            if group is None:
                counts.setdefault(UNATTRIBUTED, [0, 0, 0, 0])
                group = UNATTRIBUTED
            counts[group][3] += nbytes
        if UNATTRIBUTED in counts and UNATTRIBUTED not in order:
            order.append(UNATTRIBUTED)

    rows = tuple(GroupRow(g, *counts[g]) for g in order)
    total = GroupRow("total", *(sum(counts[g][i] for g in order) for i in range(3)), total_state)
    return MaskingReport(rows, total)


def _owner(state_name: str, group_of: dict[str, str]) -> str | None:
    """The group of the parameter whose name is the longest suffix of an optimizer-state leaf's name."""
    parts = state_name.split(SEPARATOR)
    for start in range(len(parts)):
        group = group_of.get(SEPARATOR.join(parts[start:]))
        if group is not None:
            return group
    return None
