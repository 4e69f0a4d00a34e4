"""jtl.checkpoint: asynchronous saves, restores into another mesh or device count, unreadable checkpoints skipped
and moved aside, and the workdir lock."""

import errno
import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec, SingleDeviceSharding

from jtl.checkpoint import (
    Checkpointer,
    CheckpointError,
    UnreadableCheckpointWarning,
    WorkdirInUseError,
    WorkdirLock,
)

REPO = Path(__file__).resolve().parents[1]
MODEL = {"class": "Tiny"}


KERNEL = np.random.default_rng(0).normal(size=(32, 32)).astype(np.float32)  # 4 KiB that do not compress


def _state(offset=0.0):
    """A small train-state-like tree: a matrix, a vector and a step count."""
    return {"kernel": KERNEL + offset, "bias": np.arange(32, dtype=np.float32) - offset, "step": np.int32(offset)}


FIRST_DEVICE = SingleDeviceSharding(jax.devices()[0])


def _sharded(tree, sharding):
    """``tree`` placed with ``sharding``, its scalars on the first device."""
    return jax.tree_util.tree_map(lambda x: jax.device_put(x, sharding if np.ndim(x) else FIRST_DEVICE), tree)


def _save(workdir, steps):
    """Steps ``steps`` of :func:`_state` (``offset`` = the step), each with its data state ``{"step": step}``."""
    checkpointer = Checkpointer(workdir)
    for step in steps:
        checkpointer.save(step, _state(step), {"step": step}, MODEL)
    checkpointer.close()


def _assert_equal(tree, expected):
    for a, b in zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(expected), strict=True):
        np.testing.assert_array_equal(np.asarray(a), b)


def test_restores_into_the_shardings_asked_for_not_the_ones_that_wrote_it(tmp_path):
    written = NamedSharding(Mesh(np.asarray(jax.devices()[:4]), ("data",)), PartitionSpec("data"))
    checkpointer = Checkpointer(tmp_path)
    checkpointer.save(3, _sharded(_state(3), written), {"step": 3}, MODEL)
    checkpointer.close()

    two = NamedSharding(Mesh(np.asarray(jax.devices()[:2]), ("data",)), PartitionSpec("data"))
    one = NamedSharding(Mesh(np.asarray(jax.devices()[1:2]), ("data",)), PartitionSpec())
    for sharding in (two, one):
        state, data, step = Checkpointer(tmp_path).restore(_sharded(_state(), sharding), MODEL)
        assert (step, data) == (3, {"step": 3})
        _assert_equal(state, _state(3))
        assert state["kernel"].sharding == state["bias"].sharding == sharding
        assert state["step"].sharding == FIRST_DEVICE

    # Leaves that are not jax.Arrays (pretrained weights loaded as numpy) go to the default device, not to the
    # 4-device sharding recorded in the checkpoint (which names devices another machine may not have).
    state, _, _ = Checkpointer(tmp_path).restore(_state(), MODEL)
    assert {leaf.sharding for leaf in jax.tree_util.tree_leaves(state)} == {FIRST_DEVICE}
    _assert_equal(state, _state(3))


def test_a_save_keeps_the_values_it_was_given_while_training_overwrites_them(tmp_path):
    sharding = NamedSharding(Mesh(np.asarray(jax.devices()), ("data",)), PartitionSpec())
    step = jax.jit(lambda s: jax.tree_util.tree_map(lambda x: x + 1, s), donate_argnums=0, out_shardings=sharding)
    state = jax.device_put(_state(1), sharding)
    checkpointer = Checkpointer(tmp_path)
    checkpointer.save(1, state, {"step": 1}, MODEL)
    for _ in range(3):  # the train step donates the state's buffers while the save may still be writing
        state = step(state)
    checkpointer.save(4, state, {"step": 4}, MODEL)
    checkpointer.close()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1", "4"]
    _assert_equal(ocp.StandardCheckpointer().restore(tmp_path / "checkpoints" / "1" / "state"), _state(1))
    _assert_equal(
        Checkpointer(tmp_path).restore(_state(), MODEL)[0], jax.tree_util.tree_map(lambda x: x + 3, _state(1))
    )


def _largest_data_file(step_dir):
    """The TensorStore file that holds the kernel's values."""
    return max((step_dir / "state" / "ocdbt.process_0" / "d").iterdir(), key=lambda p: p.stat().st_size)


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


