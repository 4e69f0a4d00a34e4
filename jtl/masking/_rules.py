"""Labels and boolean masks from ordered ``(regex, label)`` rules matched against leaf names."""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import jax

from jtl.masking._names import MaskingError, PyTree, flatten_with_names, preview, structure_diff

Rules = Sequence[tuple[str, Hashable]]
# A mask may be given as patterns (regexes on names), as a callable from the tree to a boolean tree,
# or as a boolean tree itself.
MaskSpec = str | Sequence[str] | Callable[[PyTree], PyTree] | PyTree

_NO_DEFAULT = object()


def _compile(pattern: str, where: str) -> re.Pattern[str]:
    if not isinstance(pattern, str):
        raise MaskingError(f"{where}: a rule's pattern must be a regex string, got {pattern!r}")
    try:
        return re.compile(pattern)
    except re.error as e:
        raise MaskingError(f"{where}: invalid regex {pattern!r}: {e}") from e


def labels_for_names(
    names: Sequence[str], rules: Rules, *, default: Any = _NO_DEFAULT, allow_unused: bool = False
) -> list[Any]:
    """Labels a list of names by the first rule whose regex fullmatches each name."""
    if isinstance(rules, dict):
        rules = list(rules.items())
    compiled = []
    for i, rule in enumerate(rules):
        if not (isinstance(rule, tuple | list) and len(rule) == 2):
            raise MaskingError(f"rule {i} must be a (regex, label) pair, got {rule!r}")
        compiled.append((_compile(rule[0], f"rule {i}"), rule[1]))

    labels, uncovered = [], []
    wins = [0] * len(compiled)
    for name in names:
        for i, (regex, label) in enumerate(compiled):
            if regex.fullmatch(name):
                labels.append(label)
                wins[i] += 1
                break
        else:
            if default is _NO_DEFAULT:
                uncovered.append(name)
            labels.append(default)

    problems = []
    if uncovered:
        problems.append(f"no rule covers these leaves: {preview(uncovered)}")
    if not allow_unused:
        for i, (regex, label) in enumerate(compiled):
            if wins[i]:
                continue
            shadowed = [n for n in names if regex.fullmatch(n)]
            if i == len(compiled) - 1 and len(shadowed) == len(names):
                continue  # a spare final catch-all only restates the default; it hides no other rule
            if shadowed:
                problems.append(
                    f"rule {i} ({regex.pattern!r} -> {label!r}) labels nothing: every leaf it matches "
                    f"(e.g. {shadowed[0]!r}) is taken by an earlier rule"
                )
            else:
                problems.append(
                    f"rule {i} ({regex.pattern!r} -> {label!r}) matches no leaf "
                    f"(leaf names look like {preview(list(names[:3]), 3)})"
                )
    if problems:
        raise MaskingError("; ".join(problems))
    return labels


def label_by_rules(tree: PyTree, rules: Rules, *, default: Any = _NO_DEFAULT, allow_unused: bool = False) -> PyTree:
    """Labels every leaf with the label of the first rule whose regex fullmatches the leaf's name.

    Args:
      tree: any pytree; names come from :func:`leaf_names`.
      rules: ordered ``(regex, label)`` pairs (or a dict in insertion order).
      default: the label of leaves that no rule covers. Without it, such leaves are an error.
      allow_unused: if False (the default), a rule that matches no leaf is an error, because a typo in a
        freeze pattern must never silently train (or freeze) everything; so is a rule whose every match
        is taken by earlier rules, except a final catch-all that matches every leaf.

    Returns:
      A pytree with the structure of ``tree`` whose leaves are labels.

    Raises:
      MaskingError: naming the uncovered leaves or the rules that label nothing.

    >>> import jax.numpy as jnp
    >>> params = {"encoder": {"kernel": jnp.ones((2, 2))}, "head": {"kernel": jnp.ones((2, 3))}}
    >>> label_by_rules(params, [("head/.*", "trainable"), (".*", "frozen")])
    {'encoder': {'kernel': 'frozen'}, 'head': {'kernel': 'trainable'}}
    """
    names, _, treedef = flatten_with_names(tree)
    labels = labels_for_names(names, rules, default=default, allow_unused=allow_unused)
    return jax.tree_util.tree_unflatten(treedef, labels)


def _as_patterns(spec: str | Sequence[str]) -> list[str]:
    return [spec] if isinstance(spec, str) else list(spec)


