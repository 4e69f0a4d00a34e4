"""Checkpoints with Orbax: the train state, the data iterator's state and a description of the model; and the lock
that keeps a second run out of a workdir that a live run holds.

Orbax writes each step to a temporary directory and renames it when complete, so a crash mid-save never
corrupts or deletes the last good checkpoint. Saves are asynchronous: :meth:`Checkpointer.save` returns once the
state's arrays are copied off the devices, and the files are written while training goes on. A checkpoint of a
different model is refused with a message that says what differs, before Orbax is asked to restore anything; a
checkpoint that cannot be read (a truncated or missing file) is moved aside and the previous one restored.
"""

from __future__ import annotations

import datetime
import fcntl
import inspect
import json
import os
import socket
import sys
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from jtl.masking import named_leaves

LOCK_FILE = "run.lock"
REJECTED_DIR = "checkpoints_rejected"


class CheckpointError(ValueError):
    """A checkpoint that does not fit this run; the message names the directory and what differs."""


class WorkdirInUseError(CheckpointError):
    """A live run holds the workdir; the message names it (pid, host, start time)."""


class _Unreadable(Exception):
    """A step's item could not be read: the message says which and why."""


class UnreadableCheckpointWarning(UserWarning):
    """A checkpoint could not be read and was moved aside; an older one was restored instead."""


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


def restore_target(state_like: Any) -> Any:
    """Where each leaf of a restored state goes: the sharding of ``state_like``'s leaf when it is a ``jax.Array``
    or a ``jax.ShapeDtypeStruct`` with one (any mesh or device count, whatever the checkpoint was written from),
    else this process's first device.

    Args:
      state_like: a pytree of arrays with the restored state's structure, shapes and dtypes.

    Returns:
      The same tree of ``jax.ShapeDtypeStruct`` with shardings.

    >>> mesh = jax.sharding.Mesh(jax.devices()[:2], ("data",))
    >>> sharded = jax.device_put(np.zeros((4, 3), np.float32), jax.sharding.NamedSharding(mesh, jax.P("data")))
    >>> target = restore_target({"a": sharded, "b": np.zeros(2, np.int32)})
    >>> target["a"].sharding.spec, target["b"].sharding.device_set == {jax.local_devices()[0]}
    (P('data',), True)
    """
    default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def target(x: Any) -> jax.ShapeDtypeStruct:
        sharding = x.sharding if isinstance(x, jax.Array | jax.ShapeDtypeStruct) and x.sharding else default
        return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)

    return jax.tree_util.tree_map(target, state_like)


class WorkdirLock:
    """Holds ``workdir/run.lock`` (``fcntl.flock``) until :meth:`release`, with the holder's pid, host and start
    time written in it; the kernel drops the lock when the process dies, even on SIGKILL.

    Args:
      workdir: the run's directory (created if missing).

    Raises:
      WorkdirInUseError: a live process holds the lock; the message names it.

    A lock that a dead process left is taken over with a one-line note on stderr.

    >>> import tempfile
    >>> workdir = tempfile.mkdtemp()
    >>> with WorkdirLock(workdir) as lock:
    ...     WorkdirLock(workdir)
    Traceback (most recent call last):
    ...
    jtl.checkpoint.WorkdirInUseError: .../run.lock: a run holds this workdir (pid ..., host ..., started ...)...
    >>> sorted(lock.holder), (Path(workdir) / "run.lock").read_text()
    (['host', 'pid', 'started'], '')
    """

    def __init__(self, workdir: str | Path):
        self.path = Path(workdir).absolute() / LOCK_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # "a+": never truncate what a live holder wrote before the lock is ours.
        self._file = self.path.open("a+")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_text(self._read())
            self._file.close()
            raise WorkdirInUseError(
                f"{self.path}: a run holds this workdir ({holder}); wait for it to end or use another workdir"
            ) from None
        except OSError as e:  # a file system without locks (some network mounts): run, but say so
            print(f"note: {self.path} cannot be locked ({e}); nothing stops a second run here", file=sys.stderr)
            self._locked = False
        else:
            self._locked = True
        previous = self._read()
        if previous:  # a holder releases by emptying the file: this one died holding it
            note = f"note: taking over {self.path} from a run that ended without releasing it"
            print(f"{note} ({_holder_text(previous)})", file=sys.stderr, flush=True)
        self.holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        self._file.truncate(0)
        self._file.write(json.dumps(self.holder))
        self._file.flush()

    def _read(self) -> str:
        self._file.seek(0)
        return self._file.read().strip()

    def release(self) -> None:
        """Empties the lock file (the run ended normally) and unlocks it."""
        if not self._file.closed:
            self._file.truncate(0)
            self._file.flush()
            if self._locked:
                fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()

    def __enter__(self) -> WorkdirLock:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.release()


