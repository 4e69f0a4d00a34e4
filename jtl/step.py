"""One train step and one eval step for every objective (:mod:`jtl.objectives`).

The optimizer sees one tree, ``{"model": params, "objective": objective_params}``: the model's own parameters
under the user's trainable rules, and the objective's (a domain discriminator, task heads, loss weights), which
always train. Masking rules are resolved on the model's params alone, so ``head/.*`` means the model's head.
The step differentiates only the trainable leaves (``jtl.masking.value_and_grad``), accumulates micro-batches,
averages over devices when it runs under ``pmap`` (``axis_name``), lets the objective turn its loss and
gradients into one update (PCGrad, GradNorm, ...), and applies it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

import jtl.masking as jm
from jtl.features import features_and_logits
from jtl.objectives import Classification

MODEL = "model"
OBJECTIVE = "objective"


class TrainState(NamedTuple):
    """Everything a step updates; checkpointed whole.

    Attributes:
      step: steps done.
      params: the model's params.
      batch_stats: the model's BatchNorm statistics (``{}`` without BatchNorm).
      opt_state: the optimizer's state over :func:`trained`'s tree.
      rng: the key the next step splits.
      objective_params: the objective's own trained params (discriminator, heads, loss weights).
      objective_state: the objective's non-trained state (DWA's running means, GradNorm's weights).
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array
    objective_params: Any = {}  # noqa: RUF012 (a NamedTuple default, never mutated)
    objective_state: Any = ()


def trained(params: Any, objective_params: Any) -> dict:
    """The tree the optimizer updates: ``{"model": params, "objective": objective_params}``.

    Args:
      params: the model's params.
      objective_params: the objective's params.

    Returns:
      The combined tree.

    >>> sorted(trained({"head": 1}, {}))
    ['model', 'objective']
    """
    return {MODEL: params, OBJECTIVE: objective_params}


def everything(tree: Any) -> Any:
    """The trainable spec under which every leaf trains.

    Args:
      tree: a pytree.

    Returns:
      A tree of ``True``.

    >>> everything({"a": 1, "b": {"c": 2}})
    {'a': True, 'b': {'c': True}}
    """
    return jax.tree_util.tree_map(lambda _: True, tree)


def trained_mask(trainable: Any) -> Callable[[dict], dict]:
    """The trainable spec over :func:`trained`'s tree: ``trainable`` resolved on the model's params, every
    objective parameter trainable.

    Args:
      trainable: what of the model trains (regexes on leaf names, a callable, or a boolean tree).

    Returns:
      ``tree -> boolean tree``, for ``jtl.masking.freeze`` and ``jtl.masking.value_and_grad``.

    >>> trained_mask(["head/.*"])(trained({"head": {"kernel": 0}, "embed": {"kernel": 0}}, {"d": 0}))
    {'model': {'embed': {'kernel': False}, 'head': {'kernel': True}}, 'objective': {'d': True}}
    """

    def mask(tree: dict) -> dict:
        return {MODEL: jm.resolve_mask(trainable, tree[MODEL]), OBJECTIVE: everything(tree[OBJECTIVE])}

    return mask


def freeze(tx: optax.GradientTransformation, trainable: Any) -> optax.GradientTransformation:
    """``jtl.masking.freeze`` over :func:`trained`'s tree: the model's frozen leaves get zero updates and no
    optimizer state; the objective's params train.

    Args:
      tx: the optimizer.
      trainable: what of the model trains.

    Returns:
      The wrapped optimizer.

    >>> tx = freeze(optax.sgd(1.0), ["head"])
    >>> tree = trained({"head": jnp.ones(1), "embed": jnp.ones(1)}, {})
    >>> updates, _ = tx.update(jax.tree.map(jnp.ones_like, tree), tx.init(tree), tree)
    >>> updates["model"]["embed"].tolist(), updates["model"]["head"].tolist()
    ([0.0], [-1.0])
    """
    return jm.freeze(tx, trainable=trained_mask(trainable))