def _is_patterns(spec: Any) -> bool:
    return isinstance(spec, str) or (
        isinstance(spec, list | tuple) and len(spec) > 0 and all(isinstance(p, str) for p in spec)
    )


def select(tree: PyTree, patterns: str | Sequence[str], *, allow_unused: bool = False) -> PyTree:
    """Returns a boolean tree: True where any of ``patterns`` fullmatches the leaf's name.

    Args:
      tree: any pytree.
      patterns: one regex or a sequence of regexes.
      allow_unused: if False, a pattern that matches no leaf is an error.

    Returns:
      A pytree of Python bools with the structure of ``tree``.

    >>> import jax.numpy as jnp
    >>> select({"a": {"bias": jnp.ones(1), "kernel": jnp.ones(1)}}, ".*/bias")
    {'a': {'bias': True, 'kernel': False}}
    """
    patterns = _as_patterns(patterns)
    names, _, treedef = flatten_with_names(tree)
    compiled = [_compile(p, f"pattern {i}") for i, p in enumerate(patterns)]
    if not allow_unused:
        unused = [p.pattern for p in compiled if not any(p.fullmatch(n) for n in names)]
        if unused:
            raise MaskingError(f"these patterns match no leaf: {unused} (leaf names look like {preview(names[:3], 3)})")
    return jax.tree_util.tree_unflatten(treedef, [any(p.fullmatch(n) for p in compiled) for n in names])


def resolve_mask(spec: MaskSpec, tree: PyTree, *, allow_unused: bool = False) -> PyTree:
    """Turns a mask spec (patterns, a callable, or a boolean tree) into a boolean tree fitting ``tree``.

    Args:
      spec: regex patterns on leaf names, a callable ``tree -> boolean tree``, or a boolean tree.
      tree: the pytree the mask is for.
      allow_unused: passed to :func:`select` for patterns.

    Returns:
      A boolean pytree with the structure of ``tree``.

    Raises:
      MaskingError: when the mask does not fit ``tree``; the message lists missing/unexpected leaves.

    >>> import jax.numpy as jnp
    >>> resolve_mask(lambda t: {"w": True}, {"w": jnp.ones(1)})
    {'w': True}
    """
    if _is_patterns(spec):
        return select(tree, spec, allow_unused=allow_unused)
    # An Equinox module is callable *and* a pytree: a mask given as a module is a tree, not a function.
    is_function = callable(spec) and jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(spec))
    mask = spec(tree) if is_function else spec
    tree_def = jax.tree_util.tree_structure(tree)
    if jax.tree_util.tree_structure(mask) != tree_def:
        raise MaskingError(f"the mask does not fit the params: {structure_diff(tree, mask)}")
    bad = [
        (name, leaf)
        for name, leaf in zip(flatten_with_names(tree)[0], jax.tree_util.tree_leaves(mask), strict=True)
        if not isinstance(leaf, bool)
    ]
    if bad:
        found = preview([f"{n}={v!r}" for n, v in bad])
        raise MaskingError(f"mask leaves must be Python bools (masks are static); got {found}")
    return mask


def trainable_mask(
    tree: PyTree,
    *,
    trainable: MaskSpec | None = None,
    frozen: MaskSpec | None = None,
    allow_unused: bool = False,
) -> PyTree:
    """Returns a boolean tree, True for trainable leaves, from either a trainable or a frozen spec.

    Args:
      tree: the parameter pytree.
      trainable: what trains (patterns, callable or boolean tree); everything else is frozen.
      frozen: what is frozen; everything else trains. Give exactly one of the two.
      allow_unused: if False, a pattern that matches no leaf is an error.

    Returns:
      A pytree of Python bools, True where the leaf trains.

    >>> import jax.numpy as jnp
    >>> params = {"backbone": {"kernel": jnp.ones(2)}, "head": {"kernel": jnp.ones(2)}}
    >>> trainable_mask(params, frozen="backbone/.*")
    {'backbone': {'kernel': False}, 'head': {'kernel': True}}
    """
    if (trainable is None) == (frozen is None):
        raise MaskingError("give exactly one of `trainable=` or `frozen=`")
    if trainable is not None:
        return resolve_mask(trainable, tree, allow_unused=allow_unused)
    mask = resolve_mask(frozen, tree, allow_unused=allow_unused)
    return jax.tree_util.tree_map(lambda m: not m, mask)
