"""Checkpoints with Orbax: the train state, the data iterator's state and a description of the model.

Orbax writes each step to a temporary directory and renames it when complete, so a crash mid-save never
corrupts or deletes the last good checkpoint. A checkpoint of a different model is refused with a message
that says what differs, before Orbax is asked to restore anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jtl.masking import named_leaves


class CheckpointError(ValueError):
    """A checkpoint that does not fit this run; the message names the directory and what differs."""


def describe(state: Any) -> dict[str, list]:
    """``{leaf name: [shape, dtype]}`` of a train state: what a checkpoint must match to be restored into it.

    Args:
      state: any pytree of arrays (the train state).

    Returns:
      The description, JSON-ready.

    >>> describe({"head": {"kernel": np.zeros((4, 2), np.float32)}, "step": np.int32(3)})
    {'head/kernel': [[4, 2], 'float32'], 'step': [[], 'int32']}
    """
    return {name: [list(np.shape(x)), str(np.dtype(x.dtype))] for name, x in named_leaves(state)}


class Checkpointer:
    """Saves and restores ``(state, data_state)`` in ``workdir/checkpoints``, keeping the last ``keep``."""

    def __init__(self, workdir: str | Path, keep: int = 3):
        self.directory = Path(workdir).absolute() / "checkpoints"
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_state: dict, model_description: dict) -> None:
        """Saves a step (blocking until written); the model description guards restores."""
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(data_state),
                model=ocp.args.JsonSave({"model": model_description, "state": describe(state)}),
            ),
            force=True,
        )
        self.manager.wait_until_finished()

    def restore(self, state_like: Any, model_description: dict) -> tuple[Any, dict, int]:
        """Restores the latest step into the structure of ``state_like``; returns (state, data state, step)."""
        step = self.manager.latest_step()
        saved = self.manager.restore(step, args=ocp.args.Composite(model=ocp.args.JsonRestore()))["model"]
        expected = {"model": model_description, "state": describe(state_like)}
        if saved != expected:
            raise CheckpointError(f"{self.directory / str(step)}: {_difference(saved, expected)}")
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state_like)
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore())
        )
        return restored["state"], restored["data"], step

    def close(self) -> None:
        self.manager.close()


def _difference(saved: dict, expected: dict) -> str:
    if saved.get("model") != expected["model"]:
        keys = sorted(set(saved.get("model", {})) | set(expected["model"]))
        diffs = [
            f"{k}: checkpoint {saved.get('model', {}).get(k)}, this run {expected['model'].get(k)}"
            for k in keys
            if saved.get("model", {}).get(k) != expected["model"].get(k)
        ]
        return "the checkpoint was written by a different model (" + "; ".join(diffs[:8]) + ")"
    want, got = expected["state"], saved.get("state", {})
    missing = sorted(set(want) - set(got))[:5]
    extra = sorted(set(got) - set(want))[:5]
    changed = [
        f"{k}: checkpoint {got[k]}, this run {want[k]}" for k in sorted(set(want) & set(got)) if got[k] != want[k]
    ]
    return (
        "the checkpoint's train state does not fit this run "
        f"(missing {missing}, unexpected {extra}, changed {changed[:5]})"
    )
