"""An objective defined in this file alone (regression of the digit's value with its own head) trains through the
unchanged trainer: registry, objective params in the checkpoint, resume, evaluation and the command line."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jtl import models, objectives
from jtl.train import train_and_evaluate
from tests.train.conftest import with_changes


class Regression(objectives.Objective):
    """Squared error of a linear head (the objective's own param) on the backbone's pooled features."""

    head_classes = 0  # the model returns features; the head is ours

    def __init__(self, data):
        self.data = data

    def load(self, load):
        self.primary = load(self.data)

    def train_stream(self, stream):
        return stream(self.primary["train"], self.primary["train_transform"], 0)

    def init(self, rng, model, variables):
        width = jax.eval_shape(lambda v: model.apply(v, *model.example_inputs()), variables).shape[-1]
        return {"kernel": 0.01 * jax.random.normal(rng, (width,)), "bias": jnp.zeros(())}, ()

    def _errors(self, forward, params, batch):
        features, batch_stats = forward(*models.model_inputs(batch))
        return features @ params["kernel"] + params["bias"] - batch["label"], batch_stats

    def loss(self, forward, params, state, batch, step):
        errors, batch_stats = self._errors(forward, params, batch)
        return jnp.mean(errors**2), (batch_stats, {})

    def eval_sums(self, forward, params, batch):
        errors, _ = self._errors(forward, params, batch)
        return {"squared_error": jnp.sum(jnp.where(batch["mask"], errors**2, 0.0)), "count": jnp.sum(batch["mask"])}

    def evaluate(self, sums, model, variables):
        totals = sums(self.primary["test"], self.primary["eval_transform"])
        return {"eval/mse": totals["squared_error"] / totals["count"]}


@pytest.fixture
def regression_config(tiny_config):
    objectives.register("regression", lambda config: Regression(config.data))
    yield with_changes(tiny_config, objective="regression", num_classes=0, **{"data.labels": "value"})
    objectives.unregister("regression")


def test_a_new_objective_trains_checkpoints_and_resumes_through_the_unchanged_trainer(
    regression_config, tmp_path, capsys
):
    config = with_changes(regression_config, total_steps=8, checkpoint_every=4, eval_every=8)
    uninterrupted = train_and_evaluate(config, tmp_path / "a")
    assert set(uninterrupted["objective_params"]) == {"kernel", "bias"}
    assert "kernel" not in uninterrupted["params"]  # the objective's head is not in the model's params
    assert np.isfinite(uninterrupted["eval/mse"]) and uninterrupted["eval/mse"] > 0

    # The same run stopped after its step-4 checkpoint: a copy of its workdir without what came later.
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "8")
    (tmp_path / "b" / "final_metrics.json").unlink()
    resumed = train_and_evaluate(config, tmp_path / "b")
    assert f"resumed from {tmp_path / 'b' / 'checkpoints' / '4'}" in capsys.readouterr().out
    for tree in ("params", "objective_params"):
        for a, b in zip(jax.tree_util.tree_leaves(uninterrupted[tree]), jax.tree_util.tree_leaves(resumed[tree]),
                        strict=True):  # fmt: skip
            np.testing.assert_array_equal(a, b)
    assert resumed["eval/mse"] == uninterrupted["eval/mse"]

    # Trained, it predicts the digit's value better than the mean of the training values.
    learned = train_and_evaluate(with_changes(regression_config, total_steps=200, checkpoint_every=0), tmp_path / "c")
    values = np.asarray(regression_config.data.classes, np.float32)
    assert learned["eval/mse"] < np.var(values)
