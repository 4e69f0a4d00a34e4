"""Domain adaptation through the trainer: a labelled source and an unlabelled target stream, every method from
the config, evaluation on the target with model selection that reads no target label, seeded repeatability and
exact resumption."""

import json
import shutil

import jax
import numpy as np
import pytest

from jtl import data
from jtl.config import ConfigError
from jtl.train import train_and_evaluate
from tests.train.conftest import with_changes


def test_every_method_trains_from_the_config_and_evaluates_on_the_target(da_config, tmp_path):
    target_test = data.digits_task((0, 1, 2), half=1)["test"]
    # MMD runs in the BatchNorm test below, DANN in the selection test; CORAL's wiring is MMD's.
    for method in ("none", "cdan", "mcc"):
        config = with_changes(da_config, eval_every=0, **{"adaptation.method": method, "adaptation.dev": False})
        result = train_and_evaluate(config, tmp_path / method)
        records = [json.loads(line) for line in (tmp_path / method / "metrics.jsonl").read_text().splitlines()]
        train = [r for r in records if "train/loss" in r]
        assert len(train) == 4 and all(np.isfinite(r["train/loss"]) for r in train)
        if method != "none":
            assert all(np.isfinite(r["train/transfer_loss"]) for r in train)
        assert ("discriminator" in result["objective_params"]) == (method == "cdan")
        # eval/ is the target's test split (its size is the accuracy's denominator), eval_source/ the source's.
        correct = result["eval/accuracy"] * len(target_test)
        assert correct == pytest.approx(round(correct), abs=1e-6)
        assert 0.0 <= result["eval_source/accuracy"] <= 1.0


def test_dann_learns_its_discriminator_and_selection_reads_no_target_label(da_config, tmp_path):
    result = train_and_evaluate(
        with_changes(da_config, total_steps=6, log_every=1, **{"adaptation.gamma": 10.0}), tmp_path
    )
    assert "discriminator" in result["objective_params"]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    reversal = [r["train/reversal"] for r in records if "train/reversal" in r]
    # dann_coefficient(step, 6): 0 at the first step, rising toward 1.
    expected = [2.0 / (1.0 + np.exp(-10.0 * s / 6)) - 1.0 for s in range(6)]
    np.testing.assert_allclose(reversal, expected, rtol=1e-5, atol=1e-7)
    assert all(0.0 <= r["train/domain_accuracy"] <= 1.0 for r in records if "train/domain_accuracy" in r)
    # Each rule picks among the evaluations at steps 2, 4 and 6 by its own criterion.
    evals = {r["step"]: r for r in records if "eval/accuracy" in r}
    assert sorted(evals) == [2, 4, 6] and all(np.isfinite(r["selection/dev_risk"]) for r in evals.values())
    best_source = max(evals.values(), key=lambda r: r["eval_source/accuracy"])
    assert result["selected/source_validation/step"] == best_source["step"]
    assert result["selected/source_validation/accuracy"] == best_source["eval/accuracy"]
    lowest_dev = min(evals.values(), key=lambda r: r["selection/dev_risk"])
    assert result["selected/dev/accuracy"] == lowest_dev["eval/accuracy"]
    assert result["selected/oracle/accuracy"] == max(r["eval/accuracy"] for r in evals.values())
    assert result["selected/last/accuracy"] == result["eval/accuracy"] == evals[6]["eval/accuracy"]


def test_the_same_seed_gives_the_same_run(da_config, tmp_path):
    a = train_and_evaluate(da_config, tmp_path / "a")
    b = train_and_evaluate(da_config, tmp_path / "b")
    for x, y in zip(jax.tree_util.tree_leaves(a["params"]), jax.tree_util.tree_leaves(b["params"]), strict=True):
        np.testing.assert_array_equal(x, y)
    assert a["eval/accuracy"] == b["eval/accuracy"] and a["selection/dev_risk"] == b["selection/dev_risk"]


def test_resume_equals_an_uninterrupted_run(da_config, tmp_path):
    config = with_changes(da_config, total_steps=6, eval_every=0, **{"adaptation.dev": False})
    uninterrupted = train_and_evaluate(config, tmp_path / "a")
    # The same run, killed after its step-3 checkpoint (its step-6 checkpoint never written), then restarted.
    train_and_evaluate(with_changes(config, checkpoint_every=3), tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "6")
    resumed = train_and_evaluate(with_changes(config, checkpoint_every=3), tmp_path / "b")
    for x, y in zip(
        jax.tree_util.tree_leaves(uninterrupted["params"]), jax.tree_util.tree_leaves(resumed["params"]), strict=True
    ):
        np.testing.assert_array_equal(x, y)


def test_the_target_stream_carries_no_labels():
    task = data.digits_task((0, 1), shots=4)
    zipped = data.ZippedBatches(
        {
            "source": data.train_batches(task["train"], 4, seed=0),
            "target": data.train_batches(data.Unlabelled(task["test"]), 4, seed=1),
        },
        unprefixed="source",
    )
    batch = next(zipped)
    assert sorted(batch) == ["image", "label", "target/image"]
    state = zipped.get_state()
    following = next(zipped)
    zipped.set_state(state)
    again = next(zipped)
    for key in following:
        np.testing.assert_array_equal(following[key], again[key])


def test_config_errors_name_the_field(da_config, tmp_path):
    with pytest.raises(ConfigError, match=r"adaptation.method='dann' needs an unlabelled target domain"):
        train_and_evaluate(with_changes(da_config, **{"target.source": ""}), tmp_path / "a")
    with pytest.raises(ConfigError, match=r"config.adaptation.method='adda'; known: none, dann"):
        train_and_evaluate(with_changes(da_config, **{"adaptation.method": "adda"}), tmp_path / "b")
    with pytest.raises(ConfigError, match=r"data.shift.*digits"):
        train_and_evaluate(with_changes(da_config, **{"target.source": "tfds", "target.name": "x"}), tmp_path / "c")


def test_a_batchnorm_model_adapts_and_its_statistics_train(da_config, tmp_path):
    # ResNet: source and target pass through BatchNorm together (one batch), and its running statistics update.
    config = with_changes(
        da_config,
        eval_every=0,
        **{
            "model.name": "resnet-testing",
            "model.overrides": {"image_size": 8, "num_channels": 1},
            "adaptation.method": "mmd",
            "adaptation.dev": False,
        },
    )
    start = train_and_evaluate(with_changes(config, total_steps=1), tmp_path / "one")
    result = train_and_evaluate(config, tmp_path / "four")
    assert not np.array_equal(
        jax.tree_util.tree_leaves(start["batch_stats"])[0], jax.tree_util.tree_leaves(result["batch_stats"])[0]
    )
    assert np.isfinite(result["eval/loss"]) and 0.0 <= result["eval/accuracy"] <= 1.0
