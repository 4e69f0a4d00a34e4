"""`python -m jtl.train` as users run it: command-line errors, SIGKILL and restart, SIGTERM."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jtl.train import main

REPO = Path(__file__).resolve().parents[2]
CONFIG = """
from jtl.config import base_config

def get_config(arg=None):
    c = base_config()
    c.num_classes = 3
    c.model.overrides = {"image_size": 8, "patch_size": 4, "num_channels": 1, "dropout_rate": 0.0}
    c.data.classes = (0, 1, 2)
    c.data.shots = 16
    c.total_steps = 40
    c.batch_size = 16
    c.eval_batch_size = 16
    c.log_every = 10
    c.checkpoint_every = 5
    c.compilation_cache = ""
    return c
"""


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "tiny.py"
    path.write_text(CONFIG)
    return path


def test_unknown_key_names_it_and_suggests_the_closest(config_file, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(config_file), "--config.learnin_rate=0.1"])
    assert exit_info.value.code == 2
    assert "unknown config key 'learnin_rate'; closest: learning_rate" in capsys.readouterr().err


def test_wrongly_typed_override_is_an_error(config_file, capsys):
    with pytest.raises(SystemExit):
        main(["--config", str(config_file), "--config.total_steps=many"])
    assert "--config.total_steps=many: not a int literal" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["--config.optimizer=adamx"], r"error: config.optimizer='adamx'; known: sgd, adam, adamw"),
        (
            ["--config.trainable=('encoder/nothing_here/.*', 'head/.*')"],
            r"error: these patterns match no leaf: .*nothing_here",
        ),
        (
            ["--config.data.source=folder", "--config.data.train_dir=/no/such/dir", "--config.data.test_dir=/no/such"],
            r"error: image folder /no/such/dir: no such directory",
        ),
        (["--config.model.pretrained=/no/such/weights.npz"], r"error: .*/no/such/weights.npz"),
    ],
    ids=["config", "masking", "data", "weights"],
)
def test_each_kind_of_user_error_exits_2_with_one_message(config_file, tmp_path, capsys, overrides, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(config_file), "--workdir", str(tmp_path), *overrides])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert err.startswith("python -m jtl.train: error: ") and "Traceback" not in err and err.count("\n") == 1


@pytest.mark.parametrize("how", ["--debug", "JTL_DEBUG=1"])
def test_debug_shows_the_exception_with_its_traceback(config_file, tmp_path, monkeypatch, how):
    from jtl.config import ConfigError

    if how == "--debug":
        extra = ["--debug"]
    else:
        monkeypatch.setenv("JTL_DEBUG", "1")
        extra = []
    with pytest.raises(ConfigError, match=r"config\.optimizer='adamx'"):
        main(["--config", str(config_file), "--workdir", str(tmp_path), "--config.optimizer=adamx", *extra])


def test_checkpoint_of_another_model_exits_2_naming_what_differs(config_file, tmp_path, capsys):
    main(["--config", str(config_file), "--workdir", str(tmp_path), "--config.total_steps=4"])
    deeper = tmp_path / "deeper.py"
    deeper.write_text(CONFIG.replace('"dropout_rate": 0.0}', '"dropout_rate": 0.0, "num_layers": 3}'))
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(deeper), "--workdir", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert re.search(r"error: .*different model \(.*num_layers: checkpoint 2, this run 3", err), err


def test_non_finite_loss_exits_1_and_keeps_the_last_good_checkpoint(config_file, tmp_path, capsys):
    main(
        [
            "--config",
            str(config_file),
            "--workdir",
            str(tmp_path),
            "--config.total_steps=4",
            "--config.checkpoint_every=4",
        ]
    )
    good = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(config_file), "--workdir", str(tmp_path), "--config.total_steps=12",
              "--config.checkpoint_every=4", "--config.learning_rate=1e30"])  # fmt: skip
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert re.search(r"run failed: non-finite training loss by step \d+ .*last good checkpoint is step 4", err), err
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == good


def _start(config_file, workdir, *extra, devices=4):
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen(
        [sys.executable, "-m", "jtl.train", "--config", str(config_file), "--workdir", str(workdir), *extra],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _steps(workdir):
    """The finished checkpoints' steps, and whether a save is under way (Orbax's temporary directory)."""
    names = [p.name for p in (workdir / "checkpoints").glob("*")]
    return sorted(int(n) for n in names if n.isdigit()), any(".orbax-checkpoint-tmp" in n for n in names)


def _saving_after_two(workdir):
    finished, saving = _steps(workdir)
    return len(finished) >= 2 and saving


def _wait_until(process, condition, what, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if process.poll() is not None:
            raise AssertionError(f"the run ended before {what}:\n{process.stdout.read()}")
        time.sleep(0.005)
    raise AssertionError(f"not {what} within the timeout")


def _wait_for_checkpoint(process, workdir, timeout=120.0):
    _wait_until(process, lambda: _steps(workdir)[0], "its first checkpoint", timeout)


def _final_params(workdir):
    return ocp.StandardCheckpointer().restore(workdir / "checkpoints" / "40" / "state")["params"]


def _kill(process):
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)


def test_sigkill_then_restart_ends_with_the_uninterrupted_params(config_file, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    uninterrupted = _start(config_file, a)
    # A second run in the live run's workdir stops at once, naming the holder, and the first run goes on.
    _wait_until(uninterrupted, lambda: (a / "run.lock").exists() and (a / "run.lock").read_text(), "it holds a lock")
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(config_file), "--workdir", str(a)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert re.fullmatch(
        rf"python -m jtl.train: error: {a / 'run.lock'}: a run holds this workdir \(pid {uninterrupted.pid}, host "
        rf"{re.escape(socket.gethostname())}, started \S+\); wait for it to end or use another workdir\n",
        err,
    ), err
    assert uninterrupted.poll() is None, "the second run was refused only because the first had ended"
    assert uninterrupted.wait(timeout=300) == 0, uninterrupted.stdout.read()

    # Killed once after its first checkpoint, and once while an asynchronous save is being written (with at least
    # two finished checkpoints, so that the latest can be broken below). A kill can land just after the save it
    # saw finished: then the run is restarted and killed again, until one lands mid-save.
    killed = _start(config_file, b)
    _wait_for_checkpoint(killed, b)
    _kill(killed)
    killed_pids, landed_mid_save = [killed.pid], False
    for _ in range(4):
        killed = _start(config_file, b)
        _wait_until(killed, lambda: _saving_after_two(b), "a save under way")
        _kill(killed)
        killed_pids.append(killed.pid)
        if _steps(b)[1]:
            landed_mid_save = True
            break
    assert landed_mid_save, "no kill landed while a save was being written"
    assert not (b / "final_metrics.json").exists(), "the run finished before it was killed"

    # The latest finished checkpoint, broken: the restart takes the one before. The file cut short is the state's
    # merged OCDBT B-tree, which holds this small model's values inline (the per-process files are not read).
    *_, previous, latest = _steps(b)[0]
    (tree,) = (b / "checkpoints" / str(latest) / "state" / "d").iterdir()
    tree.write_bytes(tree.read_bytes()[: tree.stat().st_size // 2])
    restarted = _start(config_file, b)
    output = restarted.communicate(timeout=300)[0]
    assert restarted.returncode == 0, output
    assert f"(pid {killed_pids[-1]}, host {socket.gethostname()}, started " in output  # the dead run's lock taken over
    assert re.search(
        rf"UnreadableCheckpointWarning: checkpoint {b / 'checkpoints' / str(latest)} cannot be restored \(its 'state' "
        rf"item: .*OUT_OF_RANGE.*\); restored step {previous} instead, and moved the unreadable one to "
        rf"{b / 'checkpoints_rejected' / str(latest)}\n",
        output,
    ), output
    assert f"resumed from {b / 'checkpoints' / str(previous)}" in output
    assert _steps(b) == ([35, 40], False)  # the unfinished save's temporary directory is gone too
    expected, got = _final_params(a), _final_params(b)
    for x, y in zip(jax.tree_util.tree_leaves(expected), jax.tree_util.tree_leaves(got), strict=True):
        np.testing.assert_array_equal(x, y)

    # The uninterrupted run's checkpoint, written from 4 devices, resumed on 2 (the same global batch).
    resharded = _start(config_file, a, "--config.num_devices=2", "--config.total_steps=45", devices=2)
    output = resharded.communicate(timeout=300)[0]
    assert resharded.returncode == 0, output
    assert f"resumed from {a / 'checkpoints' / '40'}" in output
    assert "2 cpu device(s), global batch 16 (8 per device)" in output
    assert _steps(a) == ([40, 45], False)


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(config_file, tmp_path):
    process = _start(config_file, tmp_path)
    _wait_for_checkpoint(process, tmp_path)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 0, output
    saved = [line for line in output.splitlines() if line.startswith("SIGTERM: saved step")]
    assert saved, output
    step = saved[0].split()[3].rstrip(",")
    assert (tmp_path / "checkpoints" / step).is_dir()


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _losses(workdir):
    import json

    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in records if "train/loss" in r]


def test_two_processes_with_fsdp_give_the_losses_of_one_with_the_same_global_batch(config_file, tmp_path):
    # The two hosts shard parameters and optimizer state over all four devices (each host writes its shards to
    # the checkpoint); the single process keeps them replicated.
    overrides = ["--config.total_steps=6", "--config.log_every=1", "--config.checkpoint_every=0"]

    def launch(workdir, devices, extra=()):
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
        command = [sys.executable, "-m", "jtl.train", "--config", str(config_file), "--workdir", str(workdir)]
        return subprocess.Popen(
            [*command, *overrides, *extra],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    single = launch(tmp_path / "one", 4)
    assert single.wait(timeout=300) == 0, single.stdout.read()
    port = _free_port()
    fsdp = ["--config.sharding.fsdp=True", "--config.sharding.min_size=0", "--config.checkpoint_every=3"]
    hosts = [
        launch(
            tmp_path / "two",
            2,
            ["--coordinator", f"localhost:{port}", "--num_processes", "2", "--process_id", str(i), *fsdp],
        )
        for i in range(2)
    ]
    outputs = [h.communicate(timeout=300)[0] for h in hosts]
    assert all(h.returncode == 0 for h in hosts), outputs
    assert "4 cpu device(s), global batch 16 (4 per device)" in outputs[0]
    assert "parameters sharded over a mesh of data 4 x model 1" in outputs[0]
    np.testing.assert_allclose(_losses(tmp_path / "two"), _losses(tmp_path / "one"), rtol=1e-5, atol=1e-6)
    assert (tmp_path / "two" / "final_metrics.json").exists()
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == ["3", "6"]
