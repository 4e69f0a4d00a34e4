"""When to log, evaluate and checkpoint: one tested rule for every periodic action of the trainer."""

from __future__ import annotations


def is_time(step: int, every: int, total: int, *, at_end: bool = True) -> bool:
    """True when a periodic action is due after ``step`` (1-based) of ``total`` steps.

    Each action has its own period, so checkpointing never rides on the eval interval (a vit_jax bug).

    Args:
      step: the number of steps done.
      every: the period in steps; 0 or less never fires (except at the end when ``at_end``).
      total: the number of steps in the run.
      at_end: also fire after the last step.

    Returns:
      Whether the action is due.

    >>> [s for s in range(1, 11) if is_time(s, every=4, total=10)]
    [4, 8, 10]
    >>> [s for s in range(1, 11) if is_time(s, every=0, total=10, at_end=False)]
    []
    """
    if at_end and step == total:
        return True
    return every > 0 and step % every == 0
