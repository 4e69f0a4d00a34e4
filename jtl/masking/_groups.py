"""Per-group learning rates, layer-wise decay, weight-decay masks and gradual unfreezing."""

from __future__ import annotations

import bisect
import itertools
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jtl.masking._names import MaskingError, PyTree, flatten_with_names, preview
from jtl.masking._rules import Rules, labels_for_names, select


def _scale_by_name(multipliers_for: Callable[[list[str]], list[float]]) -> optax.GradientTransformation:
    """Scales each update by a static multiplier computed from the leaf names of the updates."""

    def init(params: PyTree) -> optax.EmptyState:
        del params
        return optax.EmptyState()

    def update(updates: PyTree, state: optax.EmptyState, params: PyTree = None) -> tuple[PyTree, Any]:
        del params
        names, leaves, treedef = flatten_with_names(updates)
        scaled = [
            u if m == 1.0 else u * jnp.asarray(m, dtype=u.dtype)
            for u, m in zip(leaves, multipliers_for(names), strict=True)
        ]
        return jax.tree_util.tree_unflatten(treedef, scaled), state

    return optax.GradientTransformation(init, update)


def lr_multipliers(rules: Rules, *, default: float = 1.0, allow_unused: bool = False) -> optax.GradientTransformation:
    """Multiplies each leaf's update by the multiplier of the first rule whose regex fullmatches its name.

    Chain it after the optimizer (``optax.chain(optax.adamw(lr), lr_multipliers(...))``): scaling the
    final update equals scaling that group's learning rate, decoupled weight decay included (as PyTorch's
    per-group ``lr`` does). Put it outside :func:`freeze`, where it sees every leaf.

    Args:
      rules: ordered ``(regex, multiplier)`` pairs.
      default: the multiplier of leaves no rule covers.
      allow_unused: if False, a rule that applies to no leaf is an error.

    Returns:
      An ``optax.GradientTransformation`` with no state.

    >>> import jax.numpy as jnp
    >>> tx = lr_multipliers([("embed/.*", 0.1)])
    >>> updates = {"embed": {"w": jnp.ones(1)}, "head": {"w": jnp.ones(1)}}
    >>> out, _ = tx.update(updates, tx.init(updates))
    >>> out["embed"]["w"].tolist(), out["head"]["w"].tolist()
    ([0.1...], [1.0])
    """
    return _scale_by_name(
        lambda names: [float(m) for m in labels_for_names(names, rules, default=default, allow_unused=allow_unused)]
    )


def layerwise_multipliers(
    names: Sequence[str], layer_of: Callable[[str], int | None], num_layers: int, decay: float
) -> list[float]:
    """Each name's learning-rate multiplier under layer-wise decay: ``decay ** (num_layers - layer_of(name))``.

    Args:
      names: leaf names.
      layer_of: name -> layer index in ``[0, num_layers]``.
      num_layers: the top layer's index (multiplier 1).
      decay: the factor per layer.

    Returns:
      One multiplier per name.

    Raises:
      MaskingError: naming the leaves ``layer_of`` cannot place.

    >>> layer_of = {"embed/w": 0, "block_0/w": 1, "head/w": 2}.get
    >>> layerwise_multipliers(["embed/w", "block_0/w", "head/w"], layer_of, 2, 0.5)
    [0.25, 0.5, 1.0]
    """
    layers = [layer_of(n) for n in names]
    bad = [f"{n} -> {layer!r}" for n, layer in zip(names, layers, strict=True) if not _valid_layer(layer, num_layers)]
    if bad:
        raise MaskingError(f"layer_of must return a layer in [0, {num_layers}] for every leaf; got {preview(bad)}")
    return [float(decay ** (num_layers - layer)) for layer in layers]


def _valid_layer(layer: Any, num_layers: int) -> bool:
    return isinstance(layer, int) and not isinstance(layer, bool) and 0 <= layer <= num_layers


def layerwise_lr_decay(
    layer_of: Callable[[str], int | None], num_layers: int, decay: float
) -> optax.GradientTransformation:
    """Layer-wise learning-rate decay: scales each update by ``decay ** (num_layers - layer_of(name))``.

    The top layer (``num_layers``, usually the head) keeps the full learning rate and each layer below gets
    ``decay`` times the one above (BEiT/ELECTRA's LLRD; ULMFiT's discriminative rates are ``decay=1/2.6``).

    Args:
      layer_of: maps a leaf name to its layer index in ``[0, num_layers]``.
      num_layers: the index of the top layer.
      decay: the factor between consecutive layers.

    Returns:
      An ``optax.GradientTransformation`` with no state, to chain after the optimizer.

    >>> import jax.numpy as jnp
    >>> tx = layerwise_lr_decay(block_layer_index(num_blocks=2), num_layers=3, decay=0.5)
    >>> updates = {"embed": jnp.ones(1), "encoder": {"block_1": {"w": jnp.ones(1)}}, "head": jnp.ones(1)}
    >>> out, _ = tx.update(updates, tx.init(updates))
    >>> [float(x[0]) for x in jax.tree_util.tree_leaves(out)]
    [0.125, 0.5, 1.0]
    """
    return _scale_by_name(lambda names: layerwise_multipliers(names, layer_of, num_layers, decay))


_BLOCK = re.compile(r"(?:.*/)?block_(\d+)/.*")