CORRUPTIONS = {
    "model JSON truncated": (lambda d: _truncate(d / "model" / "metadata"), r"'model' item: JSONDecodeError"),
    "data JSON truncated": (lambda d: _truncate(d / "data" / "metadata"), r"'data' item: JSONDecodeError"),
    "data JSON deleted": (lambda d: (d / "data" / "metadata").unlink(), r"'data' item: FileNotFoundError"),
    "state data file truncated": (
        lambda d: _truncate(_largest_data_file(d)),
        r"'state' item: Exception: Encountered error while reading array .*caused by ValueError: OUT_OF_RANGE",
    ),
    "state metadata truncated": (lambda d: _truncate(d / "state" / "_METADATA"), r"'state' item: JSONDecodeError"),
    "state manifest deleted": (
        lambda d: (d / "state" / "manifest.ocdbt").unlink(),
        r"'state' item: ValueError: NOT_FOUND",
    ),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_an_unreadable_latest_step_is_moved_aside_and_the_previous_one_restored(tmp_path, corruption):
    corrupt, reason = CORRUPTIONS[corruption]
    _save(tmp_path, [1, 2])
    corrupt(tmp_path / "checkpoints" / "2")
    files = sorted(p.relative_to(tmp_path / "checkpoints" / "2") for p in (tmp_path / "checkpoints" / "2").rglob("*"))

    checkpointer = Checkpointer(tmp_path)
    with pytest.warns(UnreadableCheckpointWarning) as warned:
        state, data, step = checkpointer.restore(_state(), MODEL)
    (warning,) = warned
    assert str(warning.message).startswith(f"checkpoint {tmp_path / 'checkpoints' / '2'} cannot be restored (its ")
    assert str(warning.message).endswith(
        f"; restored step 1 instead, and moved the unreadable one to {tmp_path / 'checkpoints_rejected' / '2'}"
    )
    assert re.search(reason, str(warning.message)), warning.message
    assert (step, data) == (1, {"step": 1})
    _assert_equal(state, _state(1))
    # Kept whole, where saving step 2 again cannot collide with it.
    rejected = tmp_path / "checkpoints_rejected" / "2"
    assert sorted(p.relative_to(rejected) for p in rejected.rglob("*")) == files
    assert checkpointer.latest_step() == 1 and not (tmp_path / "checkpoints" / "2").exists()
    checkpointer.save(2, _state(20), {"step": 20}, MODEL)
    checkpointer.close()
    state, data, step = Checkpointer(tmp_path).restore(_state(), MODEL)
    assert (step, data) == (2, {"step": 20})


def test_a_step_rejected_twice_gets_a_second_name(tmp_path):
    _save(tmp_path, [1, 2])
    (tmp_path / "checkpoints_rejected" / "2").mkdir(parents=True)
    (tmp_path / "checkpoints" / "2" / "model" / "metadata").write_text("{")
    with pytest.warns(UnreadableCheckpointWarning, match=r"moved the unreadable one to .*checkpoints_rejected/2-\d+"):
        assert Checkpointer(tmp_path).restore(_state(), MODEL)[2] == 1
    assert len(list((tmp_path / "checkpoints_rejected").iterdir())) == 2


def test_no_readable_step_is_an_error_naming_the_directory_and_each_problem_and_moves_nothing(tmp_path):
    _save(tmp_path, [1, 2])
    for step in ("1", "2"):
        (tmp_path / "checkpoints" / step / "model" / "metadata").write_text("[1, 2")
    with pytest.raises(CheckpointError) as error:
        Checkpointer(tmp_path).restore(_state(), MODEL)
    assert str(error.value).startswith(
        f"{tmp_path / 'checkpoints'}: no checkpoint can be restored (step 2: its 'model' item: JSONDecodeError: "
    )
    assert "; step 1: its 'model' item: JSONDecodeError: " in str(error.value)
    assert str(error.value).endswith("Nothing was moved or deleted; move the directory aside to start this run afresh.")
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1", "2"]
    assert not (tmp_path / "checkpoints_rejected").exists()


def test_a_checkpoint_of_another_model_is_an_error_not_an_unreadable_one(tmp_path):
    _save(tmp_path, [1, 2])
    with pytest.raises(CheckpointError, match=r"/checkpoints/2: the checkpoint was written by a different model"):
        Checkpointer(tmp_path).restore(_state(), {"class": "Other"})
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1", "2"]


def test_a_second_lock_is_refused_naming_the_holder_and_a_released_lock_is_free(tmp_path, capsys):
    with WorkdirLock(tmp_path) as lock:
        assert lock.holder["pid"] == os.getpid() and lock.holder["host"] == socket.gethostname()
        assert json.loads((tmp_path / "run.lock").read_text()) == lock.holder
        with pytest.raises(WorkdirInUseError) as error:
            WorkdirLock(tmp_path)
        assert str(error.value) == (
            f"{tmp_path / 'run.lock'}: a run holds this workdir (pid {os.getpid()}, host {socket.gethostname()}, "
            f"started {lock.holder['started']}); wait for it to end or use another workdir"
        )
    assert (tmp_path / "run.lock").read_text() == ""
    WorkdirLock(tmp_path).release()
    assert capsys.readouterr().err == ""  # a lock released normally is taken without a note


def test_the_lock_of_a_killed_process_is_taken_over_with_a_note(tmp_path, capsys):
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from jtl.checkpoint import WorkdirLock; lock = WorkdirLock({str(tmp_path)!r}); "
         "print('locked', flush=True); input()"],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(WorkdirInUseError, match=rf"\(pid {holder.pid}, host "):
            WorkdirLock(tmp_path)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    started = json.loads((tmp_path / "run.lock").read_text())["started"]
    with WorkdirLock(tmp_path) as lock:
        assert lock.holder["pid"] == os.getpid()
    assert capsys.readouterr().err == (
        f"note: taking over {tmp_path / 'run.lock'} from a run that ended without releasing it "
        f"(pid {holder.pid}, host {socket.gethostname()}, started {started})\n"
    )


def test_a_file_system_without_locks_runs_unlocked_and_says_so(tmp_path, capsys, monkeypatch):
    def no_locks(file, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with WorkdirLock(tmp_path) as lock:
        assert json.loads((tmp_path / "run.lock").read_text()) == lock.holder
    assert capsys.readouterr().err == (
        f"note: {tmp_path / 'run.lock'} cannot be locked ([Errno {errno.ENOLCK}] No locks available); nothing stops a "
        "second run here\n"
    )
    assert (tmp_path / "run.lock").read_text() == ""
