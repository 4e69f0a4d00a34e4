"""Declarative rename/transpose tables, and merging converted weights into freshly initialised variables."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from jtl.masking import named_leaves
from jtl.weights._readers import WeightLoadError

Transform = Callable[[np.ndarray], np.ndarray]
# An inverse transform also sees the model's fields: undoing a reshape can need one (big_vision's per-head kernels).
Inverse = Callable[[np.ndarray, Mapping[str, Any]], np.ndarray]


def same(x: np.ndarray) -> np.ndarray:
    return x


def transpose(x: np.ndarray) -> np.ndarray:
    """PyTorch ``Linear`` (out, in) -> Flax ``Dense`` (in, out)."""
    return x.T


def untranspose(x: np.ndarray, fields: Mapping[str, Any]) -> np.ndarray:
    """Flax ``Dense`` (in, out) -> PyTorch ``Linear`` (out, in): the inverse of :func:`transpose`."""
    del fields
    return x.T


def conv_oihw_to_hwio(x: np.ndarray) -> np.ndarray:
    """PyTorch ``Conv2d`` (out, in, h, w) -> Flax ``Conv`` (h, w, in, out)."""
    return x.transpose(2, 3, 1, 0)


def conv_hwio_to_oihw(x: np.ndarray, fields: Mapping[str, Any]) -> np.ndarray:
    """Flax ``Conv`` (h, w, in, out) -> PyTorch ``Conv2d`` (out, in, h, w): the inverse of the above."""
    del fields
    return x.transpose(3, 2, 0, 1)


class Rule(NamedTuple):
    """``source`` regex (fullmatched on checkpoint keys) -> ``target`` template (``\\1`` for groups).

    ``target=None`` marks keys to skip on purpose (buffers such as ``position_ids``). To run backwards
    (:func:`jtl.weights.export`), a rule names the key it writes for a target: ``export``, a template over the
    target's groups, defaults to ``source`` when that is a plain template (literal text and groups only, e.g.
    ``layer1\\.(\\d+)\\.conv([123])\\.weight``); a rule whose ``transform`` is not :func:`same` needs its
    ``inverse``.
    """

    source: str
    target: str | None
    transform: Transform = same
    export: str | None = None
    inverse: Inverse | None = None


def plain_template(regex: str) -> str | None:
    r"""The key a regex matches when it is literal text and capture groups only, with ``\N`` for group N.

    Args:
      regex: a rule's source regex.

    Returns:
      The template, or ``None`` where the regex has other syntax (choices, optional parts, classes outside a
      group): there the key to write back is not determined, and a rule names it in ``export``.

    >>> plain_template(r"layer1\.(\d+)\.conv([123])\.weight"), plain_template(r"(?:vit\.)?pooler")
    ('layer1.\\1.conv\\2.weight', None)
    """
    out, groups, i = [], 0, 0
    while i < len(regex):
        char = regex[i]
        if char == "\\":
            escaped = regex[i + 1 : i + 2]
            if not escaped or escaped.isalnum():  # \d, \w, \1: not a literal character
                return None
            out.append(escaped)
            i += 2
        elif char == "(":
            if regex.startswith("(?", i):
                return None
            groups += 1
            out.append(f"\\{groups}")
            depth, i = 1, i + 1
            while depth:  # skip the group's own pattern; groups nested in it still take numbers
                if i >= len(regex):
                    return None
                if regex[i] == "\\":
                    i += 2
                    continue
                if regex[i] == "(":
                    depth += 1
                    groups += not regex.startswith("(?", i)
                elif regex[i] == ")":
                    depth -= 1
                i += 1
        elif char in "[]{}()*+?|^$.":
            return None
        else:
            out.append(char)
            i += 1
    return "".join(out)


def linear(source: str, target: str) -> list[Rule]:
    """Rules for a PyTorch ``Linear`` (``.weight``/``.bias``) -> a Flax ``Dense`` under ``params/``.

    Args:
      source: the PyTorch module's key, a regex (``classifier``, ``layer\\.(\\d+)\\.fc``).
      target: the Flax path, a template (``head``, ``encoder/block_\\1/fc``).

    Returns:
      The rules (the kernel is transposed).

    >>> [rule.target for rule in linear("classifier", "head")]
    ['params/head/kernel', 'params/head/bias']
    """
    return [
        Rule(source + r"\.weight", f"params/{target}/kernel", transpose, inverse=untranspose),
        Rule(source + r"\.bias", f"params/{target}/bias"),
    ]


def layer_norm(source: str, target: str) -> list[Rule]:
    """Rules for a PyTorch ``LayerNorm`` (``weight``/``bias``, or old BERT's ``gamma``/``beta``).

    Args:
      source: the PyTorch module's key (a regex).
      target: the Flax path (a template).

    Returns:
      The rules.

    >>> [rule.target for rule in layer_norm("ln_f", "norm")]
    ['params/norm/scale', 'params/norm/bias']
    """
    # Exported under today's names (weight/bias), where the module's key is a plain template.
    key = plain_template(source)
    return [
        Rule(source + r"\.(?:weight|gamma)", f"params/{target}/scale", export=key and key + ".weight"),
        Rule(source + r"\.(?:bias|beta)", f"params/{target}/bias", export=key and key + ".bias"),
    ]


def conv(source: str, target: str) -> list[Rule]:
    """Rules for a PyTorch ``Conv2d`` -> a Flax ``Conv`` (HWIO kernel).

    Args:
      source: the PyTorch module's key (a regex).
      target: the Flax path (a template).

    Returns:
      The rules (the kernel goes from OIHW to HWIO).

    >>> conv("conv1", "embed/conv")[0].transform(np.zeros((8, 3, 7, 7))).shape
    (7, 7, 3, 8)
    """
    return [
        Rule(source + r"\.weight", f"params/{target}/kernel", conv_oihw_to_hwio, inverse=conv_hwio_to_oihw),
        Rule(source + r"\.bias", f"params/{target}/bias"),
    ]


def batch_norm(source: str, target: str) -> list[Rule]:
    """Rules for a PyTorch ``BatchNorm2d``: affine params to ``params/``, running stats to ``batch_stats/``.

    Args:
      source: the PyTorch module's key (a regex).
      target: the Flax path (a template).

    Returns:
      The rules (``num_batches_tracked`` is skipped).

    >>> [rule.target for rule in batch_norm("bn1", "embed/bn")][:4]
    ['params/embed/bn/scale', 'params/embed/bn/bias', 'batch_stats/embed/bn/mean', 'batch_stats/embed/bn/var']
    """
    return [
        Rule(source + r"\.weight", f"params/{target}/scale"),
        Rule(source + r"\.bias", f"params/{target}/bias"),
        Rule(source + r"\.running_mean", f"batch_stats/{target}/mean"),
        Rule(source + r"\.running_var", f"batch_stats/{target}/var"),
        Rule(source + r"\.num_batches_tracked", None),
    ]


def convert(state: dict[str, np.ndarray], rules: Sequence[Rule], where: str) -> tuple[dict, list[tuple[str, tuple]]]:
    """Renames and transforms checkpoint tensors by the first rule that fullmatches each key.

    Args:
      state: ``{checkpoint key: array}``.
      rules: the family's table.
      where: the checkpoint's name, for error messages.

    Returns:
      ``({target name: (array, source key)}, [(unmatched source key, shape)])``.

    >>> state = {"fc.weight": np.ones((2, 3)), "fc.bias": np.zeros(2), "extra": np.zeros(1)}
    >>> converted, unmatched = convert(state, linear("fc", "head"), "model.safetensors")
    >>> {name: (x.shape, key) for name, (x, key) in converted.items()}, unmatched
    ({'params/head/bias': ((2,), 'fc.bias'), 'params/head/kernel': ((3, 2), 'fc.weight')}, [('extra', (1,))])
    """
    compiled = [(re.compile(r.source), r) for r in rules]
    converted: dict[str, tuple[np.ndarray, str]] = {}
    unmatched = []
    for key in sorted(state):
        for regex, rule in compiled:
            match = regex.fullmatch(key)
            if match is None:
                continue
            if rule.target is not None:
                target = match.expand(rule.target)
                if target in converted:
                    raise WeightLoadError(f"{where}: keys {converted[target][1]!r} and {key!r} both map to {target!r}")
                converted[target] = (rule.transform(np.asarray(state[key])), key)
            break
        else:
            unmatched.append((key, tuple(np.shape(state[key]))))
    return converted, unmatched


class LoadReport(NamedTuple):
    """What loading did, key by key; ``str()`` gives the printed summary."""

    source: str
    loaded: list[tuple[str, tuple]]
    missing: list[tuple[str, tuple]]
    unexpected: list[tuple[str, tuple]]
    reinitialised: list[tuple[str, tuple, str]]
    resized: list[tuple[str, tuple, tuple]]

    def __str__(self) -> str:
        lines = [
            f"loaded {self.source}: {len(self.loaded)} loaded, {len(self.missing)} missing, "
            f"{len(self.unexpected)} unexpected, {len(self.reinitialised)} re-initialised, {len(self.resized)} resized"
        ]
        lines += [f"  missing (freshly initialised): {n} {s}" for n, s in self.missing]
        lines += [f"  unexpected (not used): {n} {s}" for n, s in self.unexpected]
        lines += [f"  re-initialised: {n} {s} ({why})" for n, s, why in self.reinitialised]
        lines += [f"  resized: {n} {a} -> {b}" for n, a, b in self.resized]
        return "\n".join(lines)


Resizer = Callable[[np.ndarray, tuple], np.ndarray]


def fresh_init(model: Any, inputs: Sequence[Any], seed: int = 0) -> Callable[[list[str]], dict[str, jax.Array]]:
    """``names -> {name: freshly initialised variable}`` for :func:`merge_into`: only the named variables are
    computed (XLA drops the other initialisers), in one compiled program.

    Args:
      model: a flax module.
      inputs: ``model.init``'s positional inputs after the key (arrays or ``jax.ShapeDtypeStruct`` pytrees; zeros
        of their shapes are used).
      seed: the initialisation seed.

    Returns:
      The function :func:`merge_into` calls with the names the checkpoint does not fill.

    >>> import flax.linen as nn
    >>> init = fresh_init(nn.Dense(3), [jax.ShapeDtypeStruct((1, 2), np.float32)])
    >>> {name: x.shape for name, x in init(["params/kernel"]).items()}
    {'params/kernel': (2, 3)}
    """

    def initialise(names: list[str]) -> dict[str, jax.Array]:
        wanted = set(names)

        @jax.jit
        def init(rng: jax.Array) -> dict[str, jax.Array]:
            concrete = jax.tree_util.tree_map(lambda x: jax.numpy.zeros(x.shape, x.dtype), list(inputs))
            return {n: x for n, x in named_leaves(model.init(rng, *concrete)) if n in wanted}

        return init(jax.random.PRNGKey(seed))

    return initialise


def merge_into(
    init_shapes: Any,
    fresh_init: Callable[[list[str]], dict[str, Any]],
    converted: dict[str, tuple[np.ndarray, str]],
    unmatched: list[tuple[str, tuple]],
    *,
    source: str,
    reinitialise: str | None = None,
    classifier: str | None = None,
    resizers: dict[str, Resizer] | None = None,
    strict: bool = True,
) -> tuple[Any, LoadReport]:
    """Merges converted weights into freshly initialised variables, collecting every problem first.

    Only the variables that are not loaded get initialised (through ``fresh_init``), so loading a model
    never holds a full random initialisation beside the checkpoint. Leaves are host (numpy) arrays.

    Args:
      init_shapes: ``jax.eval_shape`` of the model's init (``{"params": ..., "batch_stats": ...}``).
      fresh_init: returns freshly initialised arrays for the given variable names.
      converted: from :func:`convert`.
      unmatched: checkpoint keys no rule covered (reported as unexpected).
      source: the checkpoint's name, for the report and errors.
      reinitialise: regex of variables to keep freshly initialised (a replaced head).
      classifier: regex of variables that belong to the new classifier (:attr:`jtl.weights.Layout.classifier`):
        loaded where the checkpoint has them, and otherwise freshly initialised and reported as re-initialised,
        not missing (a pooler that only the source's classifier model holds, absent from its base model's file).
      resizers: ``{regex: fn(array, target_shape)}`` for variables that may change with the model's fields
        (position embeddings at a new resolution); each is called on every variable it matches and returns its
        input itself when it changes nothing.
      strict: if True, variables the checkpoint lacks (outside ``reinitialise`` and ``classifier``) are an error.

    Returns:
      ``(variables, report)``.

    Raises:
      WeightLoadError: listing every shape mismatch (key, source key, expected and found shapes) and, when
        strict, every missing variable.

    A checkpoint with a backbone and a 1000-class head, merged into a model whose new head has 2 classes:

    >>> shape = lambda *dims: jax.ShapeDtypeStruct(dims, np.float32)
    >>> init_shapes = {"params": {"body": {"kernel": shape(3, 4)}, "head": {"kernel": shape(4, 2)}}}
    >>> converted = {"params/body/kernel": (np.ones((3, 4)), "body.weight"),
    ...              "params/head/kernel": (np.ones((4, 1000)), "head.weight")}
    >>> fresh_init = lambda names: {n: np.zeros(leaf.shape) for n, leaf in named_leaves(init_shapes) if n in names}
    >>> variables, report = merge_into(
    ...     init_shapes, fresh_init, converted, [], source="ckpt", reinitialise="params/head/.*"
    ... )
    >>> print(report)
    loaded ckpt: 1 loaded, 0 missing, 0 unexpected, 1 re-initialised, 0 resized
      re-initialised: params/head/kernel (4, 2) (replaced; checkpoint had (4, 1000))
    >>> variables["params"]["head"]["kernel"].sum(), variables["params"]["body"]["kernel"].dtype
    (np.float64(0.0), dtype('float32'))

    A model whose pooler the checkpoint's classifier would hold, from a checkpoint without it:

    >>> init_shapes["params"]["pooler"] = {"kernel": shape(4, 4)}
    >>> _, report = merge_into(init_shapes, fresh_init, converted, [], source="ckpt", reinitialise="params/head/.*",
    ...                        classifier="params/(?:head|pooler)/.*")
    >>> report.missing, report.reinitialised[-1]
    ([], ('params/pooler/kernel', (4, 4), 'not in checkpoint; part of the new classifier'))
    """
    names_and_leaves = named_leaves(init_shapes)
    leaves, treedef = jax.tree_util.tree_flatten(init_shapes)
    reinit = re.compile(reinitialise) if reinitialise else None
    in_classifier = re.compile(classifier) if classifier else None
    resizers = {re.compile(k): v for k, v in (resizers or {}).items()}
    out, loaded, missing, reinitialised, resized, mismatches = [], [], [], [], [], []
    used = set()
    for (name, init), leaf in zip(names_and_leaves, leaves, strict=True):
        shape = tuple(np.shape(init))
        if reinit is not None and reinit.fullmatch(name):
            if name in converted:
                used.add(name)
                why = f"replaced; checkpoint had {tuple(converted[name][0].shape)}"
            else:
                why = "not in checkpoint"
            reinitialised.append((name, shape, why))
            out.append(name)
            continue
        if name not in converted:
            if in_classifier is not None and in_classifier.fullmatch(name):
                reinitialised.append((name, shape, "not in checkpoint; part of the new classifier"))
            else:
                missing.append((name, shape))
            out.append(name)
            continue
        used.add(name)
        array, key = converted[name]
        resizer = next((fn for regex, fn in resizers.items() if regex.fullmatch(name)), None)
        if resizer is None and tuple(array.shape) != shape:
            mismatches.append(f"{name} (from {key!r}): expected {shape}, found {tuple(array.shape)}")
            out.append(leaf)
            continue
        if resizer is not None:
            # Called even when the shapes agree: a position grid of 4x4 and one of 2x8 hold as many tokens. A
            # resizer returns its input itself when nothing changes.
            result = resizer(array, shape)
            if result is not array:
                resized.append((name, tuple(array.shape), shape))
            array = result
        loaded.append((name, shape))
        # Host arrays, as vit_jax and big_vision return them: transposes stay views, and the caller puts
        # them on devices once, with its own sharding (`jax.device_put(variables, sharding)`).
        out.append(np.asarray(array, dtype=np.dtype(leaf.dtype)))
    unexpected = [
        (f"{name} (from {converted[name][1]!r})", tuple(converted[name][0].shape))
        for name in converted
        if name not in used
    ]
    unexpected += unmatched
    problems = []
    if mismatches:
        problems.append(f"{len(mismatches)} shape mismatch(es): " + "; ".join(mismatches))
    if strict and missing:
        problems.append(
            f"{len(missing)} variable(s) missing from the checkpoint: "
            + ", ".join(f"{n} {s}" for n, s in missing)
            + (f"; checkpoint keys not used: {', '.join(k for k, _ in unexpected[:10])}" if unexpected else "")
        )
    if problems:
        raise WeightLoadError(f"{source}: " + " | ".join(problems))
    fresh_names = [n for n, _ in missing] + [n for n, _, _ in reinitialised]
    fresh = fresh_init(fresh_names) if fresh_names else {}
    out = [np.asarray(fresh[x]) if isinstance(x, str) else x for x in out]
    report = LoadReport(source, loaded, missing, unexpected, reinitialised, resized)
    return jax.tree_util.tree_unflatten(treedef, out), report
