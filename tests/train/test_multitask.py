"""Multi-task learning: the step's weightings against their formulas (uncertainty's update, PCGrad's projected
update, GradNorm's weight step, DWA's weights), and the trainer's multi-task runs from a config."""

import json
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jtl import data, models, step
from jtl.config import ConfigError
from jtl.objectives import MultiTask, Task, Weighting, multitask
from jtl.train import train_and_evaluate
from tests.train.conftest import make_mt_config, make_tiny_config, with_changes

TASKS = [Task("digit", "classification", 3), Task("value", "regression", 1)]


@pytest.fixture(scope="module")
def setup():
    model = models.create("vit-testing", num_classes=0, image_size=8, patch_size=4, num_channels=1, dropout_rate=0.0)
    params = models.init(model)["params"]
    heads = {"heads": multitask.init_heads(TASKS, 16, jax.random.PRNGKey(1))}
    digits = data.digits_task((0, 1, 2), shots=8)["train"]
    values = data.digits_task((0, 1, 2), shots=8, labels="value", half=1)["train"]
    batch = {
        "digit/image": digits.images[:8],
        "digit/label": digits.labels[:8],
        "value/image": values.images[:8],
        "value/label": values.labels[:8],
    }
    return model, params, heads, batch


def _step(model, params, objective_params, weighting, learning_rate=1.0):
    """The state at step 0 and the compiled multi-task step (SGD, everything trainable)."""
    tx = optax.sgd(learning_rate)
    state = step.init_state(
        {"params": params},
        tx,
        objective_params=objective_params,
        objective_state=multitask.init_state(TASKS, weighting),
    )
    return state, jax.jit(step.make_train_step(model, MultiTask(TASKS, weighting), tx))


def _task_losses(model, tree, batch):
    """Each task's loss, written out directly, from ``{"model": params, "heads": heads}``."""
    losses = []
    for task in TASKS:
        features = model.apply({"params": tree["model"]}, batch[f"{task.name}/image"])
        out = nn.Dense(task.outputs).apply({"params": tree["heads"][task.name]}, features)
        labels = batch[f"{task.name}/label"]
        if task.kind == "classification":
            losses.append(optax.softmax_cross_entropy_with_integer_labels(out, labels).mean())
        else:
            losses.append(jnp.mean((out[:, 0] - labels) ** 2))
    return losses


def _flat(tree):
    return np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(tree)])


def test_uncertainty_weights_update_by_the_formula(setup):
    model, params, heads, batch = setup
    weighting = Weighting("uncertainty")
    objective_params = {**heads, "loss_weights": multitask.init_loss_weights(TASKS, weighting)}
    state, train = _step(model, params, objective_params, weighting)
    new_state, metrics = train(state, batch)
    losses = np.array([metrics["digit/loss"], metrics["value/loss"]])
    # d/ds [exp(-s) L + s] = 1 - exp(-s) L; at s = 0 one SGD step with rate 1 gives s = L - 1.
    np.testing.assert_allclose(new_state.objective_params["loss_weights"]["log_variance"], losses - 1.0, rtol=1e-5)
    expected = _task_losses(model, {"model": params, **heads}, batch)
    np.testing.assert_allclose(losses, [float(x) for x in expected], rtol=1e-5)


def test_pcgrad_update_is_the_projected_sum_of_the_task_gradients(setup):
    model, params, heads, batch = setup
    state, train = _step(model, params, heads, Weighting("pcgrad"))
    new_state, _ = train(state, batch)
    tree = {"model": params, **heads}
    grads = [jax.grad(lambda p, i=i: _task_losses(model, p, batch)[i])(tree) for i in range(2)]
    shared = [_flat(g["model"]) for g in grads]
    projected = []
    for i, j in ((0, 1), (1, 0)):
        g, other = shared[i].astype(np.float64), shared[j].astype(np.float64)
        dot = g @ other
        projected.append(g - dot / (other @ other) * other if dot < 0 else g)
    assert shared[0] @ shared[1] < 0, "this batch should make the two tasks' gradients conflict"
    new_shared, old_shared = _flat(new_state.params), _flat(params)
    np.testing.assert_allclose(old_shared - new_shared, projected[0] + projected[1], rtol=1e-3, atol=1e-6)
    for task, g in zip(TASKS, grads, strict=True):  # each head gets its own task's gradient
        np.testing.assert_allclose(
            _flat(heads["heads"][task.name]) - _flat(new_state.objective_params["heads"][task.name]),
            _flat(g["heads"][task.name]),
            rtol=1e-4,
            atol=1e-6,
        )


def test_gradnorm_steps_the_weights_by_its_objective(setup):
    model, params, heads, batch = setup
    state, train = _step(model, params, heads, Weighting("gradnorm", gradnorm_learning_rate=0.1))
    new_state, _ = train(state, batch)
    tree = {"model": params, **heads}
    grads = [jax.grad(lambda p, i=i: _task_losses(model, p, batch)[i])(tree) for i in range(2)]
    norms = np.array([np.linalg.norm(_flat(g["model"])) for g in grads])
    # Step 0: the losses are their own initial values, so every r_i is 1 and the target is mean(G) for both.
    weights = np.ones(2)
    gradient = np.sign(weights * norms - np.mean(weights * norms)) * norms
    expected = np.maximum(weights - 0.1 * gradient, 1e-3)
    expected = expected * 2 / expected.sum()
    np.testing.assert_allclose(new_state.objective_state["weights"], expected, rtol=1e-4)
    np.testing.assert_allclose(new_state.objective_state["initial_losses"], _task_losses(model, tree, batch), rtol=1e-5)


