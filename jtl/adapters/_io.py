"""Saving and loading adapters on their own: what fine-tuning changed (the adapters and the head) with a pointer
to the base weights, in ``adapters.npz`` + ``adapters.json``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import jtl.masking as jm
from jtl.adapters._lora import add_adapters
from jtl.adapters._method import Method, method_from_dict, method_to_dict, trainable_patterns, with_adapters

PyTree = Any

_ADAPTER_FILE = "adapters.npz"
_META_FILE = "adapters.json"


def save_adapters(
    directory: str | Path,
    model: nn.Module,
    params: PyTree,
    *,
    base: str,
    trainable: Sequence[str] | None = None,
) -> Path:
    """Saves only what fine-tuning changed (the adapters and the head, by default) with a pointer to the base.

    Args:
      directory: created if missing; holds ``adapters.npz`` and ``adapters.json``.
      model: the model from :func:`jtl.adapters.with_adapters` (its methods are recorded).
      params: its parameters.
      base: what :func:`jtl.weights.load_pretrained` loads the base from (hub id, directory or file).
      trainable: the patterns of the saved leaves (default: the methods' leaves); the head always goes with them.

    Returns:
      The directory.

    >>> import tempfile
    >>> from jtl import models
    >>> from jtl.weights import save_pretrained
    >>> root = tempfile.mkdtemp()
    >>> vit = models.create("vit-testing", num_classes=3)
    >>> _ = save_pretrained(f"{root}/base", vit, models.init(vit))
    >>> from jtl.adapters import LoRASpec
    >>> spec = LoRASpec(rank=2)
    >>> params = add_adapters(models.init(vit)["params"], spec, jax.random.PRNGKey(0))
    >>> _ = save_adapters(f"{root}/adapters", with_adapters(vit, spec), params, base=f"{root}/base")
    >>> model, variables = load_adapters(f"{root}/adapters", verbose=False)
    >>> type(model).__name__, model.adapters[0].rank
    ('AdaptedViT', 2)
    """
    if not getattr(model, "adapters", ()):
        raise TypeError(f"save_adapters needs a model from with_adapters, got {type(model).__name__}")
    trainable = trainable_patterns(*model.adapters, head="") if trainable is None else tuple(trainable)
    patterns = trainable if "head/.*" in trainable else (*trainable, "head/.*")
    mask = jm.select(params, patterns, allow_unused=True)
    saved = {
        name: np.asarray(leaf)
        for (name, leaf), keep in zip(jm.named_leaves(params), jax.tree_util.tree_leaves(mask), strict=True)
        if keep
    }
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {
        "base": str(base),
        "methods": [method_to_dict(method) for method in model.adapters],
        "num_classes": int(model.num_classes),
        "saved": sorted(saved),
    }
    # Written under temporary names and renamed, so an interrupted save never leaves a half-written pair.
    tmp_npz, tmp_json = directory / f".{_ADAPTER_FILE}.tmp", directory / f".{_META_FILE}.tmp"
    with tmp_npz.open("wb") as f:
        np.savez(f, **saved)
    tmp_json.write_text(json.dumps(meta, indent=1))
    tmp_npz.replace(directory / _ADAPTER_FILE)
    tmp_json.replace(directory / _META_FILE)
    return directory


def load_adapters(directory: str | Path, base: str | None = None, **overrides: Any) -> tuple[nn.Module, dict]:
    """Loads the base model named in ``adapters.json`` (or ``base``) and puts the saved adapters and head in.

    Args:
      directory: what :func:`save_adapters` wrote.
      base: load the base from here instead of the recorded pointer.
      **overrides: model fields for :func:`jtl.weights.load_pretrained`.

    Returns:
      ``(model, variables)`` with the wrapped model (:func:`save_adapters` shows both in use).

    A directory that :func:`save_adapters` did not write is refused:

    >>> import tempfile
    >>> load_adapters(tempfile.mkdtemp())
    Traceback (most recent call last):
    ...
    jtl.weights._readers.WeightLoadError: ...: no adapters.json; not a directory written by save_adapters
    """
    from jtl.weights import load_pretrained

    meta = _read_meta(Path(directory))
    model, variables, _ = load_pretrained(base or meta["base"], num_classes=meta["num_classes"], **overrides)
    methods, params = read_adapters(directory, variables["params"])
    return with_adapters(model, *methods), {**variables, "params": params}


def read_adapters(directory: str | Path, params: PyTree) -> tuple[tuple[Method, ...], PyTree]:
    """Puts the adapters and head that :func:`save_adapters` wrote into a base parameter tree already in memory.

    Args:
      directory: what :func:`save_adapters` wrote.
      params: the base's parameters (without adapters), e.g. shared by several adapter sets.

    Returns:
      ``(methods, params)``: the saved methods (for :func:`jtl.adapters.with_adapters`) and the tree with the
      saved leaves; the base's other leaves are the same arrays.

    Raises:
      jtl.weights.WeightLoadError: the directory is not an adapters directory, or its leaves do not fit ``params``.

    >>> import tempfile
    >>> from jtl import models
    >>> from jtl.adapters import IA3Spec
    >>> vit = models.create("vit-testing", num_classes=3)
    >>> base = models.init(vit)["params"]
    >>> spec = IA3Spec()
    >>> directory = save_adapters(
    ...     tempfile.mkdtemp(), with_adapters(vit, spec), add_adapters(base, spec, jax.random.PRNGKey(0)), base="unused"
    ... )
    >>> methods, params = read_adapters(directory, base)
    >>> methods == (spec,), params["encoder"]["block_0"]["attn"]["key"]["ia3_scale"].shape
    (True, (16,))
    """

    directory = Path(directory)
    meta = _read_meta(directory)
    methods = tuple(method_from_dict(data) for data in meta["methods"])
    for method in methods:
        params = add_adapters(params, method, jax.random.PRNGKey(0))
    with np.load(directory / _ADAPTER_FILE, allow_pickle=False) as saved:
        values = {name: saved[name] for name in saved.files}
    return methods, fill_leaves(params, values, f"{directory / _ADAPTER_FILE} does not fit {meta['base']}")


def fill_leaves(params: PyTree, values: dict[str, Any], where: str) -> PyTree:
    """``params`` with the leaves named in ``values`` replaced by them: how saved adapters go into a model.

    Args:
      params: the model's parameter tree, adapters added.
      values: ``{leaf name: array}``.
      where: what holds the values, for the error.

    Returns:
      The new tree; the other leaves are the same arrays.

    Raises:
      jtl.weights.WeightLoadError: listing at once every value that is not a leaf of the tree or has another shape.

    >>> fill_leaves({"q": {"lora_a": jnp.zeros(2)}}, {"q/lora_a": np.ones(2)}, "saved")["q"]["lora_a"].tolist()
    [1.0, 1.0]
    """
    from jtl.weights import WeightLoadError

    names = dict(jm.named_leaves(params))
    problems = [f"{k}: not in the model" for k in values if k not in names]
    problems += [
        f"{k}: shape {np.shape(v)} in the file, {np.shape(names[k])} in the model"
        for k, v in values.items()
        if k in names and np.shape(v) != np.shape(names[k])
    ]
    if problems:
        raise WeightLoadError(f"{where}:\n  " + "\n  ".join(problems))
    return jm.map_with_names(lambda name, leaf: jnp.asarray(values[name]) if name in values else leaf, params)


def _read_meta(directory: Path) -> dict[str, Any]:
    from jtl.weights import WeightLoadError

    meta_file = directory / _META_FILE
    if not meta_file.is_file():
        raise WeightLoadError(f"{directory}: no {_META_FILE}; not a directory written by save_adapters")
    return json.loads(meta_file.read_text())
