"""Stable ``"a/b/c"`` names for the leaves of any pytree."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import jax

PyTree = Any

SEPARATOR = "/"


class MaskingError(ValueError):
    """A rule, mask or tree that does not fit: the message names the offending paths."""


def _is_nnx_variable(node: Any) -> bool:
    # Checked through sys.modules so that jtl.masking never imports flax itself: if flax.nnx is not
    # loaded, the tree cannot contain its Variables.
    nnx = sys.modules.get("flax.nnx")
    return nnx is not None and isinstance(node, nnx.Variable)


def _key_to_str(key: Any) -> str:
    if isinstance(key, jax.tree_util.DictKey):
        return str(key.key)
    if isinstance(key, jax.tree_util.GetAttrKey):
        return key.name
    if isinstance(key, jax.tree_util.SequenceKey):
        return str(key.idx)
    if isinstance(key, jax.tree_util.FlattenedIndexKey):
        return str(key.key)
    return str(key)


def flatten_with_names(tree: PyTree) -> tuple[list[str], list[Any], Any]:
    """Leaves in ``jax.tree_util.tree_flatten`` order, their names and the treedef."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    names = []
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_nnx_variable)[0]
    for path, node in flat:
        prefix = [_key_to_str(k) for k in path]
        if _is_nnx_variable(node):
            # An nnx Variable adds a `.value` level that says nothing about the parameter; dropping it
            # gives `linear/kernel` for nnx exactly as for linen.
            for sub_path, _ in jax.tree_util.tree_flatten_with_path(node)[0]:
                rest = [_key_to_str(k) for k in sub_path]
                if rest[:1] == ["value"]:
                    rest = rest[1:]
                names.append(SEPARATOR.join(prefix + rest))
        else:
            names.append(SEPARATOR.join(prefix))
    if len(set(names)) != len(names):
        seen: set[str] = set()
        dupes = sorted({n for n in names if n in seen or seen.add(n)})
        raise MaskingError(f"leaf names are not unique, so rules cannot tell these leaves apart: {dupes}")
    return names, leaves, treedef


def leaf_names(tree: PyTree) -> PyTree:
    """Returns a tree of the same structure whose leaves are the ``"a/b/c"`` names of the leaves.

    Dict keys, attribute names (Equinox modules, dataclasses) and sequence indices become the name's
    components; the ``value`` level of ``flax.nnx`` Variables is dropped, so an nnx ``Linear`` kernel is
    ``"linear/kernel"`` exactly as in linen.

    Args:
      tree: any pytree (nested dicts/lists/tuples/NamedTuples, ``nnx.State``, Equinox modules).

    Returns:
      A pytree with the structure of ``tree`` and string leaves.

    >>> import jax.numpy as jnp
    >>> leaf_names({"encoder": [{"kernel": jnp.ones(2)}], "head": {"bias": jnp.zeros(1)}})
    {'encoder': [{'kernel': 'encoder/0/kernel'}], 'head': {'bias': 'head/bias'}}
    """
    names, _, treedef = flatten_with_names(tree)
    return jax.tree_util.tree_unflatten(treedef, names)


def named_leaves(tree: PyTree) -> list[tuple[str, Any]]:
    """Returns ``(name, leaf)`` pairs in flattening order.

    Args:
      tree: any pytree.

    Returns:
      A list of ``(name, leaf)`` tuples.

    >>> import jax.numpy as jnp
    >>> [(n, x.shape) for n, x in named_leaves({"b": jnp.ones(3), "a": {"w": jnp.ones((2, 2))}})]
    [('a/w', (2, 2)), ('b', (3,))]
    """
    names, leaves, _ = flatten_with_names(tree)
    return list(zip(names, leaves, strict=True))


def map_with_names(fn: Callable[..., Any], tree: PyTree, *rest: PyTree) -> PyTree:
    """Maps ``fn(name, leaf, *rest_leaves)`` over ``tree`` (and trees of the same structure).

    Args:
      fn: called with the leaf's name, the leaf, and the matching leaves of ``rest``.
      tree: the pytree that gives the names and the structure.
      *rest: further pytrees with the structure of ``tree``.

    Returns:
      A pytree with the structure of ``tree`` holding ``fn``'s results.

    >>> import jax.numpy as jnp
    >>> map_with_names(lambda name, x: name.endswith("bias"), {"w": jnp.ones(2), "bias": jnp.ones(2)})
    {'bias': True, 'w': False}
    """
    names, leaves, treedef = flatten_with_names(tree)
    others = []
    for i, other in enumerate(rest):
        try:
            others.append(treedef.flatten_up_to(other))
        except (ValueError, TypeError) as e:
            raise MaskingError(
                f"tree {i + 1} of `rest` does not have the structure of `tree`: {structure_diff(tree, other)}"
            ) from e
    return jax.tree_util.tree_unflatten(
        treedef, [fn(n, x, *r) for n, x, *r in zip(names, leaves, *others, strict=True)]
    )


def structure_diff(expected: PyTree, found: PyTree) -> str:
    """Describes how two trees differ, by leaf name, for error messages."""
    try:
        want = set(flatten_with_names(expected)[0])
        got = set(flatten_with_names(found)[0])
    except MaskingError as e:
        return str(e)
    missing, extra = sorted(want - got), sorted(got - want)
    if not missing and not extra:
        return (
            "same leaf names but different node types: "
            f"{jax.tree_util.tree_structure(expected)} vs {jax.tree_util.tree_structure(found)}"
        )
    return f"missing leaves {preview(missing)}; unexpected leaves {preview(extra)}"


def preview(names: list[str], limit: int = 20) -> str:
    """The names for an error message, cut after ``limit``."""
    if len(names) <= limit:
        return str(names)
    return f"{names[:limit]} and {len(names) - limit} more"
