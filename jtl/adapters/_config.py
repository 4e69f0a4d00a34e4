"""The methods an experiment config asks for: one small builder per config section, looked up in a table."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jtl.adapters._bottleneck import BottleneckSpec
from jtl.adapters._dora import DoRASpec
from jtl.adapters._ia3 import IA3Spec
from jtl.adapters._lora import LoRASpec
from jtl.adapters._method import Method
from jtl.adapters._prompts import PromptSpec
from jtl.adapters._qlora import QLoRASpec
from jtl.config import ConfigError


def _lora(section: Any) -> Method | None:
    if not section.rank:
        return None
    settings = (tuple(section.targets), section.rank, section.alpha, section.dropout, section.rslora)
    if section.quantize and section.dora:
        raise ValueError("config.lora: quantize (QLoRA) and dora cannot be combined")
    if section.quantize:
        if section.quantize not in ("nf4", "int8"):
            raise ValueError(f"config.lora.quantize={section.quantize!r}: expected 'nf4', 'int8' or ''")
        return QLoRASpec(*settings, format=section.quantize)
    return (DoRASpec if section.dora else LoRASpec)(*settings)


def _ia3(section: Any) -> Method | None:
    if not section.targets:
        return None
    return IA3Spec(tuple(section.targets), tuple(section.feedforward))


def _vpt(section: Any) -> Method | None:
    return PromptSpec(section.num_tokens, section.deep) if section.num_tokens else None


def _bottleneck(section: Any) -> Method | None:
    if not section.size:
        return None
    presets = {"houlsby": BottleneckSpec.houlsby, "pfeiffer": BottleneckSpec.pfeiffer}
    if section.style not in presets:
        raise ValueError(f"config.bottleneck.style={section.style!r}: expected one of {sorted(presets)}")
    return presets[section.style](section.size, section.activation)


#: ``config section -> (the key that switches it on, builder)``: the builder reads its section and returns a
#: method, or None when the key is falsy. A new kind is one builder and one line here (and its section in
#: :func:`jtl.config.base_config`).
FROM_CONFIG: dict[str, tuple[str, Callable[[Any], Method | None]]] = {
    "lora": ("rank", _lora),
    "ia3": ("targets", _ia3),
    "vpt": ("num_tokens", _vpt),
    "bottleneck": ("size", _bottleneck),
}


def from_config(config: Any) -> tuple[Method, ...]:
    """The adapter methods that ``config`` turns on: ``config.lora`` (``rank > 0``; DoRA with ``lora.dora``, QLoRA
    with ``lora.quantize``), ``config.ia3`` (``targets`` set), ``config.vpt`` (``num_tokens > 0``) and
    ``config.bottleneck`` (``size > 0``).

    Args:
      config: the experiment config (:func:`jtl.config.base_config`'s sections).

    Returns:
      The methods, in :data:`FROM_CONFIG`'s order (empty: no adapters, the model trains as configured).

    Raises:
      jtl.config.ConfigError: a setting no method takes, naming the field.

    >>> from jtl.config import base_config
    >>> config = base_config()
    >>> from_config(config)
    ()
    >>> config.lora.rank, config.lora.dora = 4, True
    >>> [method.kind for method in from_config(config)]
    ['dora']
    """
    built = []
    for section, (_, build) in FROM_CONFIG.items():
        try:
            built.append(build(config[section]))
        except ValueError as e:
            raise ConfigError(str(e)) from e
    return tuple(method for method in built if method is not None)


def switch_off(config: Any) -> None:
    """Turns every adapter section of ``config`` off (its switch key to 0 or empty), in place: the scratch
    baseline trains everything.

    Args:
      config: an unlocked experiment config.

    Returns:
      None.

    >>> from jtl.config import base_config
    >>> config = base_config()
    >>> config.lora.rank, config.vpt.num_tokens = 4, 8
    >>> switch_off(config)
    >>> from_config(config)
    ()
    """
    for section, (key, _) in FROM_CONFIG.items():
        config[section][key] = type(config[section][key])()
