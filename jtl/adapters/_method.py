"""The protocol every parameter-efficient method follows, and the wrapper that applies methods to a jtl model.

A method is an immutable spec (a ``NamedTuple``: hashable, a model field, written to JSON by ``_asdict``) that

- ``add(params, rng)``: puts its new leaves into the parameter tree, beside the layer they adapt (so masking,
  optimizers, checkpoints and reports see them like any other parameter); the model's output is unchanged;
- ``intercept(next_fun, args, kwargs, context, train)``: a ``flax.linen.intercept_methods`` interceptor that
  applies the leaves it finds while the wrapped model runs (layers without them run as they are);
- ``merge(params)`` / ``unmerge(merged, adapters)``: folds them into the base weights (and back), where the method
  allows it; ``adapters`` is what :func:`merge_record` kept of the params before merging (the method's leaves, and
  what a merge loses: DoRA's weight norms);
- names its leaves (``leaves``), the trainable patterns (``trainable``) and its registry name (``kind``).

:func:`with_adapters` wraps a model in a subclass of its own class whose ``adapters`` field holds the methods.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Callable, Collection, Sequence
from typing import Any, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp

import jtl.masking as jm

PyTree = Any


class Method(Protocol):
    """What :func:`with_adapters`, :func:`merge_adapters` and the save/load functions need of a method."""

    kind: str
    leaves: tuple[str, ...]

    @property
    def trainable(self) -> tuple[str, ...]: ...

    def add(self, params: PyTree, rng: jax.Array) -> PyTree: ...

    def intercept(self, next_fun: Any, args: tuple, kwargs: dict, context: Any, train: bool) -> Any: ...

    def merge(self, params: PyTree) -> PyTree: ...

    def unmerge(self, merged: PyTree, adapters: PyTree) -> PyTree: ...

    # Optional: ``record(params) -> PyTree``, what ``merge`` loses beyond the method's leaves, as leaves under the
    # layers' paths (see :func:`merge_record`); methods whose merge is invertible from their leaves leave it out.
    # Optional: ``scan_refusal``, why the method cannot run in an encoder scanned over its blocks
    # (``scan_layers=True``); :func:`with_adapters` refuses such a pair.

    def _asdict(self) -> dict[str, Any]: ...


#: ``kind -> method class``, for reading saved adapters back; each method module registers itself.
METHODS: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: makes a method readable by ``kind`` (:func:`method_from_dict`).

    Args:
      cls: the method's class, with a ``kind`` attribute.

    Returns:
      ``cls`` itself.

    >>> from jtl.adapters import LoRASpec
    >>> METHODS["lora"] is LoRASpec
    True
    """
    METHODS[cls.kind] = cls
    return cls


def method_to_dict(method: Method) -> dict[str, Any]:
    """A method as JSON-ready data: ``{"kind": ..., **fields}`` (tuples as lists).

    Args:
      method: a registered method.

    Returns:
      The data :func:`method_from_dict` reads back.

    >>> from jtl.adapters import LoRASpec
    >>> data = method_to_dict(LoRASpec(targets=("q",), rank=2))
    >>> data["kind"], data["targets"], method_from_dict(data) == LoRASpec(targets=("q",), rank=2)
    ('lora', ['q'], True)
    """
    fields = {k: list(v) if isinstance(v, tuple) else v for k, v in method._asdict().items()}
    return {"kind": method.kind, **fields}


def method_from_dict(data: dict[str, Any]) -> Method:
    """The inverse of :func:`method_to_dict`.

    Args:
      data: ``{"kind": ..., **fields}``.

    Returns:
      The method.

    Raises:
      ValueError: a kind no method registered.

    >>> method_from_dict({"kind": "ia3", "targets": ["k"], "feedforward": []})
    IA3Spec(targets=('k',), feedforward=())
    """
    data = dict(data)
    kind = data.pop("kind")
    if kind not in METHODS:
        raise ValueError(f"adapter kind {kind!r}: expected one of {sorted(METHODS)}")
    cls = METHODS[kind]
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