def on_model(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """Applies ``tx`` to the model's part of :func:`trained`'s tree only (name-based rules such as learning-rate
    multipliers and layer-wise decay, L2-SP's anchor); the objective's part passes unchanged.

    Args:
      tx: a transformation over the model's params.

    Returns:
      A transformation over the combined tree.

    >>> tx = on_model(optax.scale(2.0))
    >>> tree = trained({"a": jnp.ones(1)}, {"b": jnp.ones(1)})
    >>> updates, _ = tx.update(tree, tx.init(tree))
    >>> updates["model"]["a"].tolist(), updates["objective"]["b"].tolist()
    ([2.0], [1.0])
    """

    def init(params: dict) -> Any:
        return tx.init(params[MODEL])

    def update(updates: dict, state: Any, params: dict | None = None) -> tuple[dict, Any]:
        model_updates, state = tx.update(updates[MODEL], state, None if params is None else params[MODEL])
        return {**updates, MODEL: model_updates}, state

    return optax.GradientTransformation(init, update)


def _variables(params: Any, batch_stats: Any) -> dict:
    return {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}


class Forward(NamedTuple):
    """The model as an objective calls it inside a step: its variables, training mode, dropout key, and
    whether BatchNorm statistics update. Each call returns the outputs and the (updated) statistics.

    >>> from jtl import models
    >>> model = models.create("vit-testing", num_classes=2, image_size=8, patch_size=4, num_channels=1)
    >>> logits, stats = Forward(model, models.init(model))(*model.example_inputs())
    >>> logits.shape, stats
    ((1, 2), {})
    """

    model: nn.Module
    variables: dict
    train: bool = False
    rng: jax.Array | None = None
    update_stats: bool = False

    def _kwargs(self) -> dict:
        kwargs: dict[str, Any] = {"train": self.train}
        if self.rng is not None:
            kwargs["rngs"] = {"dropout": self.rng}
        if self.update_stats:
            kwargs["mutable"] = ["batch_stats"]
        return kwargs

    @property
    def batch_stats(self) -> Any:
        return self.variables.get("batch_stats", {})

    def __call__(self, *inputs: jax.Array) -> tuple[jax.Array, Any]:
        """The model's output (logits, or features when it has no head) and the statistics."""
        out = self.model.apply(self.variables, *inputs, **self._kwargs())
        return (out[0], out[1]["batch_stats"]) if self.update_stats else (out, self.batch_stats)

    def features_and_logits(self, *inputs: jax.Array) -> tuple[jax.Array, jax.Array, Any]:
        """The pooled features and the head's logits from one pass, and the statistics."""
        features, logits, updates = features_and_logits(self.model, self.variables, *inputs, **self._kwargs())
        return features, logits, updates.get("batch_stats", self.batch_stats)


def _per_loss_value_and_grad(loss_of: Callable, trainable: Any) -> Callable:
    """Like ``jtl.masking.value_and_grad`` for a vector of losses: one gradient per loss (a leading axis on
    every leaf, ``jax.jacrev``), over the trainable leaves only."""

    def value_and_grad(tree: Any, *args: Any) -> tuple:
        mask = jm.trainable_mask(tree, trainable=trainable)
        mask = jax.tree_util.tree_map(lambda m, x: m and jnp.issubdtype(x.dtype, jnp.inexact), mask, tree)
        trainable_part, frozen_part = jm.split(tree, mask)

        def of_trainable(part: Any) -> tuple:
            losses, aux = loss_of(jm.merge(part, frozen_part), *args)
            return losses, (losses, aux)

        grads, (losses, aux) = jax.jacrev(of_trainable, has_aux=True)(trainable_part)
        count = losses.shape[0]
        zeros = jax.tree_util.tree_map(lambda x: jnp.zeros((count, *x.shape), x.dtype), frozen_part)
        return (losses, aux), jm.merge(grads, zeros)

    return value_and_grad


def make_train_step(
    model: nn.Module,
    objective: Any,
    tx: optax.GradientTransformation,
    trainable: Any = everything,
    *,
    accum_steps: int = 1,
    train_batch_stats: bool = True,
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """Builds the pure train step ``(state, batch, *, axis_name=None) -> (state, metrics)`` of any objective.

    Args:
      model: a jtl model.
      objective: a :class:`jtl.objectives.Objective` (its loss, and how its gradients combine).
      tx: the optimizer over :func:`trained`'s tree (e.g. :func:`freeze` of an optax optimizer).
      trainable: what of the model trains; frozen parameters get no gradient computed.
      accum_steps: gradient accumulation: the batch is split into this many micro-batches whose gradients
        are averaged before one update.
      train_batch_stats: update BatchNorm statistics; False keeps them fixed (and runs the model in inference
        mode), the right thing when the backbone is frozen.

    Returns:
      The step (not yet compiled). ``axis_name``: the ``pmap`` axis to average gradients and metrics over
      (:func:`jtl.parallel.compile_pmap` passes it; None under ``jit``).

    >>> import numpy as np
    >>> from jtl import models
    >>> model = models.create("vit-testing", num_classes=2, image_size=8, patch_size=4, num_channels=1)
    >>> tx = freeze(optax.sgd(0.1), ["head/.*"])
    >>> state = init_state(models.init(model), tx)
    >>> step = jax.jit(make_train_step(model, Classification(2), tx, ["head/.*"]))
    >>> batch = {"image": np.ones((4, 8, 8, 1), np.float32), "label": np.array([0, 1, 0, 1])}
    >>> new_state, metrics = step(state, batch)
    >>> patch = state.params["embed"]["patch"]["kernel"]  # frozen: bit-identical after the step
    >>> sorted(metrics), bool((new_state.params["embed"]["patch"]["kernel"] == patch).all())
    (['accuracy', 'grad_norm', 'loss'], True)
    """
    spec = trained_mask(trainable)

    def loss_of(tree: dict, batch_stats: Any, objective_state: Any, batch: dict, rng: jax.Array, step: jax.Array):
        update_stats = bool(batch_stats) and train_batch_stats
        forward = Forward(model, _variables(tree[MODEL], batch_stats), train_batch_stats, rng, update_stats)
        return objective.loss(forward, tree[OBJECTIVE], objective_state, batch, step)

    if objective.per_loss_gradients:
        grad_fn = _per_loss_value_and_grad(loss_of, spec)
    else:
        grad_fn = jm.value_and_grad(loss_of, spec, has_aux=True)

    def micro_batches(batch: dict) -> dict:
        return jax.tree_util.tree_map(lambda x: x.reshape(accum_steps, x.shape[0] // accum_steps, *x.shape[1:]), batch)

    def step(state: TrainState, batch: dict, *, axis_name: str | None = None) -> tuple[TrainState, dict]:
        rng, step_rng = jax.random.split(state.rng)
        batch, step_rng = objective.prepare(batch, step_rng)
        tree = trained(state.params, state.objective_params)
        args = (state.objective_state,)
        if accum_steps == 1:
            (loss, (batch_stats, metrics)), grads = grad_fn(tree, state.batch_stats, *args, batch, step_rng, state.step)
        else:

            def accumulate(carry: tuple, micro: tuple) -> tuple:
                grads_sum, stats, loss_sum, metrics_sum = carry
                micro_batch, micro_rng = micro
                (loss, (stats, metrics)), grads = grad_fn(tree, stats, *args, micro_batch, micro_rng, state.step)
                grads_sum = jax.tree_util.tree_map(jnp.add, grads_sum, grads)
                metrics_sum = jax.tree_util.tree_map(jnp.add, metrics_sum, metrics)
                return (grads_sum, stats, loss_sum + loss, metrics_sum), None

            first_micro = jax.tree_util.tree_map(lambda x: x[0], micro_batches(batch))
            shapes = jax.eval_shape(grad_fn, tree, state.batch_stats, *args, first_micro, step_rng, state.step)
            (loss_shape, (_, metric_shapes)), grad_shapes = shapes
            init = jax.tree_util.tree_map(
                lambda s: jnp.zeros(s.shape, s.dtype), (grad_shapes, loss_shape, metric_shapes)
            )
            init = (init[0], state.batch_stats, init[1], init[2])
            micro_rngs = jax.random.split(step_rng, accum_steps)
            (grads, batch_stats, loss, metrics), _ = jax.lax.scan(accumulate, init, (micro_batches(batch), micro_rngs))
            grads, loss, metrics = jax.tree_util.tree_map(lambda x: x / accum_steps, (grads, loss, metrics))
        if axis_name is not None:
            grads, loss, metrics = jax.lax.pmean((grads, loss, metrics), axis_name)
            batch_stats = jax.lax.pmean(batch_stats, axis_name)
        loss, grads, objective_state, metrics = objective.combine(
            loss, grads, metrics, tree, state.objective_state, state.step, step_rng
        )
        updates, opt_state = tx.update(grads, state.opt_state, tree)
        tree = optax.apply_updates(tree, updates)
        metrics = {"loss": loss, **metrics, "grad_norm": optax.tree.norm(grads)}
        new_state = TrainState(
            step=state.step + 1,
            params=tree[MODEL],
            batch_stats=batch_stats,
            opt_state=opt_state,
            rng=rng,
            objective_params=tree[OBJECTIVE],
            objective_state=objective_state,
        )
        return new_state, metrics

    return step


def make_eval_step(model: nn.Module, objective: Any) -> Callable[[TrainState, dict], dict[str, jax.Array]]:
    """Builds ``(state, batch) -> sums``: the objective's evaluation sums over the batch's ``mask``.

    Args:
      model: a jtl model.
      objective: a :class:`jtl.objectives.Objective`.

    Returns:
      The step (not yet compiled); padding rows (``mask`` False) count nowhere.

    >>> import numpy as np
    >>> from jtl import models
    >>> model = models.create("vit-testing", num_classes=2, image_size=8, patch_size=4, num_channels=1)
    >>> state = init_state(models.init(model), optax.sgd(0.1))
    >>> batch = {"image": np.zeros((3, 8, 8, 1), np.float32), "label": np.array([0, 1, 1]),
    ...          "mask": np.array([True, True, False])}
    >>> float(make_eval_step(model, Classification(2))(state, batch)["count"])
    2.0
    """

    def step(state: TrainState, batch: dict) -> dict[str, jax.Array]:
        forward = Forward(model, _variables(state.params, state.batch_stats))
        return objective.eval_sums(forward, state.objective_params, batch)

    return step


def make_predict_step(model: nn.Module, objective: Any) -> Callable[[TrainState, dict], dict[str, jax.Array]]:
    """Builds ``(state, batch) -> outputs``: the objective's per-example outputs (:meth:`Objective.predict`), for
    evaluations that cannot be sums (detection's mAP).

    Args:
      model: a jtl model.
      objective: a :class:`jtl.objectives.Objective` with a ``predict`` method.

    Returns:
      The step (not yet compiled).

    >>> from jtl import models
    >>> model = models.create("vit-testing", num_classes=2, image_size=8, patch_size=4, num_channels=1)
    >>> class Logits(Classification):
    ...     def predict(self, forward, params, batch):
    ...         return {"logits": forward(batch["image"])[0]}
    >>> state = init_state(models.init(model), optax.sgd(0.1))
    >>> make_predict_step(model, Logits(2))(state, {"image": jnp.zeros((3, 8, 8, 1))})["logits"].shape
    (3, 2)
    """

    def step(state: TrainState, batch: dict) -> dict[str, jax.Array]:
        forward = Forward(model, _variables(state.params, state.batch_stats))
        return objective.predict(forward, state.objective_params, batch)

    return step


def reestimate_batch_stats(
    model: nn.Module, variables: dict, batches: Iterable[dict], rng: jax.Array | None = None
) -> Any:
    """Recomputes BatchNorm statistics on new data (AdaBN, Li et al. 2016; "precise BN"): the average over
    ``batches`` of each batch's mean and variance, computed in training mode with the current weights.

    Args:
      model: a model with a ``bn_momentum`` field (jtl's ResNet).
      variables: its ``params`` and ``batch_stats``.
      batches: dicts with ``image`` (full batches; padding would bias the statistics).
      rng: for dropout, if the model has any.

    Returns:
      The new ``batch_stats``.

    >>> from jtl import models
    >>> model = models.create("resnet-testing", num_classes=2)
    >>> variables = models.init(model)
    >>> stats = reestimate_batch_stats(model, variables, [{"image": jnp.ones((4, 32, 32, 3))}])
    >>> sorted(stats) == sorted(variables["batch_stats"])
    True
    """
    if "bn_momentum" not in getattr(model, "__dataclass_fields__", {}):
        raise TypeError(f"{type(model).__name__} has no bn_momentum field: no BatchNorm statistics to re-estimate")
    # With momentum 0 a training-mode pass returns exactly this batch's statistics.
    probe = model.clone(bn_momentum=0.0)
    rng = jax.random.PRNGKey(0) if rng is None else rng

    @jax.jit
    def batch_statistics(variables: dict, images: jax.Array, rng: jax.Array) -> Any:
        _, updated = probe.apply(variables, images, train=True, mutable=["batch_stats"], rngs={"dropout": rng})
        return updated["batch_stats"]

    total, count = None, 0
    for i, batch in enumerate(batches):
        stats = batch_statistics(variables, jnp.asarray(batch["image"]), jax.random.fold_in(rng, i))
        total = stats if total is None else jax.tree_util.tree_map(jnp.add, total, stats)
        count += 1
    if not count:
        raise ValueError("reestimate_batch_stats got no batches")
    return jax.tree_util.tree_map(lambda s: s / count, total)


def init_state(
    variables: dict,
    tx: optax.GradientTransformation,
    *,
    objective_params: Any = None,
    objective_state: Any = (),
    seed: int = 0,
) -> TrainState:
    """The train state at step 0: the model's variables, the objective's params and state, and the optimizer's
    state over both.

    Args:
      variables: the model's variables (``{"params": ..., "batch_stats": ...}``).
      tx: the optimizer over :func:`trained`'s tree.
      objective_params: the objective's params (``{}`` if None).
      objective_state: the objective's state.
      seed: the seed of the steps' random keys (dropout, MixUp).

    Returns:
      The :class:`TrainState`.

    >>> from jtl import models
    >>> model = models.create("vit-testing", num_classes=2)
    >>> int(init_state(models.init(model), optax.sgd(0.1)).step)
    0
    """
    objective_params = {} if objective_params is None else objective_params
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(trained(params, objective_params)),
        rng=jax.random.PRNGKey(seed),
        objective_params=objective_params,
        objective_state=objective_state,
    )


class FineTuning(NamedTuple):
    """What :func:`fine_tune` returns: the state and the compiled steps that take it."""

    state: TrainState
    train: Callable[[TrainState, dict], tuple[TrainState, dict]]
    eval: Callable[[TrainState, dict], dict]

    def fit(self, batches: Iterable[dict]) -> tuple[FineTuning, list[dict]]:
        """Runs :attr:`train` over ``batches``; returns the new :class:`FineTuning` and each step's metrics."""
        state, history = self.state, []
        for batch in batches:
            state, metrics = self.train(state, batch)
            history.append({k: float(v) for k, v in metrics.items()})
        return self._replace(state=state), history

    def accuracy(self, batches: Iterable[dict]) -> float:
        """The fraction of correct predictions over ``batches`` (each with a ``mask``, as ``eval_batches``)."""
        correct = count = 0.0
        for batch in batches:
            sums = self.eval(self.state, batch)
            correct, count = correct + float(sums["correct"]), count + float(sums["count"])
        return correct / max(count, 1.0)


def fine_tune(
    model: nn.Module,
    variables: dict,
    optimizer: optax.GradientTransformation,
    *,
    trainable: Any = everything,
    objective: Any = None,
    seed: int = 0,
) -> FineTuning:
    """The short path from Python: a model and its (pretrained) variables in, a ready state and jitted steps
    out, the ``trainable`` rules given once.

    Args:
      model: a jtl model (e.g. from :func:`jtl.weights.load_pretrained` with ``num_classes``).
      variables: its variables.
      optimizer: any optax optimizer; frozen leaves get no update, no state and no gradient.
      trainable: what of the model trains (e.g. ``["head/.*"]``); everything by default.
      objective: a :class:`jtl.objectives.Objective`; default: classification over the model's classes.
      seed: the steps' random keys (and the objective's initialisation).

    Returns:
      :class:`FineTuning` ``(state, train, eval)``.

    >>> import itertools
    >>> from jtl import data, models
    >>> model = models.create("vit-digits", num_classes=3)
    >>> task = fine_tune(model, models.init(model), optax.adam(1e-2), trainable=["head/.*"])
    >>> digits = data.digits_task([0, 1, 2])
    >>> task, history = task.fit(itertools.islice(data.train_batches(digits["train"], 32, seed=0), 20))
    >>> 0.0 <= task.accuracy(data.eval_batches(digits["test"], 64)) <= 1.0
    True
    """
    objective = Classification(model.num_classes) if objective is None else objective
    objective_params, objective_state = objective.init(jax.random.PRNGKey(seed + 1), model, variables)
    tx = freeze(optimizer, trainable)
    state = init_state(variables, tx, objective_params=objective_params, objective_state=objective_state, seed=seed)
    train = jax.jit(make_train_step(model, objective, tx, trainable), donate_argnums=0)
    evaluate = jax.jit(make_eval_step(model, objective))
    return FineTuning(state, train, evaluate)


def interpolate_weights(start: Any, end: Any, alpha: float) -> Any:
    """WiSE-FT (Wortsman et al., 2022): ``(1 - alpha) * start + alpha * end`` leaf by leaf, in each leaf's dtype;
    between the zero-shot (or pretrained) weights and the fine-tuned ones, it often keeps the robustness of the
    first and most of the accuracy gain of the second.

    Args:
      start: the weights before fine-tuning (params or batch statistics), a pytree.
      end: the fine-tuned weights, the same tree.
      alpha: 0 gives ``start``, 1 gives ``end``.

    Returns:
      The interpolated tree.

    Raises:
      ValueError: the two trees differ in structure or in a leaf's shape.

    >>> interpolate_weights({"w": jnp.zeros(2)}, {"w": jnp.ones(2)}, 0.25)["w"]
    Array([0.25, 0.25], dtype=float32)
    """
    start_leaves, start_def = jax.tree_util.tree_flatten(start)
    end_leaves, end_def = jax.tree_util.tree_flatten(end)
    if start_def != end_def:
        raise ValueError(f"interpolate_weights: the trees differ in structure:\n{start_def}\n{end_def}")
    pairs = [(jnp.asarray(a), jnp.asarray(b)) for a, b in zip(start_leaves, end_leaves, strict=True)]
    differ = [(i, a.shape, b.shape) for i, (a, b) in enumerate(pairs) if a.shape != b.shape]
    if differ:
        raise ValueError(f"interpolate_weights: leaf shapes differ (leaf index, start, end): {differ}")
    mixed = [((1 - alpha) * a.astype(jnp.float32) + alpha * b.astype(jnp.float32)).astype(b.dtype) for a, b in pairs]
    return jax.tree_util.tree_unflatten(end_def, mixed)
