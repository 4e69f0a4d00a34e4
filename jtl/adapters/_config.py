"""The methods an experiment config asks for: one small builder per config section, looked up in a table."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jtl.adapters._dora import DoRASpec
from jtl.adapters._ia3 import IA3Spec
from jtl.adapters._lora import LoRASpec
from jtl.adapters._method import Method


def _lora(section: Any) -> Method | None:
    if not section.rank:
        return None
    spec = DoRASpec if section.dora else LoRASpec
    return spec(tuple(section.targets), section.rank, section.alpha, section.dropout, section.rslora)


def _ia3(section: Any) -> Method | None:
    if not section.targets:
        return None
    return IA3Spec(tuple(section.targets), tuple(section.feedforward))


#: ``config section -> builder``: the builder reads its section and returns a method, or None when it is off.
#: A new kind is one builder and one line here (and its section in :func:`jtl.config.base_config`).
FROM_CONFIG: dict[str, Callable[[Any], Method | None]] = {"lora": _lora, "ia3": _ia3}


def from_config(config: Any) -> tuple[Method, ...]:
    """The adapter methods that ``config`` turns on: ``config.lora`` (``rank > 0``; DoRA with ``lora.dora``) and
    ``config.ia3`` (``targets`` set).

    Args:
      config: the experiment config (:func:`jtl.config.base_config`'s sections).

    Returns:
      The methods, in :data:`FROM_CONFIG`'s order (empty: no adapters, the model trains as configured).

    >>> from jtl.config import base_config
    >>> config = base_config()
    >>> from_config(config)
    ()
    >>> config.lora.rank, config.lora.dora = 4, True
    >>> [method.kind for method in from_config(config)]
    ['dora']
    """
    built = (build(config[section]) for section, build in FROM_CONFIG.items())
    return tuple(method for method in built if method is not None)