@functools.cache
def _adapted_class(base: type) -> type:
    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        train = bool(kwargs.get("train", False))
        # Checked here too: a wrapped model cloned with scan_layers=True never passes through with_adapters.
        _refuse_scan(self, self.adapters)
        with contextlib.ExitStack() as stack:
            for method in self.adapters:
                stack.enter_context(nn.intercept_methods(functools.partial(method.intercept, train=train)))
            return base.__call__(self, *args, **kwargs)

    namespace = {"__annotations__": {"adapters": tuple}, "adapters": (), "__call__": __call__}
    namespace["__module__"], namespace["__doc__"] = base.__module__, f"{base.__name__} with adapters."
    return type(f"Adapted{base.__name__}", (base,), namespace)


def _fields(model: nn.Module, cls: type) -> dict[str, Any]:
    return {k: getattr(model, k) for k in cls.__dataclass_fields__ if k not in ("parent", "name", "adapters")}


def with_adapters(model: nn.Module, *methods: Method) -> nn.Module:
    """Wraps a jtl model so that it applies the adapters that ``methods`` find in its parameters.

    The wrapped model is still an instance of the model's class (registry functions such as
    ``jtl.models.layer_index`` work) with the same parameter names plus the adapters'. Wrapping a wrapped model
    replaces its methods.

    Args:
      model: a jtl model (or any linen module).
      *methods: the methods, e.g. a :class:`LoRASpec`; their runtime settings (scale, dropout) apply here.

    Returns:
      The wrapped model.

    Raises:
      ValueError: two methods with the same leaf names (LoRA and DoRA both use ``lora_a`` and ``lora_b``), or a
        method that cannot run in a scanned encoder on a model with ``scan_layers=True`` (VPT).

    >>> from jtl import models
    >>> from jtl.adapters import LoRASpec
    >>> model = with_adapters(models.create("vit-testing", num_classes=3), LoRASpec(rank=2))
    >>> type(model).__name__, isinstance(model, models.ViT), model.adapters[0].rank
    ('AdaptedViT', True, 2)
    """
    names = [leaf for method in methods for leaf in method.leaves]
    if len(names) != len(set(names)):
        # Each method finds its layers by its leaves: two claiming one name would both apply to the same layers.
        raise ValueError(f"methods {[m.kind for m in methods]} share leaf names {sorted(names)}; use one of them")
    base = base_model(model)
    _refuse_scan(base, methods)
    return _adapted_class(type(base))(**_fields(base, type(base)), adapters=tuple(methods))


def _refuse_scan(model: nn.Module, methods: Sequence[Method]) -> None:
    """Raise a ValueError naming the method and ``scan_layers`` if ``model`` scans its encoder blocks and a method
    cannot run there (its ``scan_refusal`` says why)."""
    if not getattr(model, "scan_layers", False):
        return
    for method in methods:
        reason = getattr(method, "scan_refusal", "")
        if reason:
            family = type(model).__name__.removeprefix("Adapted")
            raise ValueError(
                f"{method.kind} adapters cannot run on {family} with scan_layers=True: {reason}; "
                "set scan_layers=False (config.model.scan_layers)"
            )


def base_model(model: nn.Module) -> nn.Module:
    """The model without its adapters wrapper (itself when not wrapped).

    Args:
      model: a model, possibly wrapped by :func:`with_adapters`.

    Returns:
      The wrapped model.

    >>> from jtl import models
    >>> from jtl.adapters import LoRASpec
    >>> vit = models.create("vit-testing", num_classes=3)
    >>> base_model(with_adapters(vit, LoRASpec())) == vit
    True
    """
    if not hasattr(model, "adapters"):
        return model
    base = type(model).__mro__[1]
    return base(**_fields(model, base))


