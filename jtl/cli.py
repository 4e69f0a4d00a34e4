"""How jtl's commands end: a user's mistake (config, masking rules, data, weights, a checkpoint that does not
fit) exits with status 2 and one message naming the field, file or key; a run that fails (a non-finite loss)
exits with status 1. ``--debug`` or ``JTL_DEBUG=1`` shows the traceback instead."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from jtl.checkpoint import CheckpointError
from jtl.config import ConfigError
from jtl.data import DataError
from jtl.masking import MaskingError
from jtl.weights import WeightLoadError

USER_ERRORS = (ConfigError, MaskingError, DataError, WeightLoadError, CheckpointError)


class TrainingError(RuntimeError):
    """The run cannot go on (a non-finite loss, ...); the message says why and what was kept."""


def run_command(parser: argparse.ArgumentParser, debug: bool, command: Callable[[], Any]) -> Any:
    """Runs ``command`` and turns the errors a user can fix into an exit with one message.

    Args:
      parser: the command's parser (its ``prog`` starts the message).
      debug: re-raise instead, with the traceback (also when ``JTL_DEBUG=1``).
      command: the run.

    Returns:
      What ``command`` returns.

    >>> def bad():
    ...     raise ConfigError("config.optimizer='adamx'; known: sgd, adam, adamw")
    >>> run_command(argparse.ArgumentParser(prog="jtl"), False, bad)
    Traceback (most recent call last):
    ...
    SystemExit: 2
    """
    if debug or os.environ.get("JTL_DEBUG", "") not in ("", "0"):
        return command()
    try:
        return command()
    except USER_ERRORS as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except TrainingError as e:
        print(f"{parser.prog}: run failed: {e}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
