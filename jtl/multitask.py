"""Multi-task learning on a shared backbone: one head per task (``params["heads"][name]``), each task with its
own batch, loss and metrics, and the task weightings of :mod:`jtl.methods` (equal, uncertainty, DWA, GradNorm,
PCGrad) inside one step that ``jit`` or ``pmap`` compiles like any other (:mod:`jtl.parallel`).

GradNorm and PCGrad need each task's own gradient: the step takes the Jacobian of the vector of task losses
(``jax.jacrev``: one forward pass, one backward pass per task, batched by ``vmap``), over the trainable
parameters only. PCGrad projects the shared parameters' gradients and sums the heads' (each head has only its
own task's gradient). GradNorm's gradient norms ``G_i`` are taken over all the shared trainable parameters: the
paper uses the last shared layer to save a backward pass per task, which the Jacobian has already paid for.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

import jtl.masking as jm
from jtl import methods, models
from jtl.parallel import HEADS, LOSS_WEIGHTS, TrainState, _variables

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


def init_extra(tasks: Sequence[Task], weighting: Weighting) -> dict:
    """The weighting's own state, kept in ``TrainState.extra``: DWA's per-period mean losses, GradNorm's weights
    and first losses.

    Args:
      tasks: the tasks, in order.
      weighting: the loss weighting.

    Returns:
      ``{name: array}`` (empty for weightings without state).

    >>> sorted(init_extra([Task("a"), Task("b")], Weighting("gradnorm")))
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


def _shared_and_heads(tree: dict) -> tuple[dict, dict]:
    heads = {k: v for k, v in tree.items() if k in (HEADS, LOSS_WEIGHTS)}
    return {k: v for k, v in tree.items() if k not in heads}, heads


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
        shared, _ = _shared_and_heads(task_grads)
        squares = [jnp.sum(g.astype(jnp.float32) ** 2, axis=tuple(range(1, g.ndim))) for g in jax.tree.leaves(shared)]
        norms = jnp.sqrt(sum(squares))
        weight_grad = jax.grad(methods.gradnorm_loss)(
            extra["weights"], norms, losses, initial, weighting.gradnorm_alpha
        )
        weights = jnp.maximum(extra["weights"] - weighting.gradnorm_learning_rate * weight_grad, 1e-3)
        return {"weights": weights * count / jnp.sum(weights), "initial_losses": initial}
    return extra