def trainable_patterns(*methods: Method, head: str = "head/.*") -> tuple[str, ...]:
    """The masking patterns that train ``methods``' leaves and the (new) head.

    Args:
      *methods: the methods.
      head: the head's pattern (``""``: none).

    Returns:
      The patterns, for ``jtl.masking`` and ``jtl.step.freeze``.

    >>> from jtl.adapters import LoRASpec
    >>> trainable_patterns(LoRASpec())
    ('.*/lora_a', '.*/lora_b', 'head/.*')
    """
    patterns = [p for method in methods for p in method.trainable]
    return tuple(dict.fromkeys([*patterns, *([head] if head else [])]))


def adapter_groups(*methods: Method) -> dict[str, str]:
    """``{leaf name: method kind}``: the ``leaf_groups`` of :func:`jtl.masking.report`, so that each method's
    leaves get a row of their own.

    Args:
      *methods: the methods.

    Returns:
      The mapping.

    >>> from jtl.adapters import LoRASpec
    >>> adapter_groups(LoRASpec())
    {'lora_a': 'lora', 'lora_b': 'lora'}
    """
    return {leaf: method.kind for method in methods for leaf in method.leaves}


def split_adapters(params: PyTree, *methods: Method) -> tuple[PyTree, PyTree]:
    """Separates the methods' leaves from the base: ``(base params, adapters)``, both nested dicts.

    Args:
      params: a parameter tree with adapters.
      *methods: the methods whose leaves to take out.

    Returns:
      The base tree (what the unwrapped model runs) and a tree holding only the adapters' leaves.

    >>> from jtl.adapters import LoRASpec
    >>> params = {"q": {"kernel": 1, "lora_a": 2, "lora_b": 3}}
    >>> split_adapters(params, LoRASpec())
    ({'q': {'kernel': 1}}, {'q': {'lora_a': 2, 'lora_b': 3}})
    """
    names = {leaf for method in methods for leaf in method.leaves}

    def visit(node: Any) -> tuple[Any, Any]:
        base, adapters = {}, {}
        for key, value in node.items():
            if isinstance(value, dict):
                b, a = visit(value)
                if b:
                    base[key] = b
                if a:
                    adapters[key] = a
            elif key in names:
                adapters[key] = value
            else:
                base[key] = value
        return base, adapters

    return visit(params)


def attach_adapters(base: PyTree, adapters: PyTree) -> PyTree:
    """Puts adapters (from :func:`split_adapters` or a saved set) onto a base tree: switching adapters on one base
    is ``attach_adapters(base, other)``.

    Args:
      base: the base parameter tree (without adapters).
      adapters: a tree of adapter leaves with the base's paths.

    Returns:
      The combined tree; the base's leaves are the same arrays.

    Raises:
      jtl.masking.MaskingError: an adapter's layer is not in the base.

    >>> attach_adapters({"q": {"kernel": 1}}, {"q": {"lora_a": 2}})
    {'q': {'kernel': 1, 'lora_a': 2}}
    """

    def visit(node: Any, extra: Any, path: tuple[str, ...]) -> Any:
        out = dict(node)
        for key, value in extra.items():
            if isinstance(value, dict):
                if not isinstance(node.get(key), dict):
                    raise jm.MaskingError(f"adapter layer {'/'.join((*path, key))!r} is not in the base model")
                out[key] = visit(node[key], value, (*path, key))
            else:
                out[key] = value
        return out

    return visit(base, adapters, ())


def merge_adapters(params: PyTree, *methods: Method) -> PyTree:
    """Folds the methods' adapters into the base weights and drops their leaves: the tree the base model runs at no
    extra cost.

    Args:
      params: a parameter tree with adapters.
      *methods: the methods they were trained with (their scales matter).

    Returns:
      The base model's parameter tree.

    Raises:
      ValueError: a method that cannot be merged (its layers add computation the base model lacks).

    >>> import jax.numpy as jnp
    >>> from jtl.adapters import LoRASpec
    >>> params = {"q": {"kernel": jnp.zeros((2, 2)), "lora_a": jnp.ones((2, 1)), "lora_b": jnp.ones((1, 2))}}
    >>> merge_adapters(params, LoRASpec(rank=1, alpha=2.0))["q"]["kernel"].tolist()
    [[2.0, 2.0], [2.0, 2.0]]
    """
    for method in methods:
        params = method.merge(params)
    return params