def test_dwa_weights_follow_the_last_two_periods(setup):
    model, params, heads, batch = setup
    state, train = _step(model, params, heads, Weighting("dwa", dwa_period=1, dwa_temperature=2.0), 0.01)
    history = []
    for _ in range(3):
        state, metrics = train(state, batch)
        history.append(metrics)
    for metrics in history[:2]:  # fewer than two periods seen: equal weights
        assert [float(metrics[f"{t.name}/weight"]) for t in TASKS] == [1.0, 1.0]
    first, second = (np.array([m[f"{t.name}/loss"] for t in TASKS]) for m in history[:2])
    ratios = second / first
    expected = 2 * np.exp(ratios / 2.0) / np.exp(ratios / 2.0).sum()
    np.testing.assert_allclose([history[2][f"{t.name}/weight"] for t in TASKS], expected, rtol=1e-5)


@pytest.fixture
def mt_config(tiny_config):
    return make_mt_config(tiny_config)


@pytest.fixture(scope="module")
def pcgrad_run(tmp_path_factory):
    """The PCGrad run from ``mt_config`` that two tests check, trained once a module (per worker): (result, workdir)."""
    workdir = tmp_path_factory.mktemp("pcgrad")
    config = with_changes(make_mt_config(make_tiny_config()), **{"multitask.weighting": "pcgrad"})
    return train_and_evaluate(config, workdir), workdir


def _losses(workdir):
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in records if "train/loss" in r]


def test_trainer_runs_the_tasks_from_the_config_with_per_task_metrics(mt_config, tmp_path, pcgrad_run):
    result, jit_dir = pcgrad_run
    heads = result["objective_params"]["heads"]
    assert {k: v["kernel"].shape for k, v in heads.items()} == {"digit": (16, 3), "value": (16, 1)}
    assert "head" not in result["params"]
    digit_test = data.digits_task((0, 1, 2), shots=16, half=0)["test"]
    assert result["eval/digit/accuracy"] * len(digit_test) == pytest.approx(
        round(result["eval/digit/accuracy"] * len(digit_test)), abs=1e-6
    )
    assert result["eval/value/mse"] > 0.0
    records = [json.loads(line) for line in (jit_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(f"train/{t}/loss" in records[0] for t in ("digit", "value"))
    # The Jacobian step is sharded like any other: pmap over 4 devices gives the jit losses.
    train_and_evaluate(with_changes(mt_config, parallel="pmap", **{"multitask.weighting": "pcgrad"}), tmp_path / "pmap")
    np.testing.assert_allclose(_losses(tmp_path / "pmap"), _losses(jit_dir), rtol=1e-5, atol=1e-6)


def test_gradient_accumulation_matches_the_full_batch_for_every_weighting(mt_config, tmp_path, pcgrad_run):
    for weighting in ("pcgrad", "uncertainty"):
        config = with_changes(mt_config, **{"multitask.weighting": weighting})
        if weighting == "pcgrad":
            full_dir = pcgrad_run[1]
        else:
            full_dir = tmp_path / f"{weighting}-full"
            train_and_evaluate(config, full_dir)
        train_and_evaluate(with_changes(config, accum_steps=4), tmp_path / f"{weighting}-accum")
        full, accum = _losses(full_dir), _losses(tmp_path / f"{weighting}-accum")
        np.testing.assert_allclose(accum, full, rtol=2e-5, atol=1e-6)


def test_resume_keeps_the_weighting_state(mt_config, tmp_path):
    config = with_changes(mt_config, total_steps=4, **{"multitask.weighting": "gradnorm"})
    uninterrupted = train_and_evaluate(config, tmp_path / "a")
    # Killed after its step-2 checkpoint (the step-4 one never written), then restarted in the same workdir.
    train_and_evaluate(with_changes(config, checkpoint_every=2), tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "4")
    resumed = train_and_evaluate(with_changes(config, checkpoint_every=2), tmp_path / "b")
    trained = ("params", "objective_params")
    for x, y in zip(
        jax.tree_util.tree_leaves([uninterrupted[k] for k in trained]),
        jax.tree_util.tree_leaves([resumed[k] for k in trained]),
        strict=True,
    ):
        np.testing.assert_array_equal(x, y)


def test_config_errors_name_the_field(mt_config, tmp_path):
    with pytest.raises(ConfigError, match=r"weighting 'mgda'; known: equal, uncertainty"):
        train_and_evaluate(with_changes(mt_config, **{"multitask.weighting": "mgda"}), tmp_path / "a")
    with pytest.raises(ConfigError, match=r"task 'value': kind='ranking'"):
        train_and_evaluate(with_changes(mt_config, **{"tasks.value.kind": "ranking"}), tmp_path / "b")
    with pytest.raises(ConfigError, match="cannot be combined"):
        train_and_evaluate(with_changes(mt_config, **{"target.source": "digits"}), tmp_path / "c")
