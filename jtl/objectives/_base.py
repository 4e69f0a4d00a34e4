"""The Objective interface: what a run optimises, the data it reads, and how it is evaluated.

Two kinds of method, as in optax: pure, jittable pieces that the one train step (:mod:`jtl.step`) and eval step
call (``prepare``, ``loss``, ``combine``, ``eval_sums``), and host-side set-up and reporting that the trainer
calls (``load``, ``train_stream``, ``init``, ``start``, ``evaluate``, ``summarize``). An objective is selected by
``config.objective`` from the registry that :func:`register` fills.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections

from jtl.config import ConfigError

# sums(source, transform=None, keys=None) -> {name: float}: the compiled eval step's sums over every example of
# ``source`` exactly once; ``keys`` renames a batch's fields before it reaches the step. The trainer's ``sums``
# also has ``sums.predictions(source, transform=None)``: ``(batch, outputs)`` pairs of host arrays, the compiled
# :meth:`Objective.predict` over every example once (padding rows have ``batch["mask"]`` False).
Sums = Callable[..., dict[str, float]]
# load(data_config) -> {"train", "test", ["ood"], "train_transform", "eval_transform"}.
Load = Callable[[ml_collections.ConfigDict], dict[str, Any]]
# stream(source, transform, seed_offset) -> this host's infinite iterator of training batches.
Stream = Callable[[Any, Any, int], Iterator[dict]]


class Objective(abc.ABC):
    """Base class with the defaults; a new objective overrides what it needs (at least ``loss`` and
    ``eval_sums``; the trainer also needs ``load``/``train_stream``/``evaluate`` to run it from a config).

    Attributes:
      head_classes: the classes the model's own head must have (0: the model returns pooled features and the
        objective owns its heads).
      per_loss_gradients: ``loss`` returns a vector of losses and :meth:`combine` gets one gradient per entry
        (a leading axis on every leaf), as PCGrad and GradNorm need.
      metric: the final metric a from-scratch baseline is compared on (``None``: no baseline).
      primary: the data splits that schedules (BiT-HyperRule) and BatchNorm re-estimation read.
    """

    head_classes: int = 0
    per_loss_gradients: bool = False
    metric: str | None = None
    primary: dict[str, Any] | None = None

    # --- host side: set-up ------------------------------------------------------------------------------------------
    def load(self, load: Load) -> None:
        """Reads the objective's data with ``load`` (one call per dataset config) and keeps it."""
        raise NotImplementedError(f"{type(self).__name__} reads no data from a config")

    def train_stream(self, stream: Stream) -> Iterator[dict]:
        """The training batches, built with ``stream`` from the loaded data."""
        raise NotImplementedError(f"{type(self).__name__} has no training stream")

    def init(self, rng: jax.Array, model: Any, variables: dict) -> tuple[Any, Any]:
        """The objective's params (trained with the model) and state (updated by :meth:`combine`)."""
        del rng, model, variables
        return {}, ()

    def start(self, model: Any, variables: dict) -> dict[str, float]:
        """Metrics of the starting model, before any step (e.g. transferability scores)."""
        del model, variables
        return {}

    # --- pure: inside the compiled steps ---------------------------------------------------------------------------
    def prepare(self, batch: dict, rng: jax.Array) -> tuple[dict, jax.Array]:
        """The batch as the loss takes it (e.g. MixUp), and the key left for the forward pass."""
        return batch, rng

    @abc.abstractmethod
    def loss(self, forward: Any, params: Any, state: Any, batch: dict, step: jax.Array) -> tuple:
        """``(loss, (batch_stats, metrics))`` of one (micro-)batch; ``forward`` (:class:`jtl.step.Forward`)
        runs the model and returns its updated BatchNorm statistics."""

    def combine(
        self, loss: Any, grads: Any, metrics: dict, tree: dict, state: Any, step: jax.Array, rng: jax.Array
    ) -> tuple[jax.Array, Any, Any, dict]:
        """``(loss, grads, state, metrics)`` for the update, from the (device- and micro-batch-averaged) loss and
        gradients over ``{"model", "objective"}``; the default passes them through."""
        del tree, step, rng
        return loss, grads, state, metrics

    @abc.abstractmethod
    def eval_sums(self, forward: Any, params: Any, batch: dict) -> dict[str, jax.Array]:
        """Sums over the batch's ``mask`` rows, which :meth:`evaluate` turns into metrics."""

    def predict(self, forward: Any, params: Any, batch: dict) -> dict[str, jax.Array]:
        """Per-example outputs (a leading batch axis on every array) for an evaluation that cannot be written as
        sums, e.g. detections for COCO mAP; read on the host through ``sums.predictions``."""
        raise NotImplementedError(f"{type(self).__name__} has no per-example predictions")

    # --- host side: evaluation and reporting -----------------------------------------------------------------------
    @abc.abstractmethod
    def evaluate(self, sums: Sums, model: Any, variables: Callable[[], dict]) -> dict[str, float]:
        """The evaluation metrics (``eval/...``) from the compiled eval step's ``sums``; ``variables()`` gives
        the model's current variables on the host, for evaluations that run outside the step."""

    def summarize(self, history: list[dict], final: dict, workdir: Path, is_chief: bool) -> dict[str, Any]:
        """Metrics over the whole run (model selection), added to the final metrics."""
        del history, final, workdir, is_chief
        return {}