def merge_record(params: PyTree, *methods: Method) -> PyTree:
    """What :func:`unmerge_adapters` needs to take the methods back out of merged weights: the methods' leaves
    (:func:`split_adapters`) plus whatever a merge loses, which some methods record (``record(params)``).

    DoRA needs this: its merge rescales each output column by ``m / ||W + s A B||``, and the merged kernel's column
    norms are ``|m|`` whatever ``W`` was, so ``||W + s A B||`` must be kept from before the merge (PEFT caches it
    in the layer at merge time). For LoRA and (IA)^3 the record is :func:`split_adapters`'s adapters.

    Args:
      params: the parameter tree with adapters, before merging.
      *methods: the methods.

    Returns:
      A tree of leaves under the layers' paths, for :func:`unmerge_adapters`.

    >>> import jax.numpy as jnp
    >>> from jtl.adapters import LoRASpec
    >>> merge_record({"q": {"kernel": jnp.zeros((2, 2)), "lora_a": 1, "lora_b": 2}}, LoRASpec())
    {'q': {'lora_a': 1, 'lora_b': 2}}
    """
    record = split_adapters(params, *methods)[1]
    for method in methods:
        if hasattr(method, "record"):
            # The recorded leaves sit in layers that hold the method's own leaves, so the paths exist.
            record = attach_adapters(record, method.record(params))
    return record


def unmerge_adapters(merged: PyTree, record: PyTree, *methods: Method) -> PyTree:
    """Takes merged adapters back out of the base weights: the inverse of :func:`merge_adapters` (within float
    rounding), given :func:`merge_record` of the params before the merge.

    Args:
      merged: what :func:`merge_adapters` returned.
      record: :func:`merge_record` of the params before merging (for LoRA and (IA)^3, :func:`split_adapters`'s
        adapters are the same tree).
      *methods: the methods, as given to :func:`merge_adapters`.

    Returns:
      The parameter tree with its adapters, as before the merge (without the record's extra leaves).

    >>> import jax.numpy as jnp
    >>> from jtl.adapters import LoRASpec
    >>> spec = LoRASpec(rank=1, alpha=2.0)
    >>> params = {"q": {"kernel": jnp.zeros((2, 2)), "lora_a": jnp.ones((2, 1)), "lora_b": jnp.ones((1, 2))}}
    >>> record = merge_record(params, spec)
    >>> unmerge_adapters(merge_adapters(params, spec), record, spec)["q"]["kernel"].tolist()
    [[0.0, 0.0], [0.0, 0.0]]
    """
    for method in reversed(methods):
        merged = method.unmerge(merged, record)
    return merged


def adapted_layers(params: PyTree, leaf: str) -> list[str]:
    """The paths of the layers holding ``leaf`` (e.g. ``"lora_a"``)."""
    return [name.removesuffix(f"/{leaf}") for name, _ in jm.named_leaves(params) if name.rsplit("/", 1)[-1] == leaf]


def add_to_layers(
    params: PyTree, layers: Collection[str], rng: jax.Array, build: Callable[[dict, str, jax.Array], dict]
) -> PyTree:
    """Rewrites each layer named in ``layers`` with ``build(layer, path, key)``: the walk behind every method's
    ``add``, a PRNG key of its own for each layer (folded from ``rng`` in the tree's order).

    Args:
      params: a parameter tree.
      layers: the paths of the layers to rewrite (:func:`matching_layers`).
      rng: the key the layers' keys are folded from (``None`` for a method that draws nothing: ``key`` is ``None``).
      build: ``(layer dict, its path, key) -> the layer dict with the method's leaves``.

    Returns:
      The new tree; other leaves are the same arrays.

    >>> add_to_layers({"q": {"kernel": 1}}, ["q"], jax.random.PRNGKey(0), lambda layer, path, key: {**layer, "s": 2})
    {'q': {'kernel': 1, 's': 2}}
    """
    counter = iter(range(1 << 30))

    def visit(node: Any, path: tuple[str, ...]) -> Any:
        if not isinstance(node, dict):
            return node
        out = {k: visit(v, (*path, k)) for k, v in node.items()}
        name = "/".join(path)
        if name not in layers:
            return out
        return build(out, name, None if rng is None else jax.random.fold_in(rng, next(counter)))

    return visit(params, ())


