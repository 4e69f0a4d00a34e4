"""Train and eval steps, compiled with ``jax.jit`` over a data-parallel ``Mesh`` (the default) or with ``pmap``.

One pure step function serves both: jit shards the global batch over the mesh's ``data`` axis and lets XLA
insert the gradient all-reduce; pmap runs it per device and averages gradients and metrics with ``pmean``.
Frozen parameters get no gradient computed (``jtl.masking.value_and_grad``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import jtl.masking as jm
from jtl import models
from jtl.methods import AdaptationSpec, features_and_logits, mixup, transfer_loss

AXIS = "data"
# Top-level entries of the params that belong to the training objective rather than to the model: the domain
# discriminator, multi-task heads and learnable loss weights. The model ignores them; they always train.
DISCRIMINATOR = "domain_discriminator"
HEADS = "heads"
LOSS_WEIGHTS = "loss_weights"
AUXILIARY = (DISCRIMINATOR, HEADS, LOSS_WEIGHTS)
TARGET = "target/"


class TrainState(NamedTuple):
    """Everything a step updates; checkpointed whole (``extra``: state of the objective, e.g. multi-task loss
    weights)."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array
    extra: Any = ()


def target_part(batch: dict) -> dict:
    """The unlabelled target batch inside a domain-adaptation batch: its ``target/`` keys, unprefixed.

    Args:
      batch: the batch, source keys plus ``target/`` keys.

    Returns:
      ``{field: value}`` of the target domain.

    >>> sorted(target_part({"image": 0, "label": 0, "target/image": 1}))
    ['image']
    """
    return {key.removeprefix(TARGET): value for key, value in batch.items() if key.startswith(TARGET)}


def make_mesh(devices: list | None = None) -> Mesh:
    """A 1-D data-parallel mesh over all (or the given) devices, across hosts.

    Args:
      devices: the devices (default: every device of every host).

    Returns:
      A ``Mesh`` with one axis, ``"data"``.

    >>> dict(make_mesh(jax.devices()[:2]).shape)
    {'data': 2}
    """
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (AXIS,))


def _variables(params: Any, batch_stats: Any) -> dict:
    return {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}