_REGISTRY: dict[str, Callable[[ml_collections.ConfigDict], Objective]] = {}


def register(name: str, factory: Callable[[ml_collections.ConfigDict], Objective]) -> None:
    """Makes ``config.objective = name`` build its objective with ``factory(config)``.

    Args:
      name: the objective's name in configs.
      factory: ``config -> Objective``; raises :class:`jtl.config.ConfigError` for settings it cannot honour.

    Returns:
      None.

    >>> register("my-classification", lambda config: None)
    >>> "my-classification" in available()
    True
    >>> unregister("my-classification")
    """
    _REGISTRY[name] = factory


def unregister(name: str) -> None:
    """Removes a registered objective.

    Args:
      name: its name.

    Returns:
      None.

    >>> unregister("no-such-objective")
    Traceback (most recent call last):
    ...
    KeyError: 'no-such-objective'
    """
    del _REGISTRY[name]


def available() -> list[str]:
    """The registered objectives' names.

    Returns:
      Sorted names.

    >>> [name for name in available() if name in ("adaptation", "classification", "multitask")]
    ['adaptation', 'classification', 'multitask']
    """
    return sorted(_REGISTRY)


def check_unset(config: ml_collections.ConfigDict, keys: Sequence[str], why: str) -> None:
    """Refuses settings that an objective cannot honour: one error naming each of ``keys`` that is set.

    Args:
      config: the experiment config.
      keys: dotted keys (``"baseline.scratch"``) that must be unset (false, zero or empty).
      why: the reason, which ends the message.

    Returns:
      None.

    >>> from jtl.config import base_config
    >>> config = base_config()
    >>> config.mixup_alpha = 0.2
    >>> check_unset(config, ("mixup_alpha", "hyperrule"), "single-task settings, not with config.tasks")
    Traceback (most recent call last):
    ...
    jtl.config.ConfigError: config.mixup_alpha=0.2: single-task settings, not with config.tasks
    """
    found = []
    for key in keys:
        value = config
        for part in key.split("."):
            value = value[part]
        if value:
            found.append(f"config.{key}={value!r}")
    if found:
        raise ConfigError(f"{', '.join(found)}: {why}")


def from_config(config: ml_collections.ConfigDict) -> Objective:
    """The objective ``config.objective`` names; when empty, the one the config implies: ``multitask`` with
    ``config.tasks``, ``adaptation`` with ``config.target.source``, else ``classification``.

    Args:
      config: the experiment config.

    Returns:
      The objective (its data not yet loaded).

    >>> from jtl.config import base_config
    >>> type(from_config(base_config())).__name__
    'Classification'
    """
    name = config.objective or ("multitask" if config.tasks else "adaptation" if config.target.source else "")
    name = name or "classification"
    if name not in _REGISTRY:
        raise ConfigError(f"config.objective={name!r}; known: {', '.join(available())}")
    return _REGISTRY[name](config)
