"""Several adapters on one base model: kept by name, switched onto the base, merged into it and unmerged again."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn

from jtl.adapters._io import read_adapters
from jtl.adapters._method import (
    Method,
    attach_adapters,
    merge_adapters,
    merge_record,
    split_adapters,
    unmerge_adapters,
    with_adapters,
)

PyTree = Any


class AdapterSet(NamedTuple):
    """One base parameter tree and named adapters for it; every operation returns new trees (nothing is copied:
    the base's arrays are shared).

    Each entry holds its methods' leaves and its own head (a fine-tuned head belongs to its adapters), so switching
    entries switches both.

    Attributes:
      base: the base parameters, without adapters.
      adapters: ``{name: tree of the entry's adapter leaves and head}``.
      methods: ``{name: the entry's methods}``.

    >>> import jax
    >>> from jtl import models
    >>> from jtl.adapters import IA3Spec, LoRASpec, add_adapters
    >>> vit = models.create("vit-testing", num_classes=3)
    >>> base = models.init(vit)["params"]
    >>> lora, ia3 = LoRASpec(rank=2), IA3Spec()
    >>> adapters = AdapterSet(base).add("lora", add_adapters(base, lora, jax.random.PRNGKey(0)), lora)
    >>> adapters = adapters.add("ia3", add_adapters(base, ia3, jax.random.PRNGKey(0)), ia3)
    >>> sorted(adapters.adapters)
    ['ia3', 'lora']
    >>> model, params = adapters.model(vit, "ia3"), adapters.params("ia3")
    >>> model.apply({"params": params}, *vit.example_inputs()).shape
    (1, 3)
    """

    base: PyTree
    adapters: dict[str, PyTree] = {}  # noqa: RUF012 -- never mutated: add returns a new set
    methods: dict[str, tuple[Method, ...]] = {}  # noqa: RUF012

    def add(self, name: str, params: PyTree, *methods: Method) -> AdapterSet:
        """Adds (or replaces) the entry ``name``: the methods' leaves and head taken from ``params``.

        Args:
          name: the entry's name.
          params: a parameter tree of this base with the methods' adapters (e.g. after fine-tuning).
          *methods: the methods.

        Returns:
          The new set.
        """
        _, adapters = split_adapters(params, *methods)
        if "head" in params:
            adapters = {**adapters, "head": params["head"]}
        return self._replace(adapters={**self.adapters, name: adapters}, methods={**self.methods, name: methods})

    def load(self, name: str, directory: str | Path) -> AdapterSet:
        """Adds the entry ``name`` from what :func:`jtl.adapters.save_adapters` wrote, onto this base.

        Args:
          name: the entry's name.
          directory: the adapters directory.

        Returns:
          The new set (:func:`jtl.adapters.read_adapters` shows such a directory written and read).
        """
        methods, params = read_adapters(directory, self.base)
        return self.add(name, params, *methods)

    def params(self, name: str) -> PyTree:
        """The base with the entry's adapters and head: switching adapters is asking for another name.

        Args:
          name: the entry.

        Returns:
          The parameter tree that :meth:`model` runs.
        """
        return attach_adapters(self.base, self.adapters[name])

    def model(self, model: nn.Module, name: str) -> nn.Module:
        """``model`` wrapped with the entry's methods (:func:`jtl.adapters.with_adapters`).

        Args:
          model: the base model (or a wrapped one: its methods are replaced).
          name: the entry.

        Returns:
          The wrapped model.
        """
        return with_adapters(model, *self.methods[name])

    def merge(self, name: str) -> PyTree:
        """The entry merged into the base: the tree the unwrapped model runs at no extra cost.

        Args:
          name: the entry.

        Returns:
          The merged parameter tree (with the entry's head).

        >>> import jax.numpy as jnp
        >>> from jtl.adapters import LoRASpec
        >>> base = {"q": {"kernel": jnp.zeros((2, 2))}}
        >>> lora = {"q": {"kernel": base["q"]["kernel"], "lora_a": jnp.ones((2, 1)), "lora_b": jnp.ones((1, 2))}}
        >>> adapters = AdapterSet(base).add("one", lora, LoRASpec(rank=1, alpha=1.0))
        >>> merged = adapters.merge("one")
        >>> merged["q"]["kernel"].tolist(), adapters.unmerge(merged, "one")["q"]["kernel"].tolist()
        ([[1.0, 1.0], [1.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]])
        """
        return merge_adapters(self.params(name), *self.methods[name])

    def unmerge(self, merged: PyTree, name: str) -> PyTree:
        """Takes the entry back out of what :meth:`merge` returned (within float rounding).

        Args:
          merged: :meth:`merge`'s tree.
          name: the entry merged into it.

        Returns:
          The parameter tree with the entry's adapters, as :meth:`params` (:meth:`merge` shows both in use).
        """
        methods = self.methods[name]
        return unmerge_adapters(merged, merge_record(self.params(name), *methods), *methods)
