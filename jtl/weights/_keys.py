"""Which checkpoint key each jtl variable comes from: a layout's rules run forwards over a checkpoint's key list."""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import numpy as np

from jtl.weights._convert import Rule
from jtl.weights._layout import Layout, State
from jtl.weights._readers import WeightLoadError


class Route(NamedTuple):
    """One tensor of the state the rules read (after the layout's ``prepare``): its key, the rule that first
    fullmatches it, and the jtl variable it becomes (``None``: skipped on purpose)."""

    key: str
    rule: Rule
    name: str | None


def routes(layout: Layout, state: State) -> tuple[list[Route], list[str]]:
    """The rules run forwards over a state's keys, as :func:`jtl.weights.convert` runs them: ``(routes, keys no
    rule matches)``."""
    compiled = [(re.compile(rule.source), rule) for rule in layout.rules_for(state)]
    out, unmatched = [], []
    for key in sorted(state):
        found = next(((m, r) for regex, r in compiled if (m := regex.fullmatch(key))), None)
        if found is None:
            unmatched.append(key)
            continue
        match, rule = found
        out.append(Route(key, rule, None if rule.target is None else match.expand(rule.target)))
    return out, unmatched


def prepared_sources(layout: Layout, state: State) -> tuple[dict[str, Any], dict[str, str]]:
    """The state the rules read, and for each of its keys the checkpoint key its values come from.

    A layout's ``prepare`` (splitting ModernBERT's fused ``Wqkv``, unstacking big_vision's scanned blocks) is run
    on read-only broadcast views of each key's number, which cost no memory whatever the shapes.
    """
    if layout.prepare is None:
        return dict(state), {key: key for key in state}
    keys = sorted(state)
    ids = {key: np.broadcast_to(np.int64(i), tuple(state[key].shape)) for i, key in enumerate(keys)}
    prepared = layout.prepare(ids)
    origin = {}
    for key, value in prepared.items():
        value = np.asarray(value)
        low, high = (int(value.min()), int(value.max())) if value.size else (-1, -1)
        if low != high:
            raise WeightLoadError(f"layout {layout.name!r}: its prepare step builds {key!r} from several keys")
        origin[key] = keys[low] if value.size else key
    return prepared, origin


def checkpoint_keys(layout: Layout, state: State) -> dict[str, str]:
    """The checkpoint key each jtl variable is loaded from, by the layout's own rules.

    Args:
      layout: e.g. ``jtl.weights.get_layout("hf-vit")``.
      state: the checkpoint's ``{key: array}``, or only shapes (``jtl.weights.safetensors_shapes(path)``).

    Returns:
      ``{jtl variable name ("params/encoder/block_0/attn/query/kernel"): checkpoint key}``. Keys skipped on
      purpose (buffers) have no variable. Where the layout's ``prepare`` splits a key, each part's variable
      maps to the key in the file (ModernBERT's ``attn/query``, ``key`` and ``value`` to one ``attn.Wqkv``).

    Raises:
      WeightLoadError: when two keys map to one variable.

    >>> from jtl.weights import get_layout
    >>> state = {"vit.encoder.layer.0.attention.attention.query.weight": np.zeros((8, 8)),
    ...          "vit.embeddings.position_ids": np.zeros((1, 5))}
    >>> checkpoint_keys(get_layout("hf-vit"), state)
    {'params/encoder/block_0/attn/query/kernel': 'vit.encoder.layer.0.attention.attention.query.weight'}
    >>> keys = checkpoint_keys(get_layout("hf-modernbert"), {"layers.0.attn.Wqkv.weight": np.zeros((12, 4))})
    >>> keys["params/encoder/block_0/attn/key/kernel"]
    'layers.0.attn.Wqkv.weight'
    """
    prepared, origin = prepared_sources(layout, state)
    found, _ = routes(layout, prepared)
    out, read_from = {}, {}
    for route in found:
        if route.name is None:
            continue
        if route.name in read_from:
            raise WeightLoadError(
                f"layout {layout.name!r}: keys {read_from[route.name]!r} and {route.key!r} both map to {route.name!r}"
            )
        read_from[route.name], out[route.name] = route.key, origin[route.key]
    return out