def _loss_and_metrics(logits: jax.Array, batch: dict, num_classes: int, label_smoothing: float) -> tuple:
    labels = batch["label"]
    if "targets" in batch:  # soft targets, e.g. from MixUp
        targets = batch["targets"]
    else:
        targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
    loss = optax.softmax_cross_entropy(logits.astype(jnp.float32), targets).mean()
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    return loss, accuracy


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    trainable: Any,
    *,
    num_classes: int,
    label_smoothing: float = 0.0,
    accum_steps: int = 1,
    train_batch_stats: bool = True,
    mixup_alpha: float = 0.0,
    adaptation: AdaptationSpec | None = None,
    axis_name: str | None = None,
) -> Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]:
    """Builds the pure train step ``(state, batch) -> (state, metrics)``.

    Args:
      model: a jtl model taking ``batch["image"]`` (or ``batch["input_ids"]``/``attention_mask``).
      tx: the optimizer (already wrapped by :func:`jtl.masking.freeze` where parameters are frozen).
      trainable: what trains; frozen parameters get no gradient computed.
      num_classes: for the one-hot targets.
      label_smoothing: as in ``optax.smooth_labels``.
      accum_steps: gradient accumulation: the batch is split into this many micro-batches whose gradients
        are averaged before one update.
      train_batch_stats: update BatchNorm statistics; False keeps them fixed (and runs BatchNorm in inference
        mode), the right thing when the backbone is frozen.
      mixup_alpha: > 0: MixUp with this Beta parameter (image batches).
      adaptation: domain adaptation: the batch also holds an unlabelled target batch under ``target/`` keys,
        and the method's :func:`jtl.methods.transfer_loss` is added (the discriminator's params, if any, are
        ``params["domain_discriminator"]``).
      axis_name: the pmap axis to average gradients and metrics over (None under jit).

    Returns:
      The step function (not yet compiled).

    >>> model = models.create("vit-testing", num_classes=2, image_size=8, patch_size=4, num_channels=1)
    >>> params = models.init(model)["params"]
    >>> tx = jm.freeze(optax.sgd(0.1), trainable=["head/.*"])
    >>> state = TrainState(jnp.zeros((), jnp.int32), params, {}, tx.init(params), jax.random.PRNGKey(0))
    >>> step = jax.jit(make_train_step(model, tx, ["head/.*"], num_classes=2))
    >>> batch = {"image": np.ones((4, 8, 8, 1), np.float32), "label": np.array([0, 1, 0, 1])}
    >>> new_state, metrics = step(state, batch)
    >>> patch = params["embed"]["patch"]["kernel"]  # frozen: bit-identical after the step
    >>> sorted(metrics), bool((new_state.params["embed"]["patch"]["kernel"] == patch).all())
    (['accuracy', 'grad_norm', 'loss'], True)
    """

    def forward(params: Any, batch_stats: Any, batch: dict, rng: jax.Array, step: jax.Array) -> tuple:
        update_stats = bool(batch_stats) and train_batch_stats
        apply_kwargs = {
            "train": train_batch_stats,
            "rngs": {"dropout": rng},
            "mutable": ["batch_stats"] if update_stats else False,
        }
        variables = _variables(params, batch_stats)
        metrics = {}
        if adaptation is None:
            out = model.apply(variables, *models.model_inputs(batch), **apply_kwargs)
            logits, new_stats = (out[0], out[1]["batch_stats"]) if update_stats else (out, batch_stats)
            transfer = 0.0
        else:
            # Source and target go through the model together, as one batch (BatchNorm sees both domains).
            inputs = models.model_inputs(batch)
            if adaptation.method != "none":
                target = models.model_inputs(target_part(batch))
                inputs = tuple(jnp.concatenate(pair) for pair in zip(inputs, target, strict=True))
            features, all_logits, updates = features_and_logits(model, variables, *inputs, **apply_kwargs)
            new_stats = updates.get("batch_stats", batch_stats)
            n = batch["label"].shape[0]
            logits = all_logits[:n]
            transfer, metrics = transfer_loss(
                adaptation,
                params.get(DISCRIMINATOR),
                features[:n],
                features[n:],
                logits,
                all_logits[n:],
                step,
            )
        loss, accuracy = _loss_and_metrics(logits, batch, num_classes, label_smoothing)
        if adaptation is not None:
            metrics["classification_loss"] = loss
        return loss + transfer, (new_stats, {"accuracy": accuracy, **metrics})

    grad_fn = jm.value_and_grad(forward, trainable, has_aux=True)

    def micro_batches(batch: dict) -> dict:
        return jax.tree_util.tree_map(lambda x: x.reshape(accum_steps, x.shape[0] // accum_steps, *x.shape[1:]), batch)

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng, step_rng = jax.random.split(state.rng)
        if mixup_alpha > 0:
            step_rng, mix_rng = jax.random.split(step_rng)
            batch = mixup(batch, mix_rng, mixup_alpha, num_classes)
        if accum_steps == 1:
            (loss, (batch_stats, metrics)), grads = grad_fn(
                state.params, state.batch_stats, batch, step_rng, state.step
            )
        else:

            def accumulate(carry: tuple, micro: tuple) -> tuple:
                grads_sum, stats, loss_sum, metrics_sum = carry
                micro_batch, micro_rng = micro
                (loss, (stats, metrics)), grads = grad_fn(state.params, stats, micro_batch, micro_rng, state.step)
                grads_sum = jax.tree_util.tree_map(jnp.add, grads_sum, grads)
                metrics_sum = jax.tree_util.tree_map(jnp.add, metrics_sum, metrics)
                return (grads_sum, stats, loss_sum + loss, metrics_sum), None

            zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)
            first_micro = jax.tree_util.tree_map(lambda x: x[0], micro_batches(batch))
            metric_shapes = jax.eval_shape(grad_fn, state.params, state.batch_stats, first_micro, step_rng, state.step)
            metric_zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), metric_shapes[0][1][1])
            init = (zeros, state.batch_stats, jnp.zeros(()), metric_zeros)
            micro_rngs = jax.random.split(step_rng, accum_steps)
            (grads, batch_stats, loss, metrics), _ = jax.lax.scan(accumulate, init, (micro_batches(batch), micro_rngs))
            grads, loss, metrics = jax.tree_util.tree_map(lambda x: x / accum_steps, (grads, loss, metrics))
        if axis_name is not None:
            grads, loss, metrics = jax.lax.pmean((grads, loss, metrics), axis_name)
            batch_stats = jax.lax.pmean(batch_stats, axis_name)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, **metrics, "grad_norm": optax.tree.norm(grads)}
        return state._replace(
            step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state, rng=rng
        ), metrics

    return step


def make_eval_step(model: nn.Module, num_classes: int) -> Callable[[TrainState, dict], dict[str, jax.Array]]:
    """Builds ``(state, batch) -> sums`` of loss, correct predictions and examples over the batch's ``mask``.

    Args:
      model: a jtl model.
      num_classes: its classes.

    Returns:
      The step (not yet compiled); padding rows (``mask`` False) count nowhere.

    >>> model = models.create("vit-testing", num_classes=2, image_size=8, patch_size=4, num_channels=1)
    >>> state = TrainState(jnp.zeros((), jnp.int32), models.init(model)["params"], {}, (), jax.random.PRNGKey(0))
    >>> batch = {"image": np.zeros((3, 8, 8, 1), np.float32), "label": np.array([0, 1, 1]),
    ...          "mask": np.array([True, True, False])}
    >>> float(make_eval_step(model, 2)(state, batch)["count"])
    2.0
    """

    def step(state: TrainState, batch: dict) -> dict[str, jax.Array]:
        logits = model.apply(_variables(state.params, state.batch_stats), *models.model_inputs(batch)).astype(
            jnp.float32
        )
        mask = batch["mask"].astype(jnp.float32)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
        return {"loss": jnp.sum(losses * mask), "correct": jnp.sum(correct * mask), "count": jnp.sum(mask)}

    return step


