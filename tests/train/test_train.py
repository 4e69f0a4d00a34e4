import json
import shutil

import jax
import numpy as np
import pytest

import jtl.masking as jm
from jtl.train import train_and_evaluate
from tests.train.conftest import make_tiny_config, with_changes


def _losses(workdir):
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in records if "train/loss" in r]


def _run(config, workdir, **changes):
    return train_and_evaluate(with_changes(config, **changes), workdir)


# Runs that several tests check, trained once a module (per worker): (result, workdir).
@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("default")
    return _run(make_tiny_config(), workdir), workdir


@pytest.fixture(scope="module")
def eval_every_4_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("eval4")
    return _run(make_tiny_config(), workdir, eval_every=4), workdir


def test_one_device_jit_four_devices_and_pmap_give_the_same_losses(tiny_config, tmp_path, default_run):
    assert jax.device_count() == 4
    one = _run(tiny_config, tmp_path / "one", num_devices=1)
    four, four_dir = default_run
    pmapped = _run(tiny_config, tmp_path / "pmap", parallel="pmap")
    reference = _losses(tmp_path / "one")
    assert len(reference) == 8
    np.testing.assert_allclose(_losses(four_dir), reference, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_losses(tmp_path / "pmap"), reference, rtol=1e-5, atol=1e-6)
    for other in (four, pmapped):
        assert other["eval/accuracy"] == pytest.approx(one["eval/accuracy"], abs=1e-6)


def test_final_metrics_and_eval_cover_every_example(eval_every_4_run):
    result, tmp_path = eval_every_4_run
    written = json.loads((tmp_path / "final_metrics.json").read_text())
    assert written["eval/accuracy"] == result["eval/accuracy"]
    # 3 classes of ~180 digits minus 16 shots each: every test example is counted once (padding masked).
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "eval/accuracy" in r] == [4, 8]


def test_gradient_accumulation_matches_the_full_batch(tiny_config, tmp_path, default_run):
    _, full = default_run
    _run(tiny_config, tmp_path / "accum", accum_steps=4)
    np.testing.assert_allclose(_losses(tmp_path / "accum"), _losses(full), rtol=2e-5, atol=1e-6)


def test_frozen_backbone_stays_bit_identical_with_fixed_batch_stats(tiny_config, tmp_path):
    from jtl import models

    result = _run(
        tiny_config,
        tmp_path,
        **{
            "model.name": "resnet-testing",
            "model.overrides": {"image_size": 8, "num_channels": 1},
            "trainable": ("head/.*",),
        },
    )
    initial = models.init(models.create("resnet-testing", num_classes=3, image_size=8, num_channels=1), seed=0)
    for (name, before), (_, after) in zip(
        jm.named_leaves(initial["params"]), jm.named_leaves(result["params"]), strict=True
    ):
        assert name.startswith("head/") or np.array_equal(before, after), name
    # BatchNorm statistics stay fixed when the backbone is frozen (the classic Keras trap).
    for (name, before), (_, after) in zip(
        jm.named_leaves(initial["batch_stats"]), jm.named_leaves(result["batch_stats"]), strict=True
    ):
        assert np.array_equal(before, after), name


def test_resume_after_restart_equals_an_uninterrupted_run(tiny_config, tmp_path, default_run):
    uninterrupted, _ = default_run
    # The same run stopped after its step-4 checkpoint (what it wrote later removed), then restarted.
    _run(tiny_config, tmp_path / "b", total_steps=8, checkpoint_every=4)
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "8")
    (tmp_path / "b" / "final_metrics.json").unlink()
    resumed = _run(tiny_config, tmp_path / "b")
    for a, b in zip(
        jax.tree_util.tree_leaves(uninterrupted["params"]), jax.tree_util.tree_leaves(resumed["params"]), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def test_tensorboard_event_files_hold_the_logged_scalars(eval_every_4_run):
    import struct

    from tensorboardX.proto.event_pb2 import Event

    _, tmp_path = eval_every_4_run
    (events_file,) = (tmp_path / "tensorboard").glob("events.out.tfevents.*")
    data, scalars = events_file.read_bytes(), {}
    offset = 0
    while offset < len(data):  # TFRecord framing: length, crc, payload, crc
        (length,) = struct.unpack("<Q", data[offset : offset + 8])
        event = Event.FromString(data[offset + 12 : offset + 12 + length])
        offset += 12 + length + 4
        for value in event.summary.value:
            scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    assert [step for step, _ in scalars["train/loss"]] == list(range(1, 9))
    assert [step for step, _ in scalars["eval/accuracy"]] == [4, 8]
    assert [value for _, value in scalars["train/loss"]] == pytest.approx(_losses(tmp_path), rel=1e-6)


def test_bfloat16_compute_keeps_float32_params(tiny_config, tmp_path):
    overrides = {"image_size": 8, "patch_size": 4, "num_channels": 1, "dropout_rate": 0.0, "dtype": "bfloat16"}
    result = _run(tiny_config, tmp_path, **{"model.overrides": overrides})
    assert all(x.dtype == np.float32 for x in jax.tree_util.tree_leaves(result["params"]))
    losses = _losses(tmp_path)
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