def make_train_step(
    model: nn.Module,
    tasks: Sequence[Task],
    tx: optax.GradientTransformation,
    trainable: Any,
    *,
    weighting: Weighting = EQUAL,
    train_batch_stats: bool = True,
    axis_name: str | None = None,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """Builds the pure multi-task step ``(state, batch) -> (state, metrics)``.

    All tasks' inputs go through the backbone as one batch (BatchNorm sees every task); each task's head
    gives its loss; the weighting combines them into one update.

    Args:
      model: the shared backbone (a jtl model with ``num_classes=0``).
      tasks: the tasks; ``batch`` holds ``name/image`` (or ``name/input_ids``...) and ``name/label`` for each.
      tx: the optimizer over the whole params tree (backbone, ``heads``, ``loss_weights``).
      trainable: what trains (a mask spec over the whole params tree).
      weighting: how the task losses combine.
      train_batch_stats: update BatchNorm statistics.
      axis_name: the pmap axis (None under jit).

    Returns:
      The step; its metrics are ``loss`` (the combined loss), ``name/loss``, ``name/accuracy`` or
      ``name/mse``, ``name/weight`` per task, and ``grad_norm``.

    >>> model = models.create("vit-testing", num_classes=0, image_size=8, patch_size=4, num_channels=1)
    >>> tasks = [Task("digit", num_classes=2), Task("value", "regression")]
    >>> params = {**models.init(model)["params"], "heads": init_heads(tasks, 16, jax.random.PRNGKey(0))}
    >>> tx = optax.sgd(0.1)
    >>> state = TrainState(jnp.zeros((), jnp.int32), params, {}, tx.init(params), jax.random.PRNGKey(0))
    >>> batch = {"digit/image": jnp.zeros((2, 8, 8, 1)), "digit/label": jnp.array([0, 1]),
    ...          "value/image": jnp.ones((2, 8, 8, 1)), "value/label": jnp.array([0.5, 2.0])}
    >>> everything = lambda tree: jax.tree.map(lambda _: True, tree)
    >>> step = jax.jit(make_train_step(model, tasks, tx, everything, weighting=Weighting("pcgrad")))
    >>> state, metrics = step(state, batch)
    >>> int(state.step), sorted(k for k in metrics if k.startswith("value/"))
    (1, ['value/loss', 'value/mse', 'value/weight'])
    """
    check(tasks, weighting)
    count = len(tasks)

    def task_losses(params: Any, batch_stats: Any, batch: dict, rng: jax.Array) -> tuple:
        parts = [models.model_inputs(task_batch(batch, task.name)) for task in tasks]
        inputs = tuple(jnp.concatenate(pieces) for pieces in zip(*parts, strict=True))
        update_stats = bool(batch_stats) and train_batch_stats
        out = model.apply(
            _variables({k: v for k, v in params.items() if k not in (HEADS, LOSS_WEIGHTS)}, batch_stats),
            *inputs,
            train=train_batch_stats,
            rngs={"dropout": rng},
            mutable=["batch_stats"] if update_stats else False,
        )
        features, new_stats = (out[0], out[1]["batch_stats"]) if update_stats else (out, batch_stats)
        losses, metrics, start = [], {}, 0
        for task, part in zip(tasks, parts, strict=True):
            size = part[0].shape[0]
            outputs = _head_outputs(task, params[HEADS][task.name], features[start : start + size])
            start += size
            per_loss, per_metric = _per_example(task, outputs, batch[f"{task.name}/label"])
            losses.append(jnp.mean(per_loss))
            metrics[f"{task.name}/loss"] = losses[-1]
            metrics[f"{task.name}/{metric_name(task)}"] = jnp.mean(per_metric)
        return jnp.stack(losses), (new_stats, metrics)

    static_weights = jnp.asarray([task.weight for task in tasks], jnp.float32)

    def scalar_loss(params: Any, batch_stats: Any, batch: dict, rng: jax.Array, weights: jax.Array) -> tuple:
        losses, (new_stats, metrics) = task_losses(params, batch_stats, batch, rng)
        if weighting.method == "uncertainty":
            total = methods.uncertainty_weighted_loss(losses, params[LOSS_WEIGHTS]["log_variance"])
        else:
            total = jnp.sum(weights * losses)
        return total, (losses, new_stats, metrics)

    scalar_grad = jm.value_and_grad(scalar_loss, trainable, has_aux=True)

    def jacobian(params: Any, batch_stats: Any, batch: dict, rng: jax.Array) -> tuple:
        """Per-task gradients (a leading task axis on every leaf), over the trainable leaves only."""
        mask = jm.trainable_mask(params, trainable=trainable)
        mask = jax.tree_util.tree_map(lambda m, x: m and jnp.issubdtype(x.dtype, jnp.inexact), mask, params)
        trainable_part, frozen_part = jm.split(params, mask)

        def of_trainable(part: Any) -> tuple:
            losses, aux = task_losses(jm.merge(part, frozen_part), batch_stats, batch, rng)
            return losses, (losses, aux)

        grads, (losses, (new_stats, metrics)) = jax.jacrev(of_trainable, has_aux=True)(trainable_part)
        zeros = jax.tree_util.tree_map(lambda x: jnp.zeros((count, *x.shape), x.dtype), frozen_part)
        return jm.merge(grads, zeros), losses, new_stats, metrics

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng, step_rng = jax.random.split(state.rng)
        extra = state.extra
        if weighting.method == "dwa":
            ready = extra["periods"] >= 2
            dwa = methods.dwa_weights(extra["previous"], extra["before"], weighting.dwa_temperature)
            weights = jnp.where(ready, dwa, jnp.ones(count))
        elif weighting.method == "gradnorm":
            weights = extra["weights"]
        else:
            weights = static_weights
        if weighting.method in ("gradnorm", "pcgrad"):
            task_grads, losses, batch_stats, metrics = jacobian(state.params, state.batch_stats, batch, step_rng)
            if axis_name is not None:
                task_grads = jax.lax.pmean(task_grads, axis_name)
            if weighting.method == "pcgrad":
                shared, heads = _shared_and_heads(task_grads)
                _, pcgrad_rng = jax.random.split(step_rng)
                grads = {**methods.pcgrad(shared, pcgrad_rng), **_sum_over_tasks(heads, jnp.ones(count))}
            else:
                grads = _sum_over_tasks(task_grads, weights)
            loss = jnp.sum(weights * losses)
        else:
            (loss, (losses, batch_stats, metrics)), grads = scalar_grad(
                state.params, state.batch_stats, batch, step_rng, weights
            )
            task_grads = None
        if axis_name is not None:
            grads, loss, losses, metrics = jax.lax.pmean((grads, loss, losses, metrics), axis_name)
            batch_stats = jax.lax.pmean(batch_stats, axis_name)
        extra = _update_extra(extra, weighting, state.step, losses, task_grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if weighting.method == "uncertainty":
            weights = jnp.exp(-state.params[LOSS_WEIGHTS]["log_variance"])
        metrics = {"loss": loss, **metrics, "grad_norm": optax.tree.norm(grads)}
        metrics.update({f"{task.name}/weight": weights[i] for i, task in enumerate(tasks)})
        new_state = state._replace(
            step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state, rng=rng, extra=extra
        )
        return new_state, metrics

    return step


def make_eval_step(model: nn.Module, tasks: Sequence[Task]) -> Callable[[TrainState, dict], dict]:
    """Builds ``(state, batch) -> sums``: for each task with ``name/label`` in the batch, the sums of its loss
    and metric (``name/loss``, ``name/metric``) and ``name/count`` over the batch's ``mask``.

    Args:
      model: the shared backbone.
      tasks: the tasks (a batch may hold any of them).

    Returns:
      The step (not yet compiled).

    >>> model = models.create("vit-testing", num_classes=0, image_size=8, patch_size=4, num_channels=1)
    >>> tasks = [Task("value", "regression")]
    >>> params = {**models.init(model)["params"], "heads": init_heads(tasks, 16, jax.random.PRNGKey(0))}
    >>> state = TrainState(jnp.zeros((), jnp.int32), params, {}, (), jax.random.PRNGKey(0))
    >>> batch = {"value/image": jnp.ones((3, 8, 8, 1)), "value/label": jnp.ones(3), "mask": jnp.array([1, 1, 0])}
    >>> float(make_eval_step(model, tasks)(state, batch)["value/count"])
    2.0
    """

    def step(state: TrainState, batch: dict) -> dict:
        sums = {}
        mask = batch["mask"].astype(jnp.float32)
        params = {k: v for k, v in state.params.items() if k not in (HEADS, LOSS_WEIGHTS)}
        for task in tasks:
            if f"{task.name}/label" not in batch:
                continue
            part = task_batch(batch, task.name)
            features = model.apply(_variables(params, state.batch_stats), *models.model_inputs(part))
            outputs = _head_outputs(task, state.params[HEADS][task.name], features)
            per_loss, per_metric = _per_example(task, outputs, part["label"])
            sums[f"{task.name}/loss"] = jnp.sum(per_loss * mask)
            sums[f"{task.name}/metric"] = jnp.sum(per_metric * mask)
            sums[f"{task.name}/count"] = jnp.sum(mask)
        return sums

    return step
