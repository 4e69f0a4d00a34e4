"""Experiment configs: ``ml_collections`` Python files with ``get_config(arg)``, ``--config file.py[:arg]`` and
``--config.key=value`` overrides, locked so that a typo is an error naming the key and the closest ones."""

from __future__ import annotations

import ast
import difflib
import importlib.util
from pathlib import Path
from typing import Any

import ml_collections


class ConfigError(ValueError):
    """A config file or override that does not fit; the message names the file or key at fault."""


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Loads ``path/to/config.py[:arg]`` by calling its ``get_config(arg)``; the result is locked.

    Args:
      spec: the config file, optionally followed by ``:arg`` (passed to ``get_config`` as a string).

    Returns:
      The locked ``ConfigDict``.

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "c.py")
    >>> _ = open(path, "w").write("import ml_collections\\ndef get_config(arg=None):\\n"
    ...                           "    return ml_collections.ConfigDict({'lr': 0.1, 'arg': arg})\\n")
    >>> load_config(path + ":b16").arg
    'b16'
    """
    path, _, arg = spec.partition(":")
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--config {spec}: no such file {file}")
    module_spec = importlib.util.spec_from_file_location(f"jtl_config_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{file}: a config file must define get_config(arg=None)")
    config = module.get_config(arg or None)
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"{file}: get_config returned {type(config).__name__}, not an ml_collections.ConfigDict")
    config.lock()
    return config


def flat_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """All dotted keys of a config, nested ones included."""
    keys = []
    for key, value in config.items():
        keys.append(prefix + key)
        if isinstance(value, ml_collections.ConfigDict):
            keys.extend(flat_keys(value, prefix + key + "."))
    return keys


def _parse_value(text: str, current: Any, key: str) -> Any:
    if isinstance(current, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ConfigError(f"--config.{key}={text}: expected true or false")
        return text.lower() in ("true", "1")
    if isinstance(current, str):
        return text
    if current is None:
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError) as e:
        raise ConfigError(f"--config.{key}={text}: not a {type(current).__name__} literal") from e
    if isinstance(current, float) and isinstance(value, int):
        value = float(value)
    if isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    if type(value) is not type(current):
        raise ConfigError(f"--config.{key}={text}: expected a {type(current).__name__}, got {type(value).__name__}")
    return value


def apply_override(config: ml_collections.ConfigDict, key: str, text: str) -> None:
    """Sets ``config.<key>`` (dotted) from command-line text, typed like the current value.

    Args:
      config: the (locked) config.
      key: the dotted key, e.g. ``optimizer.learning_rate``.
      text: the value as typed.

    Returns:
      None.

    Raises:
      ConfigError: for an unknown key (naming the closest keys) or a value of the wrong type.

    >>> c = ml_collections.ConfigDict({"optim": {"lr": 0.1}}); _ = c.lock()
    >>> apply_override(c, "optim.lr", "3e-4"); c.optim.lr
    0.0003
    """
    node = config
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            close = difflib.get_close_matches(key, flat_keys(config), n=3, cutoff=0.5)
            hint = f"; closest: {', '.join(close)}" if close else ""
            raise ConfigError(f"unknown config key {key!r}{hint}")
        if i == len(parts) - 1:
            node[part] = _parse_value(text, node[part], key)
        else:
            node = node[part]
