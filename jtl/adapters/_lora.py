"""LoRA (Hu et al., 2021) for any jtl model: low-rank adapters beside chosen Dense kernels, merged for inference.

The adapters live in the parameter tree itself, next to the kernel they adapt (``.../query/lora_a``,
``.../query/lora_b``), so ``jtl.masking`` rules train them (``LORA_TRAINABLE``) and checkpoints, reports and
optimizers see them like any other parameter. :func:`with_lora` wraps a model so that every ``nn.Dense`` that
holds adapters adds ``scale * dropout(x) @ lora_a @ lora_b`` to its output.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import jtl.masking as jm

PyTree = Any

#: Trainable patterns for LoRA fine-tuning: the adapters and the (new) head.
LORA_TRAINABLE = (".*/lora_a", ".*/lora_b", "head/.*")
#: BitFit (Ben Zaken et al., 2022): only the biases and the head train.
BITFIT_TRAINABLE = (".*/bias", "head/.*")

_ADAPTER_FILE = "adapters.npz"
_META_FILE = "adapters.json"


class LoRASpec(NamedTuple):
    """Where and how to adapt.

    Attributes:
      targets: regexes (``fullmatch``) on the Dense layers' names, e.g. ``encoder/.*/attn/(query|value)``.
      rank: the adapters' rank ``r``.
      alpha: the scale numerator: updates are scaled by ``alpha / r`` (or ``alpha / sqrt(r)`` with ``rslora``).
      dropout: dropout on the adapter's input while training.
      rslora: rank-stabilised scaling (Kalajdzievski, 2023).
    """

    targets: tuple[str, ...] = (r"encoder/block_\d+/attn/(query|value)",)
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    rslora: bool = False

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)


def add_adapters(params: PyTree, spec: LoRASpec, rng: jax.Array) -> PyTree:
    """Adds ``lora_a`` (in, r; random) and ``lora_b`` (r, out; zeros) beside every 2-D Dense kernel that a
    target matches; the model's output is unchanged until ``lora_b`` trains.

    Args:
      params: the model's parameter tree (nested dicts).
      spec: the targets and rank.
      rng: the PRNG key for ``lora_a``.

    Returns:
      A new tree with the adapters; the base leaves are the same arrays.

    Raises:
      jtl.masking.MaskingError: if a target matches no Dense kernel.

    >>> params = {"attn": {"query": {"kernel": jnp.ones((4, 6)), "bias": jnp.zeros(6)}}}
    >>> adapted = add_adapters(params, LoRASpec(targets=("attn/query",), rank=2), jax.random.PRNGKey(0))
    >>> {k: v.shape for k, v in sorted(adapted["attn"]["query"].items())}
    {'bias': (6,), 'kernel': (4, 6), 'lora_a': (4, 2), 'lora_b': (2, 6)}
    """
    patterns = [re.compile(t) for t in spec.targets]
    used = [False] * len(patterns)
    counter = iter(range(1 << 30))

    def visit(node: Any, path: tuple[str, ...]) -> Any:
        if not isinstance(node, dict):
            return node
        out = {k: visit(v, (*path, k)) for k, v in node.items()}
        kernel = node.get("kernel")
        name = "/".join(path)
        hits = [i for i, p in enumerate(patterns) if p.fullmatch(name)]
        if kernel is not None and jnp.ndim(kernel) == 2 and hits:
            for i in hits:
                used[i] = True
            fan_in, fan_out = kernel.shape
            key = jax.random.fold_in(rng, next(counter))
            # As Hu et al.: A random (Kaiming-uniform, as PEFT), B zero, so training starts at the base model.
            bound = math.sqrt(3.0 / fan_in)
            out["lora_a"] = jax.random.uniform(key, (fan_in, spec.rank), jnp.float32, -bound, bound)
            out["lora_b"] = jnp.zeros((spec.rank, fan_out), jnp.float32)
        return out

    adapted = visit(params, ())
    unused = [t for t, u in zip(spec.targets, used, strict=True) if not u]
    if unused:
        raise jm.MaskingError(
            f"LoRA targets {unused} match no 2-D Dense kernel; kernels are named like "
            f"{[n.removesuffix('/kernel') for n, _ in jm.named_leaves(params) if n.endswith('kernel')][:4]}"
        )
    return adapted


def _adapt_dense(next_fun: Any, args: tuple, kwargs: dict, context: Any, *, spec: LoRASpec, train: bool) -> Any:
    module = context.module
    out = next_fun(*args, **kwargs)
    if not (isinstance(module, nn.Dense) and context.method_name == "__call__"):
        return out
    if not module.has_variable("params", "lora_a"):
        return out
    x = args[0]
    lora_a = module.get_variable("params", "lora_a")
    lora_b = module.get_variable("params", "lora_b")
    if train and spec.dropout > 0:
        keep = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - spec.dropout, x.shape)
        x = jnp.where(keep, x / (1.0 - spec.dropout), 0.0)
    dtype = out.dtype
    update = (x.astype(dtype) @ lora_a.astype(dtype)) @ lora_b.astype(dtype)
    return out + jnp.asarray(spec.scale, dtype) * update


@functools.cache
def _lora_class(base: type) -> type:
    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        interceptor = functools.partial(_adapt_dense, spec=self.lora, train=bool(kwargs.get("train", False)))
        with nn.intercept_methods(interceptor):
            return base.__call__(self, *args, **kwargs)

    namespace = {"__annotations__": {"lora": LoRASpec}, "lora": LoRASpec(), "__call__": __call__}
    namespace["__module__"], namespace["__doc__"] = base.__module__, f"{base.__name__} with LoRA adapters."
    return type(f"LoRA{base.__name__}", (base,), namespace)


def with_lora(model: nn.Module, spec: LoRASpec) -> nn.Module:
    """Wraps a jtl model so that its Dense layers apply the adapters found in its parameters.

    The wrapped model is still an instance of the model's class (registry functions such as
    ``jtl.models.layer_index`` work) with the same parameter names plus the adapters.

    Args:
      model: a jtl model (or any linen module using ``nn.Dense``).
      spec: the LoRA settings (its ``scale`` and ``dropout`` apply here; ``targets`` and ``rank`` matter in
        :func:`add_adapters`).

    Returns:
      The wrapped model.

    >>> from jtl import models
    >>> model = with_lora(models.create("vit-testing", num_classes=3), LoRASpec(rank=2))
    >>> type(model).__name__, isinstance(model, models.ViT)
    ('LoRAViT', True)
    """
    base = base_model(model)
    fields = {k: getattr(model, k) for k in base.__dataclass_fields__ if k not in ("parent", "name")}
    return _lora_class(type(base))(**fields, lora=spec)


def base_model(model: nn.Module) -> nn.Module:
    """The model without its LoRA wrapper (itself when not wrapped).

    Args:
      model: a model, possibly wrapped by ``with_lora``.

    Returns:
      The wrapped model.

    >>> from jtl import models
    >>> vit = models.create("vit-testing", num_classes=3)
    >>> base_model(with_lora(vit, LoRASpec())) == vit
    True
    """
    if not hasattr(model, "lora"):
        return model
    base = type(model).__mro__[1]
    return base(**{k: getattr(model, k) for k in base.__dataclass_fields__ if k not in ("parent", "name")})


def merge_adapters(params: PyTree, spec: LoRASpec) -> PyTree:
    """Folds every adapter into its kernel (``W + scale * A @ B``) and drops the adapter leaves: the tree
    the base model runs at no extra cost.

    Args:
      params: a parameter tree with adapters.
      spec: the LoRA settings the adapters were trained with (for ``scale``).

    Returns:
      The base model's parameter tree.

    >>> params = {"q": {"kernel": jnp.zeros((2, 2)), "lora_a": jnp.ones((2, 1)), "lora_b": jnp.ones((1, 2))}}
    >>> merge_adapters(params, LoRASpec(rank=1, alpha=2.0))["q"]["kernel"].tolist()
    [[2.0, 2.0], [2.0, 2.0]]
    """

    def visit(node: Any) -> Any:
        if not isinstance(node, dict):
            return node
        out = {k: visit(v) for k, v in node.items() if k not in ("lora_a", "lora_b")}
        if "lora_a" in node:
            delta = spec.scale * (node["lora_a"].astype(jnp.float32) @ node["lora_b"].astype(jnp.float32))
            out["kernel"] = (node["kernel"] + delta).astype(node["kernel"].dtype)
        return out

    return visit(params)


def save_adapters(
    directory: str | Path,
    model: nn.Module,
    params: PyTree,
    *,
    base: str,
    trainable: Sequence[str] = LORA_TRAINABLE,
) -> Path:
    """Saves only what fine-tuning changed (the adapters and the head, by default) with a pointer to the base.

    Args:
      directory: created if missing; holds ``adapters.npz`` and ``adapters.json``.
      model: the LoRA-wrapped model (its fields and spec are recorded).
      params: its parameters.
      base: what :func:`jtl.weights.load_pretrained` loads the base from (hub id, directory or file).
      trainable: the patterns of the saved leaves; the head always goes with the adapters.

    Returns:
      The directory.

    >>> import tempfile
    >>> from jtl import models
    >>> from jtl.weights import save_pretrained
    >>> root = tempfile.mkdtemp()
    >>> vit = models.create("vit-testing", num_classes=3)
    >>> _ = save_pretrained(f"{root}/base", vit, models.init(vit))
    >>> spec = LoRASpec(rank=2)
    >>> params = add_adapters(models.init(vit)["params"], spec, jax.random.PRNGKey(0))
    >>> _ = save_adapters(f"{root}/adapters", with_lora(vit, spec), params, base=f"{root}/base")
    >>> model, variables = load_adapters(f"{root}/adapters", verbose=False)
    >>> type(model).__name__, model.lora.rank
    ('LoRAViT', 2)
    """
    if not hasattr(model, "lora"):
        raise TypeError(f"save_adapters needs a model from with_lora, got {type(model).__name__}")
    patterns = tuple(trainable) if "head/.*" in trainable else (*trainable, "head/.*")
    mask = jm.select(params, patterns, allow_unused=True)
    saved = {
        name: np.asarray(leaf)
        for (name, leaf), keep in zip(jm.named_leaves(params), jax.tree_util.tree_leaves(mask), strict=True)
        if keep
    }
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    spec = model.lora
    meta = {
        "base": str(base),
        "lora": {**spec._asdict(), "targets": list(spec.targets)},
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
      ``(model, variables)`` with the LoRA-wrapped model (:func:`save_adapters` shows both in use).

    A directory that :func:`save_adapters` did not write is refused:

    >>> import tempfile
    >>> load_adapters(tempfile.mkdtemp())
    Traceback (most recent call last):
    ...
    jtl.weights._readers.WeightLoadError: ...: no adapters.json; not a directory written by save_adapters
    """
    from jtl.weights import WeightLoadError, load_pretrained

    directory = Path(directory)
    meta_file = directory / _META_FILE
    if not meta_file.is_file():
        raise WeightLoadError(f"{directory}: no {_META_FILE}; not a directory written by save_adapters")
    meta = json.loads(meta_file.read_text())
    spec = LoRASpec(**{**meta["lora"], "targets": tuple(meta["lora"]["targets"])})
    model, variables, _ = load_pretrained(base or meta["base"], num_classes=meta["num_classes"], **overrides)
    params = add_adapters(variables["params"], spec, jax.random.PRNGKey(0))
    names = dict(jm.named_leaves(params))
    with np.load(directory / _ADAPTER_FILE, allow_pickle=False) as saved:
        problems = [f"{k}: not in the model" for k in saved.files if k not in names]
        problems += [
            f"{k}: shape {saved[k].shape} in the file, {names[k].shape} in the model"
            for k in saved.files
            if k in names and saved[k].shape != names[k].shape
        ]
        if problems:
            raise WeightLoadError(
                f"{directory / _ADAPTER_FILE} does not fit {meta['base']}:\n  " + "\n  ".join(problems)
            )
        params = jm.map_with_names(lambda name, leaf: jnp.asarray(saved[name]) if name in saved.files else leaf, params)
    return with_lora(model, spec), {**variables, "params": params}