def is_dense(layer: dict) -> bool:
    """Whether a layer's dict holds a 2-D (Dense) kernel: the layers the Dense-only methods adapt.

    Args:
      layer: a layer's leaves.

    Returns:
      True for a Dense layer.

    >>> is_dense({"kernel": jnp.ones((2, 3))}), is_dense({"kernel": jnp.ones((1, 1, 2, 3))})
    (True, False)
    """
    return jnp.ndim(layer.get("kernel")) == 2


def matching_layers(params: PyTree, targets: Sequence[str], accept: Any, what: str) -> dict[str, list[int]]:
    """``{layer path: indices of the targets matching it}`` over layers (dicts) that ``accept(node)``.

    Args:
      params: a parameter tree.
      targets: regexes (``fullmatch``) on the layers' paths.
      accept: ``layer dict -> bool``: the layers the method can adapt.
      what: those layers in words, for the error.

    Returns:
      The matched layers.

    Raises:
      jtl.masking.MaskingError: a target matches no accepted layer, naming a few that exist.

    >>> import jax.numpy as jnp
    >>> matching_layers({"a": {"q": {"kernel": jnp.ones((2, 2))}}}, ["a/.*"], lambda n: "kernel" in n, "kernel")
    {'a/q': [0]}
    """
    patterns = [re.compile(t) for t in targets]
    found: dict[str, list[int]] = {}

    def visit(node: Any, path: tuple[str, ...]) -> None:
        if not isinstance(node, dict):
            return
        name = "/".join(path)
        hits = [i for i, p in enumerate(patterns) if p.fullmatch(name)]
        if hits and accept(node):
            found[name] = hits
        for key, value in node.items():
            visit(value, (*path, key))

    visit(params, ())
    used = {i for hits in found.values() for i in hits}
    unused = [t for i, t in enumerate(targets) if i not in used]
    if unused:
        kernels = [n.removesuffix("/kernel") for n, _ in jm.named_leaves(params) if n.endswith("/kernel")]
        raise jm.MaskingError(f"targets {unused} match no {what}; kernels are named like {kernels[:4]}")
    return found


def adapter_dropout(module: nn.Module, x: jax.Array, rate: float, train: bool) -> jax.Array:
    """Inverted dropout on an adapter's input while training (the module's ``dropout`` PRNG stream).

    Args:
      module: the layer being adapted (its ``make_rng``).
      x: the adapter's input.
      rate: the dropout rate.
      train: dropout applies only while training.

    Returns:
      ``x`` with dropout applied.

    >>> adapter_dropout(None, jnp.ones(2), 0.5, train=False).tolist()  # evaluation: the input as it is
    [1.0, 1.0]
    """
    if not train or rate <= 0:
        return x
    keep = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)


def fold(params: PyTree, drop: Sequence[str], kernel: Any, *, marker: str | None = None) -> PyTree:
    """Rewrites the layers holding ``marker`` (default: ``drop[0]``) with ``kernel(layer)`` as their kernel and
    drops the leaves named in ``drop``: the walk behind every method's merge and unmerge.

    Args:
      params: a parameter tree.
      drop: the leaf names to remove from every layer.
      kernel: ``layer dict -> new kernel``.
      marker: the leaf that marks a layer to rewrite.

    Returns:
      The new tree.

    >>> fold({"q": {"kernel": 1, "s": 2}}, ("s",), lambda layer: layer["kernel"] * layer["s"])
    {'q': {'kernel': 2}}
    """
    flag = marker or drop[0]

    def visit(node: Any) -> Any:
        if not isinstance(node, dict):
            return node
        out = {k: visit(v) for k, v in node.items() if k not in drop}
        if flag in node:
            out["kernel"] = kernel(node)
        return out

    return visit(params)