class Compiled(NamedTuple):
    """A compiled train/eval pair and how to move state and batches to its devices."""

    train: Callable[[TrainState, Any], tuple[TrainState, dict]]
    eval: Callable[[TrainState, Any], dict]
    put_state: Callable[[TrainState], TrainState]
    get_state: Callable[[TrainState], TrainState]
    put_batch: Callable[[dict], Any]
    num_devices: int

    def put_global_batch(self, batch: dict) -> Any:
        """Places a batch that every host holds whole (eval): each host contributes its rows."""
        count, index = jax.process_count(), jax.process_index()
        rows = len(next(iter(batch.values()))) // count
        return self.put_batch({k: v[index * rows : (index + 1) * rows] for k, v in batch.items()})


def compile_jit(train_step: Callable, eval_step: Callable, mesh: Mesh) -> Compiled:
    """Data parallelism with ``jax.jit`` over ``mesh``: state replicated, batches split on the data axis.

    Batches are host-local; ``put_batch`` assembles the global batch from every host's part.

    Args:
      train_step: ``(state, batch) -> (state, metrics)``, e.g. from :func:`make_train_step`.
      eval_step: ``(state, batch) -> sums``, e.g. from :func:`make_eval_step`.
      mesh: the device mesh (:func:`make_mesh`).

    Returns:
      The compiled pair and the placement helpers.

    >>> compiled = compile_jit(lambda s, b: (s, {}), lambda s, b: {"n": b["x"].sum()}, make_mesh())
    >>> float(compiled.eval({}, compiled.put_batch({"x": np.ones(8)}))["n"]), compiled.num_devices
    (8.0, 4)
    """
    replicated = NamedSharding(mesh, PartitionSpec())
    sharded = NamedSharding(mesh, PartitionSpec(AXIS))
    train = jax.jit(
        train_step, in_shardings=(replicated, sharded), out_shardings=(replicated, replicated), donate_argnums=0
    )
    evaluate = jax.jit(eval_step, in_shardings=(replicated, sharded), out_shardings=replicated)

    def put_batch(batch: dict) -> dict:
        return jax.tree_util.tree_map(lambda x: jax.make_array_from_process_local_data(sharded, np.asarray(x)), batch)

    def put_state(state: TrainState) -> TrainState:
        return jax.tree_util.tree_map(lambda x: jax.device_put(x, replicated), state)

    return Compiled(train, evaluate, put_state, lambda state: state, put_batch, mesh.size)


def compile_pmap(train_step_fn: Callable[[str], Callable], eval_step: Callable) -> Compiled:
    """The classic path: ``pmap`` over local devices, gradients averaged with ``pmean`` over ``AXIS``.

    Args:
      train_step_fn: builds the train step given the pmap axis name.
      eval_step: the eval step.

    Returns:
      The compiled pair and the placement helpers (state replicated along a leading device axis).

    >>> compiled = compile_pmap(lambda axis: lambda s, b: (s, {}), lambda s, b: {"n": b["x"].sum()})
    >>> float(compiled.eval(compiled.put_state({}), compiled.put_batch({"x": np.ones(8)}))["n"])
    8.0
    """
    devices = jax.local_devices()
    train = jax.pmap(train_step_fn(AXIS), axis_name=AXIS, donate_argnums=0)

    def eval_sum(state: TrainState, batch: dict) -> dict:
        return jax.lax.psum(eval_step(state, batch), AXIS)

    evaluate_per_device = jax.pmap(eval_sum, axis_name=AXIS)

    def put_batch(batch: dict) -> dict:
        return jax.tree_util.tree_map(lambda x: np.asarray(x).reshape(len(devices), -1, *np.shape(x)[1:]), batch)

    def unreplicate(tree: Any) -> Any:
        return jax.tree_util.tree_map(lambda x: x[0], tree)

    def train_step(state: TrainState, batch: Any) -> tuple[TrainState, dict]:
        state, metrics = train(state, batch)
        return state, unreplicate(metrics)

    def evaluate(state: TrainState, batch: Any) -> dict:
        return unreplicate(evaluate_per_device(state, batch))

    return Compiled(
        train_step,
        evaluate,
        # One copy per device along a new leading axis; pmap splits it over the devices on the first step.
        lambda state: jax.tree_util.tree_map(
            lambda x: np.broadcast_to(np.asarray(x), (len(devices), *np.shape(x))), state
        ),
        unreplicate,
        put_batch,
        len(devices),
    )