def block_layer_index(num_blocks: int, embed_pattern: str = r"embed(/.*)?") -> Callable[[str], int]:
    """Layer index for jtl's uniform names: ``embed/...`` is 0, ``.../block_{i}/...`` is ``i + 1``, the rest
    (final norm, pooler, head) is ``num_blocks + 1``.

    Args:
      num_blocks: the number of blocks.
      embed_pattern: the regex of the embedding leaves.

    Returns:
      A function from leaf name to layer index.

    >>> f = block_layer_index(12)
    >>> f("embed/patch/kernel"), f("encoder/block_11/mlp/fc1/kernel"), f("head/kernel")
    (0, 12, 13)
    """
    embed = re.compile(embed_pattern)

    def layer_of(name: str) -> int:
        if embed.fullmatch(name):
            return 0
        match = _BLOCK.fullmatch(name)
        return int(match.group(1)) + 1 if match else num_blocks + 1

    return layer_of


# Names of parameters that are looked up, not multiplied: position/word embeddings and class tokens.
_EMBEDDING_LIKE = re.compile(r"(?i).*(embedding|embeddings|embed|token)|cls")
_TORCH_LIKE_WEIGHT = re.compile(r"(?i)weight|kernel")


def _components(name: str) -> list[str]:
    return [c for c in re.split(r"[/.]", name) if c]


def weight_decay_mask(tree: PyTree, *, exclude: str | Sequence[str] = ()) -> PyTree:
    """The usual weight-decay mask: True for matrices and conv kernels; False for biases, norm scales
    (all 1-D leaves), embedding tables, position embeddings and class tokens.

    Works with linen/nnx names (``embedding``, ``pos_embedding``, ``cls``) and PyTorch-style names
    (``word_embeddings.weight``, ``cls_token``). Pass it as ``optax.adamw(..., mask=weight_decay_mask)``.

    Args:
      tree: the parameter pytree.
      exclude: extra regexes (on leaf names) of leaves that must not decay.

    Returns:
      A pytree of Python bools, True where weight decay applies.

    >>> import jax.numpy as jnp
    >>> weight_decay_mask({"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)},
    ...                    "embed": {"embedding": jnp.ones((5, 2))}})
    {'dense': {'bias': False, 'kernel': True}, 'embed': {'embedding': False}}
    """
    excluded = select(tree, exclude, allow_unused=True) if exclude else None
    names, leaves, treedef = flatten_with_names(tree)

    def decays(name: str, leaf: Any) -> bool:
        if jnp.ndim(leaf) < 2:
            return False
        parts = _components(name) or [""]
        if _EMBEDDING_LIKE.fullmatch(parts[-1]):
            return False
        return not (len(parts) > 1 and _TORCH_LIKE_WEIGHT.fullmatch(parts[-1]) and _EMBEDDING_LIKE.fullmatch(parts[-2]))

    mask = [decays(n, x) for n, x in zip(names, leaves, strict=True)]
    if excluded is not None:
        mask = [m and not e for m, e in zip(mask, jax.tree_util.tree_leaves(excluded), strict=True)]
    return jax.tree_util.tree_unflatten(treedef, mask)


class GradualUnfreezing(NamedTuple):
    """A ULMFiT-style unfreezing schedule: group ``k``'s patterns become trainable at step ``starts[k]``.

    Groups are usually listed top first (head, last block, the block below, ...). The trainable set is
    static within a stage; a train loop rebuilds (and recompiles) its step when :meth:`stage` changes and
    carries the optimizer state over with :func:`carry_over_state`, so still-frozen blocks never get a
    gradient computed.

    >>> schedule = GradualUnfreezing(groups=(("head/.*",), ("encoder/block_1/.*",)), starts=(0, 100))
    >>> schedule.stage(99), schedule.stage(100), schedule.trainable_patterns(100)
    (0, 1, ('head/.*', 'encoder/block_1/.*'))
    """

    groups: tuple[tuple[str, ...], ...]
    starts: tuple[int, ...]

    def stage(self, step: int) -> int:
        """Returns the index of the last group unfrozen at ``step``."""
        return bisect.bisect_right(self.starts, step) - 1

    def trainable_patterns(self, step: int) -> tuple[str, ...]:
        """Returns the patterns of every group unfrozen at ``step``."""
        return tuple(p for group in self.groups[: self.stage(step) + 1] for p in group)

    def mask(self, tree: PyTree, step: int) -> PyTree:
        """Returns the boolean trainable mask of ``tree`` at ``step``."""
        return select(tree, self.trainable_patterns(step))


def gradual_unfreezing(
    groups: Sequence[str | Sequence[str]], *, every: int | None = None, starts: Sequence[int] | None = None
) -> GradualUnfreezing:
    """Builds a :class:`GradualUnfreezing` schedule: a group unfrozen every ``every`` steps or at ``starts``.

    Args:
      groups: patterns per group, top first; the first group trains from step 0.
      every: steps between consecutive unfreezings.
      starts: explicit start steps, increasing, starting at 0. Give ``every`` or ``starts``.

    Returns:
      The schedule.

    >>> gradual_unfreezing(["head/.*", "encoder/block_1/.*"], every=50).starts
    (0, 50)
    """
    normalised = tuple((g,) if isinstance(g, str) else tuple(g) for g in groups)
    if not normalised:
        raise MaskingError("gradual_unfreezing needs at least one group")
    if (every is None) == (starts is None):
        raise MaskingError("give exactly one of `every=` or `starts=`")
    if every is not None:
        if every <= 0:
            raise MaskingError(f"`every` must be positive, got {every}")
        starts = [k * every for k in range(len(normalised))]
    starts = tuple(int(s) for s in starts)
    increasing = all(b > a for a, b in itertools.pairwise(starts))
    if len(starts) != len(normalised) or starts[0] != 0 or not increasing:
        raise MaskingError(
            f"`starts` must be increasing, begin at 0 and have one entry per group "
            f"({len(normalised)} groups); got {starts}"
        )
    return GradualUnfreezing(normalised, starts)