def _holder_text(text: str) -> str:
    try:
        holder = json.loads(text)
        return f"pid {holder['pid']}, host {holder['host']}, started {holder['started']}"
    except (ValueError, KeyError, TypeError):
        return "its details are not written yet" if not text else f"lock file reads {text[:200]!r}"


class Checkpointer:
    """Saves and restores ``(state, data_state)`` in ``workdir/checkpoints``, keeping the last ``keep``; saves are
    asynchronous, and a checkpoint that cannot be read is moved to ``workdir/checkpoints_rejected``.

    Args:
      workdir: the run's directory.
      keep: how many of the latest steps to keep.

    >>> import tempfile
    >>> workdir = tempfile.mkdtemp()
    >>> checkpointer = Checkpointer(workdir)
    >>> checkpointer.save(5, {"w": np.ones(3, np.float32)}, {"position": 7}, {"class": "Tiny"})
    >>> checkpointer.close()  # waits for the write
    >>> state, data_state, step = Checkpointer(workdir).restore({"w": np.zeros(3, np.float32)}, {"class": "Tiny"})
    >>> state["w"].tolist(), data_state, step
    ([1.0, 1.0, 1.0], {'position': 7}, 5)
    """

    def __init__(self, workdir: str | Path, keep: int = 3):
        self.directory = Path(workdir).absolute() / "checkpoints"
        self.rejected = Path(workdir).absolute() / REJECTED_DIR
        # The temporary directories of saves that a killed run left unfinished are removed; never a finished step.
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=True, cleanup_tmp_directories=True
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        """The latest step saved (or being saved), None before the first."""
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_state: dict, model_description: dict) -> None:
        """Starts saving a step and returns once ``state``'s arrays are copied off the devices; the files are
        written in the background. A save first waits for the previous one; :meth:`close` waits for the last.

        Args:
          step: the step number (its directory's name).
          state: the train state: the global ``jax.Array`` s (each host writes its own shards), not host copies.
          data_state: the data iterator's state (JSON).
          model_description: what built the model (JSON); it guards restores.
        """
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(data_state),
                model=ocp.args.JsonSave({"model": model_description, "state": describe(state)}),
            ),
            force=True,
        )

    def restore(self, state_like: Any, model_description: dict) -> tuple[Any, dict, int]:
        """Restores the latest readable step into the structure and shardings of ``state_like`` (see
        :func:`restore_target`), or of ``state_like(step)`` when it is callable (what a step holds may depend on
        the step, as a gradual-unfreezing stage's optimizer state does); returns (state, data state, step).

        A step that cannot be read (a truncated or missing file) is skipped for the one before it, and moved to
        ``workdir/checkpoints_rejected/<step>`` with a warning once an older step has been restored. When no step
        can be read, a :class:`CheckpointError` names each one's problem and nothing is moved. A checkpoint of a
        different model is a :class:`CheckpointError` at once.

        Args:
          state_like: a state with the structure, shapes, dtypes and shardings to restore into, or
            ``step -> that state``.
          model_description: what built this run's model; a checkpoint must have been saved with the same.

        Returns:
          ``(state, data_state, step)``.
        """
        unreadable: list[tuple[int, str]] = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            problem = None
            try:
                like = state_like(step) if callable(state_like) else state_like
                state, data = self._restore_step(step, like, model_description)
            except _Unreadable as e:
                problem = str(e)
            # Each host reads its own shards: a step counts only if every host read it, so all restore one step.
            if not _on_every_process(problem is None):
                unreadable.append((step, problem or "unreadable on another host"))
                continue
            self._reject(unreadable, step)
            return state, data, step
        problems = "; ".join(f"step {step}: {reason}" for step, reason in unreadable) or "there is none"
        raise CheckpointError(
            f"{self.directory}: no checkpoint can be restored ({problems}). Nothing was moved or deleted; move the "
            "directory aside to start this run afresh."
        )

    def _restore_step(self, step: int, state_like: Any, model_description: dict) -> tuple[Any, dict]:
        # One item at a time, so that a failure names the item at fault.
        saved = self._item(step, "model", ocp.args.JsonRestore())
        if not isinstance(saved, dict):
            raise _Unreadable(f"its 'model' item is {type(saved).__name__}, not a JSON object")
        expected = {"model": model_description, "state": describe(state_like)}
        if saved != expected:
            raise CheckpointError(f"{self.directory / str(step)}: {_difference(saved, expected)}")
        state = self._item(step, "state", ocp.args.StandardRestore(restore_target(state_like)))
        return state, self._item(step, "data", ocp.args.JsonRestore())

    def _item(self, step: int, name: str, args: Any) -> Any:
        try:
            return self.manager.restore(step, args=ocp.args.Composite(**{name: args}))[name]
        except Exception as e:  # Orbax and TensorStore raise bare Exception, ValueError, OSError, JSON errors
            if not getattr(sys.unraisablehook, "quiets_abandoned_reads", False):
                sys.unraisablehook = _quiet_abandoned_reads(sys.unraisablehook)
            raise _Unreadable(f"its {name!r} item: {_reason(e)}") from e

    def _reject(self, unreadable: list[tuple[int, str]], restored: int) -> None:
        """Moves unreadable steps aside (the chief only: the processes share the directory), so that saving those
        step numbers again does not collide with them."""
        if not unreadable:
            return
        if jax.process_index() == 0:
            self.rejected.mkdir(exist_ok=True)
            for step, reason in unreadable:
                target = self.rejected / str(step)
                if target.exists():  # rejected before, in an earlier run
                    target = target.with_name(f"{step}-{datetime.datetime.now(datetime.timezone.utc):%Y%m%dT%H%M%S%f}")
                (self.directory / str(step)).rename(target)
                warnings.warn(
                    f"checkpoint {self.directory / str(step)} cannot be restored ({reason}); restored step {restored} "
                    f"instead, and moved the unreadable one to {target}",
                    UnreadableCheckpointWarning,
                    stacklevel=3,
                )
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("jtl.checkpoint: unreadable steps moved aside")
        self.manager.reload()

    def close(self) -> None:
        """Waits for the save in flight, then releases Orbax's threads."""
        self.manager.close()


def _on_every_process(fact: bool) -> bool:
    """Whether ``fact`` holds on every process (a collective: every process must ask)."""
    if jax.process_count() == 1:
        return fact
    return bool(multihost_utils.process_allgather(np.int32(fact)).min())


def _quiet_abandoned_reads(previous: Any) -> Any:
    """``sys.unraisablehook`` without the noise of a failed Orbax read: Orbax closes its event loop while
    TensorStore's other reads are still finishing, and each of those (dozens) would print a traceback as it fails to
    call back into the closed loop, or as its abandoned coroutine is collected. The failure itself is reported."""

    def hook(unraisable: Any) -> None:
        error = unraisable.exc_value
        if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
            return
        if inspect.iscoroutine(unraisable.object) and isinstance(getattr(error, "__cause__", None), GeneratorExit):
            return
        previous(unraisable)

    hook.quiets_abandoned_reads = True
    return hook


def _reason(e: BaseException) -> str:
    """The exception's first line and its root cause's (TensorStore's detail hides in the cause)."""

    def first_line(error: BaseException) -> str:
        return f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}"[:300]

    root = e
    while root.__cause__ is not None:
        root = root.__cause__
    return first_line(e) if root is e else f"{first_line(e)}; caused by {first_line(root)}"


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
