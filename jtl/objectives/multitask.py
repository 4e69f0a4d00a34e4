"""Multi-task learning on a shared backbone: one head per task (the objective's ``heads`` params), each task with
its own data, batch, loss and metrics, and a task weighting (equal, uncertainty, DWA, GradNorm, PCGrad; the pure
pieces are public here too: :func:`uncertainty_weighted_loss`, :func:`dwa_weights`, :func:`gradnorm_loss`,
:func:`pcgrad`).

GradNorm and PCGrad need each task's own gradient: the objective asks the step for one gradient per task loss
(``jax.jacrev``: one forward pass, one backward pass per task, batched by ``vmap``), over the trainable
parameters only. PCGrad projects the shared parameters' gradients and sums the heads' (each head has only its
own task's gradient). GradNorm's gradient norms ``G_i`` are taken over all the shared trainable parameters: the
paper uses the last shared layer to save a backward pass per task, which the Jacobian has already paid for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from jtl import data as jdata
from jtl import models
from jtl.config import ConfigError
from jtl.objectives._base import Load, Objective, Stream, Sums, check_unset
from jtl.objectives._weighting import dwa_weights, gradnorm_loss, pcgrad, uncertainty_weighted_loss

# The parts of the step's gradient tree (jtl.step.trained): the shared backbone's and the objective's own.
MODEL, OBJECTIVE = "model", "objective"

KINDS = ("classification", "regression")
WEIGHTINGS = ("equal", "uncertainty", "dwa", "gradnorm", "pcgrad")


class Task(NamedTuple):
    """One task: its name (the prefix of its batch keys, ``name/image``, ``name/label``), kind, classes and
    static loss weight."""

    name: str
    kind: str = "classification"
    num_classes: int = 10
    weight: float = 1.0

    @property
    def outputs(self) -> int:
        return self.num_classes if self.kind == "classification" else 1


class Weighting(NamedTuple):
    """How the task losses combine: ``method`` in ``WEIGHTINGS`` and its settings."""

    method: str = "equal"
    dwa_temperature: float = 2.0
    dwa_period: int = 50
    gradnorm_alpha: float = 1.5
    gradnorm_learning_rate: float = 0.025


EQUAL = Weighting()


def check(tasks: Sequence[Task], weighting: Weighting) -> None:
    """Checks the tasks and their weighting.

    Args:
      tasks: the tasks.
      weighting: how their losses combine.

    Returns:
      None.

    Raises:
      ValueError: naming the task or setting at fault.

    >>> check([Task("digit"), Task("size", "ordinal")], EQUAL)
    Traceback (most recent call last):
    ...
    ValueError: task 'size': kind='ordinal'; known: classification, regression
    """
    if not tasks:
        raise ValueError("multi-task learning needs at least one task")
    for task in tasks:
        if task.kind not in KINDS:
            raise ValueError(f"task {task.name!r}: kind={task.kind!r}; known: {', '.join(KINDS)}")
        if "/" in task.name:
            raise ValueError(f"task {task.name!r}: a task name cannot contain '/'")
    if weighting.method not in WEIGHTINGS:
        raise ValueError(f"weighting {weighting.method!r}; known: {', '.join(WEIGHTINGS)}")


def init_heads(tasks: Sequence[Task], feature_dim: int, rng: jax.Array) -> dict:
    """Each task's head, a Dense layer on the backbone's features: ``{name: {"kernel", "bias"}}``.

    Args:
      tasks: the tasks, in order.
      feature_dim: the backbone's feature width.
      rng: the initialisation key.

    Returns:
      The heads' params, one entry per task.

    >>> heads = init_heads([Task("a", num_classes=3), Task("b", "regression")], 4, jax.random.PRNGKey(0))
    >>> heads["a"]["kernel"].shape, heads["b"]["kernel"].shape
    ((4, 3), (4, 1))
    """
    keys = jax.random.split(rng, len(tasks))
    return {
        task.name: nn.Dense(task.outputs).init(key, jnp.zeros((1, feature_dim)))["params"]
        for task, key in zip(tasks, keys, strict=True)
    }


def init_loss_weights(tasks: Sequence[Task], weighting: Weighting) -> dict | None:
    """The learnable loss weights that train with the model (uncertainty weighting's log variances), or None.

    Args:
      tasks: the tasks, in order.
      weighting: the loss weighting.

    Returns:
      ``{"log_variance": (T,) zeros}`` for uncertainty weighting, else None.

    >>> init_loss_weights([Task("a"), Task("b")], Weighting("uncertainty"))["log_variance"].tolist()
    [0.0, 0.0]
    """
    if weighting.method != "uncertainty":
        return None
    return {"log_variance": jnp.zeros(len(tasks), jnp.float32)}


def init_state(tasks: Sequence[Task], weighting: Weighting) -> dict:
    """The weighting's own state, kept in ``TrainState.objective_state``: DWA's per-period mean losses,
    GradNorm's weights and first losses.

    Args:
      tasks: the tasks, in order.
      weighting: the loss weighting.

    Returns:
      ``{name: array}`` (empty for weightings without state).

    >>> sorted(init_state([Task("a"), Task("b")], Weighting("gradnorm")))
    ['initial_losses', 'weights']
    """
    count = len(tasks)
    if weighting.method == "dwa":
        # Separate arrays: the compiled step donates its input buffers, and one buffer cannot be donated twice.
        return {
            "running": jnp.zeros(count, jnp.float32),
            "steps": jnp.zeros((), jnp.int32),
            "previous": jnp.zeros(count, jnp.float32),
            "before": jnp.zeros(count, jnp.float32),
            "periods": jnp.zeros((), jnp.int32),
        }
    if weighting.method == "gradnorm":
        return {"weights": jnp.ones(count, jnp.float32), "initial_losses": jnp.ones(count, jnp.float32)}
    return {}


def task_batch(batch: dict, name: str) -> dict:
    """The part of a multi-task batch that belongs to task ``name`` (its ``name/`` keys, unprefixed).

    Args:
      batch: the multi-task batch, keys ``task/field``.
      name: the task.

    Returns:
      ``{field: value}`` for that task.

    >>> task_batch({"a/image": 1, "a/label": 2, "b/image": 3}, "a")
    {'image': 1, 'label': 2}
    """
    prefix = f"{name}/"
    return {key.removeprefix(prefix): value for key, value in batch.items() if key.startswith(prefix)}


def _head_outputs(task: Task, head_params: dict, features: jax.Array) -> jax.Array:
    outputs = nn.Dense(task.outputs).apply({"params": head_params}, features.astype(jnp.float32))
    return outputs if task.kind == "classification" else outputs[:, 0]


def _per_example(task: Task, outputs: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(loss, metric) per example: cross-entropy and correctness, or squared error twice."""
    if task.kind == "classification":
        losses = optax.softmax_cross_entropy_with_integer_labels(outputs, labels.astype(jnp.int32))
        return losses, (jnp.argmax(outputs, -1) == labels).astype(jnp.float32)
    squared = (outputs - labels.astype(jnp.float32)) ** 2
    return squared, squared


def metric_name(task: Task) -> str:
    """The task's evaluation metric.

    Args:
      task: the task.

    Returns:
      ``accuracy`` for classification, ``mse`` for regression.

    >>> metric_name(Task("value", "regression"))
    'mse'
    """
    return "accuracy" if task.kind == "classification" else "mse"


def _sum_over_tasks(tree: Any, weights: jax.Array) -> Any:
    return jax.tree_util.tree_map(lambda g: jnp.tensordot(weights.astype(g.dtype), g, axes=1), tree)


def _update_extra(extra: dict, weighting: Weighting, step: jax.Array, losses: jax.Array, task_grads: Any) -> dict:
    """The weighting's state after a step: DWA's running means, GradNorm's weights (one step on its objective,
    renormalised to sum to the number of tasks)."""
    count = losses.shape[0]
    losses = jax.lax.stop_gradient(losses)
    if weighting.method == "dwa":
        running, steps = extra["running"] + losses, extra["steps"] + 1
        period_done = steps >= weighting.dwa_period
        return {
            "running": jnp.where(period_done, 0.0, running),
            "steps": jnp.where(period_done, 0, steps),
            "previous": jnp.where(period_done, running / steps, extra["previous"]),
            "before": jnp.where(period_done, extra["previous"], extra["before"]),
            "periods": extra["periods"] + period_done.astype(jnp.int32),
        }
    if weighting.method == "gradnorm":
        initial = jnp.where(step == 0, losses, extra["initial_losses"])
        shared = task_grads[MODEL]
        squares = [jnp.sum(g.astype(jnp.float32) ** 2, axis=tuple(range(1, g.ndim))) for g in jax.tree.leaves(shared)]
        norms = jnp.sqrt(sum(squares))
        weight_grad = jax.grad(gradnorm_loss)(extra["weights"], norms, losses, initial, weighting.gradnorm_alpha)
        weights = jnp.maximum(extra["weights"] - weighting.gradnorm_learning_rate * weight_grad, 1e-3)
        return {"weights": weights * count / jnp.sum(weights), "initial_losses": initial}
    return extra


class MultiTask(Objective):
    """Several tasks on a shared backbone (a model with ``num_classes=0``), their losses combined by a weighting.

    All tasks' inputs go through the backbone as one batch (BatchNorm sees every task); each task's head gives
    its loss. A training batch holds ``name/image`` (or ``name/input_ids``...) and ``name/label`` per task. The
    step's metrics are ``loss`` (the combined loss), ``name/loss``, ``name/accuracy`` or ``name/mse`` and
    ``name/weight`` per task.

    Args:
      tasks: the tasks, in order.
      weighting: how their losses combine.
      data: ``{name: dataset config}``, what :meth:`load` reads.

    >>> from jtl import step
    >>> model = models.create("vit-testing", num_classes=0, image_size=8, patch_size=4, num_channels=1)
    >>> objective = MultiTask([Task("digit", num_classes=2), Task("value", "regression")], Weighting("pcgrad"))
    >>> params, state = objective.init(jax.random.PRNGKey(0), model, models.init(model))
    >>> tx = optax.sgd(0.1)
    >>> train_state = step.init_state(models.init(model), tx, objective_params=params, objective_state=state)
    >>> batch = {"digit/image": jnp.zeros((2, 8, 8, 1)), "digit/label": jnp.array([0, 1]),
    ...          "value/image": jnp.ones((2, 8, 8, 1)), "value/label": jnp.array([0.5, 2.0])}
    >>> train_state, metrics = jax.jit(step.make_train_step(model, objective, tx))(train_state, batch)
    >>> int(train_state.step), sorted(k for k in metrics if k.startswith("value/"))
    (1, ['value/loss', 'value/mse', 'value/weight'])
    """

    def __init__(self, tasks: Sequence[Task], weighting: Weighting = EQUAL, *, data: dict[str, Any] | None = None):
        check(tasks, weighting)
        self.tasks = list(tasks)
        self.weighting = weighting
        self.data = data
        self.per_loss_gradients = weighting.method in ("gradnorm", "pcgrad")
        self._static_weights = jnp.asarray([task.weight for task in tasks], jnp.float32)

    # --- host side --------------------------------------------------------------------------------------------------
    def load(self, load: Load) -> None:
        self.splits = {name: load(task_data) for name, task_data in self.data.items()}
        self.primary = next(iter(self.splits.values()))

    def train_stream(self, stream: Stream) -> Iterator[dict]:
        # Each task reads its own dataset; one batch of each per step.
        return jdata.ZippedBatches(
            {
                name: stream(split["train"], split["train_transform"], i)
                for i, (name, split) in enumerate(self.splits.items())
            }
        )

    def init(self, rng: jax.Array, model: Any, variables: dict) -> tuple[Any, Any]:
        width = jax.eval_shape(lambda v: model.apply(v, *model.example_inputs()), variables).shape[-1]
        params = {"heads": init_heads(self.tasks, width, rng)}
        loss_weights = init_loss_weights(self.tasks, self.weighting)
        if loss_weights is not None:
            params["loss_weights"] = loss_weights
        return params, init_state(self.tasks, self.weighting)

    # --- pure -------------------------------------------------------------------------------------------------------
    def _weights(self, state: Any) -> jax.Array:
        if self.weighting.method == "dwa":
            ready = state["periods"] >= 2
            dwa = dwa_weights(state["previous"], state["before"], self.weighting.dwa_temperature)
            return jnp.where(ready, dwa, jnp.ones(len(self.tasks)))
        if self.weighting.method == "gradnorm":
            return state["weights"]
        return self._static_weights

    def loss(self, forward: Any, params: Any, state: Any, batch: dict, step: jax.Array) -> tuple:
        del step
        parts = [models.model_inputs(task_batch(batch, task.name)) for task in self.tasks]
        inputs = tuple(jnp.concatenate(pieces) for pieces in zip(*parts, strict=True))
        features, batch_stats = forward(*inputs)
        losses, metrics, start = [], {}, 0
        for task, part in zip(self.tasks, parts, strict=True):
            size = part[0].shape[0]
            outputs = _head_outputs(task, params["heads"][task.name], features[start : start + size])
            start += size
            per_loss, per_metric = _per_example(task, outputs, batch[f"{task.name}/label"])
            losses.append(jnp.mean(per_loss))
            metrics[f"{task.name}/loss"] = losses[-1]
            metrics[f"{task.name}/{metric_name(task)}"] = jnp.mean(per_metric)
        losses = jnp.stack(losses)
        if self.per_loss_gradients:
            return losses, (batch_stats, metrics)
        if self.weighting.method == "uncertainty":
            total = uncertainty_weighted_loss(losses, params["loss_weights"]["log_variance"])
        else:
            total = jnp.sum(self._weights(state) * losses)
        return total, (batch_stats, metrics)

    def combine(
        self, loss: Any, grads: Any, metrics: dict, tree: dict, state: Any, step: jax.Array, rng: jax.Array
    ) -> tuple[jax.Array, Any, Any, dict]:
        count = len(self.tasks)
        weights = self._weights(state)
        task_grads = None
        if self.per_loss_gradients:
            task_grads, losses = grads, loss
            if self.weighting.method == "pcgrad":
                _, pcgrad_rng = jax.random.split(rng)
                grads = {
                    MODEL: pcgrad(task_grads[MODEL], pcgrad_rng),
                    OBJECTIVE: _sum_over_tasks(task_grads[OBJECTIVE], jnp.ones(count)),
                }
            else:
                grads = _sum_over_tasks(task_grads, weights)
            loss = jnp.sum(weights * losses)
        else:
            losses = jnp.stack([metrics[f"{task.name}/loss"] for task in self.tasks])
        state = _update_extra(state, self.weighting, step, losses, task_grads)
        if self.weighting.method == "uncertainty":
            weights = jnp.exp(-tree[OBJECTIVE]["loss_weights"]["log_variance"])
        metrics = {**metrics, **{f"{task.name}/weight": weights[i] for i, task in enumerate(self.tasks)}}
        return loss, grads, state, metrics

    def eval_sums(self, forward: Any, params: Any, batch: dict) -> dict[str, jax.Array]:
        """For each task with ``name/label`` in the batch, the sums of its loss and metric (``name/loss``,
        ``name/metric``) and ``name/count`` over the batch's ``mask``."""
        sums = {}
        mask = batch["mask"].astype(jnp.float32)
        for task in self.tasks:
            if f"{task.name}/label" not in batch:
                continue
            part = task_batch(batch, task.name)
            features, _ = forward(*models.model_inputs(part))
            outputs = _head_outputs(task, params["heads"][task.name], features)
            per_loss, per_metric = _per_example(task, outputs, part["label"])
            sums[f"{task.name}/loss"] = jnp.sum(per_loss * mask)
            sums[f"{task.name}/metric"] = jnp.sum(per_metric * mask)
            sums[f"{task.name}/count"] = jnp.sum(mask)
        return sums

    # --- host side: evaluation --------------------------------------------------------------------------------------
    def evaluate(self, sums: Sums, model: Any, variables: Callable[[], dict]) -> dict[str, float]:
        del model, variables
        metrics = {}
        for task in self.tasks:
            split = self.splits[task.name]

            def prefixed(batch: dict, name: str = task.name) -> dict:
                return {**{f"{name}/{k}": v for k, v in batch.items() if k != "mask"}, "mask": batch["mask"]}

            totals = sums(split["test"], split["eval_transform"], prefixed)
            count = totals[f"{task.name}/count"]
            metrics[f"eval/{task.name}/loss"] = totals[f"{task.name}/loss"] / count
            metrics[f"eval/{task.name}/{metric_name(task)}"] = totals[f"{task.name}/metric"] / count
        return metrics


def from_config(config: ml_collections.ConfigDict) -> MultiTask:
    """The multi-task objective of a config (``config.tasks``, ``config.multitask``).

    Args:
      config: the experiment config.

    Returns:
      The objective.

    >>> from jtl.config import base_config, task_config
    >>> config = base_config()
    >>> config.tasks = {"digit": task_config(), "value": task_config("regression")}
    >>> [task.name for task in from_config(config).tasks]
    ['digit', 'value']
    """
    if config.target.source:
        raise ConfigError("config.target (domain adaptation) and config.tasks (multi-task) cannot be combined")
    single_task = ("mixup_alpha", "hyperrule", "baseline.scratch", "transferability")
    check_unset(config, single_task, "single-task training only, not with config.tasks (multi-task)")
    tasks = [Task(name, t.kind, t.num_classes, t.weight) for name, t in config.tasks.items()]
    m = config.multitask
    weighting = Weighting(m.weighting, m.dwa_temperature, m.dwa_period, m.gradnorm_alpha, m.gradnorm_learning_rate)
    try:
        return MultiTask(tasks, weighting, data={name: task.data for name, task in config.tasks.items()})
    except ValueError as e:
        raise ConfigError(f"config.tasks / config.multitask: {e}") from e


__all__ = [
    "EQUAL",
    "KINDS",
    "WEIGHTINGS",
    "MultiTask",
    "Task",
    "Weighting",
    "check",
    "dwa_weights",
    "from_config",
    "gradnorm_loss",
    "init_heads",
    "init_loss_weights",
    "init_state",
    "metric_name",
    "pcgrad",
    "task_batch",
    "uncertainty_weighted_loss",
]
