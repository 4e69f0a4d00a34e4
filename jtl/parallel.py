"""Mesh and compilation: one step, compiled with ``jax.jit`` over a ``Mesh`` (the default) or with ``pmap``, with
the same call.

jit shards the global batch over the mesh's ``data`` axis and places the train state as a :class:`jtl.sharding.Plan`
says (replicated, FSDP over ``data``, tensor-parallel over ``model``); XLA inserts the gradient reductions and the
parameter gathers. pmap runs the step per device with ``axis_name`` set, and the step averages gradients and
metrics with ``pmean``; it always replicates the state.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jtl.sharding import DATA, MODEL, Plan, ShardingError

AXIS = DATA


def make_mesh(devices: list | None = None, model: int = 1) -> Mesh:
    """A 2-D ``(data, model)`` mesh over all (or the given) devices, across hosts.

    Neighbouring devices (of one host, in JAX's order) share a ``model`` group, where tensor parallelism talks
    most; each host's devices are a contiguous block of the ``data`` axis, so its batch rows stay local.

    Args:
      devices: the devices (default: every device of every host).
      model: the size of the ``model`` axis (1: no tensor parallelism); it must divide the device count.

    Returns:
      A ``Mesh`` with axes ``"data"`` and ``"model"``.

    >>> dict(make_mesh(jax.devices()[:2]).shape)
    {'data': 2, 'model': 1}
    >>> dict(make_mesh(model=2).shape)
    {'data': 2, 'model': 2}
    """
    devices = jax.devices() if devices is None else devices
    if model < 1 or len(devices) % model:
        raise ShardingError(f"a model axis of {model} devices does not divide {len(devices)} devices")
    return Mesh(np.asarray(devices).reshape(len(devices) // model, model), (DATA, MODEL))


def to_host(tree: Any) -> Any:
    """``tree`` as NumPy arrays on every host, whole: sharded arrays are gathered (across hosts too, so every
    process must call it).

    Args:
      tree: a pytree of arrays.

    Returns:
      The same tree of NumPy arrays.

    >>> sharded = jax.device_put(np.arange(8.0), NamedSharding(make_mesh(), PartitionSpec("data")))
    >>> to_host({"x": sharded})["x"].tolist()
    [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    """

    def gather(x: Any) -> np.ndarray:
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree_util.tree_map(gather, tree)


class Compiled(NamedTuple):
    """A compiled train/eval pair (and prediction step) and how to move state and batches to its devices."""

    train: Callable[[Any, Any], tuple[Any, dict]]
    eval: Callable[[Any, Any], dict]
    put_state: Callable[[Any], Any]
    get_state: Callable[[Any], Any]
    put_batch: Callable[[dict], Any]
    num_devices: int
    # (state, batch) -> per-example outputs of the whole global batch, on every host; None without a predict step.
    predict: Callable[[Any, Any], dict] | None = None
    # (init, *inputs) -> init(*inputs) computed where put_state would place it (sharded: never whole anywhere).
    create_state: Callable[..., Any] | None = None

    def put_global_batch(self, batch: dict) -> Any:
        """Places a batch that every host holds whole (eval): each host contributes its rows."""
        count, index = jax.process_count(), jax.process_index()
        rows = len(next(iter(batch.values()))) // count
        return self.put_batch({k: v[index * rows : (index + 1) * rows] for k, v in batch.items()})


def compile_jit(
    train_step: Callable,
    eval_step: Callable,
    mesh: Mesh,
    predict_step: Callable | None = None,
    plan: Plan | None = None,
) -> Compiled:
    """``jax.jit`` over ``mesh``: batches split on the data axis, the state placed by ``plan``.

    Batches are host-local; ``put_batch`` assembles the global batch from every host's part. Each step is compiled
    for the state's structure when first called, with the plan's shardings in and out, so a stage change (a new
    optimizer state) or a resharded state gets its own program.

    Args:
      train_step: ``(state, batch, *, axis_name=None) -> (state, metrics)``, e.g. from
        :func:`jtl.step.make_train_step`.
      eval_step: ``(state, batch) -> sums``, e.g. from :func:`jtl.step.make_eval_step`.
      mesh: the device mesh (:func:`make_mesh`).
      predict_step: ``(state, batch) -> per-example outputs`` (e.g. :func:`jtl.step.make_predict_step`), for
        evaluations that need every example's output (detection's mAP); compiled when first called.
      plan: where each state leaf lives (:class:`jtl.sharding.Plan`); default: replicated on every device.

    Returns:
      The compiled pair and the placement helpers.

    >>> compiled = compile_jit(lambda s, b, axis_name=None: (s, {}), lambda s, b: {"n": b["x"].sum()}, make_mesh())
    >>> float(compiled.eval({}, compiled.put_batch({"x": np.ones(8)}))["n"]), compiled.num_devices
    (8.0, 4)
    >>> negate = lambda state, batch: {"y": -batch["x"]}
    >>> compiled = compile_jit(lambda s, b, axis_name=None: (s, {}), lambda s, b: {}, make_mesh(), negate)
    >>> compiled.predict({}, compiled.put_batch({"x": np.arange(4.0)}))["y"].tolist()
    [-0.0, -1.0, -2.0, -3.0]
    """
    plan = Plan(mesh, [], []) if plan is None else plan
    replicated = NamedSharding(mesh, PartitionSpec())
    sharded = NamedSharding(mesh, PartitionSpec(DATA))

    def per_structure(step: Callable, outputs: Callable[[Any], Any], **options: Any) -> Callable:
        programs: dict[Any, Callable] = {}

        def run(state: Any, batch: Any) -> Any:
            key = jax.tree_util.tree_structure(state)
            if key not in programs:
                state_shardings = plan.shardings(state)
                programs[key] = jax.jit(
                    step, in_shardings=(state_shardings, sharded), out_shardings=outputs(state_shardings), **options
                )
            return programs[key](state, batch)

        return run

    train = per_structure(train_step, lambda state: (state, replicated), donate_argnums=0)
    evaluate = per_structure(eval_step, lambda state: replicated)
    predict = None if predict_step is None else per_structure(predict_step, lambda state: replicated)

    def put_batch(batch: dict) -> dict:
        return jax.tree_util.tree_map(lambda x: jax.make_array_from_process_local_data(sharded, np.asarray(x)), batch)

    def create_state(init: Callable, *inputs: Any) -> Any:
        # The inputs go shard by shard; init runs as one program whose outputs are born in their shards.
        abstract = jax.eval_shape(init, *inputs)
        return jax.jit(init, out_shardings=plan.shardings(abstract))(*plan.put(inputs))

    return Compiled(train, evaluate, plan.put, lambda state: state, put_batch, mesh.size, predict, create_state)


def compile_pmap(train_step: Callable, eval_step: Callable, predict_step: Callable | None = None) -> Compiled:
    """The classic path: ``pmap`` over local devices, gradients averaged with ``pmean`` over ``AXIS``.

    Args:
      train_step: ``(state, batch, *, axis_name) -> (state, metrics)``, e.g. from
        :func:`jtl.step.make_train_step`; it runs with ``axis_name=AXIS``.
      eval_step: the eval step.
      predict_step: the prediction step, as for :func:`compile_jit`.

    Returns:
      The compiled pair and the placement helpers (state replicated along a leading device axis).

    >>> compiled = compile_pmap(lambda s, b, axis_name=None: (s, {}), lambda s, b: {"n": b["x"].sum()})
    >>> float(compiled.eval(compiled.put_state({}), compiled.put_batch({"x": np.ones(8)}))["n"])
    8.0
    >>> compiled = compile_pmap(lambda s, b, axis_name=None: (s, {}), lambda s, b: {}, lambda s, b: {"y": 2 * b["x"]})
    >>> compiled.predict(compiled.put_state({}), compiled.put_batch({"x": np.arange(8.0)}))["y"].tolist()
    [0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0]
    """
    devices = jax.local_devices()
    train = jax.pmap(functools.partial(train_step, axis_name=AXIS), axis_name=AXIS, donate_argnums=0)

    def eval_sum(state: Any, batch: dict) -> dict:
        return jax.lax.psum(eval_step(state, batch), AXIS)

    evaluate_per_device = jax.pmap(eval_sum, axis_name=AXIS)

    def put_batch(batch: dict) -> dict:
        return jax.tree_util.tree_map(lambda x: np.asarray(x).reshape(len(devices), -1, *np.shape(x)[1:]), batch)

    def unreplicate(tree: Any) -> Any:
        return jax.tree_util.tree_map(lambda x: x[0], tree)

    def train_unreplicated(state: Any, batch: Any) -> tuple[Any, dict]:
        state, metrics = train(state, batch)
        return state, unreplicate(metrics)

    def evaluate(state: Any, batch: Any) -> dict:
        return unreplicate(evaluate_per_device(state, batch))

    predict = None
    if predict_step is not None:

        def gathered(state: Any, batch: dict) -> dict:
            # Every device (of every host) gets all rows, as jit's replicated outputs give every host.
            return jax.lax.all_gather(predict_step(state, batch), AXIS)

        predict_per_device = jax.pmap(gathered, axis_name=AXIS)

        def predict(state: Any, batch: Any) -> dict:
            # (global devices, rows per device, ...) -> the global batch's rows in order
            outputs = unreplicate(predict_per_device(state, batch))
            return jax.tree_util.tree_map(lambda x: x.reshape(-1, *x.shape[2:]), outputs)

    return Compiled(
        train_unreplicated,
        evaluate,
        # One copy per device along a new leading axis; pmap splits it over the devices on the first step.
        lambda state: jax.tree_util.tree_map(
            lambda x: np.broadcast_to(np.asarray(x), (len(devices), *np.shape(x))), state
        ),
        unreplicate,
        put_batch,
        len(devices),
        predict,
        lambda init, *inputs: init(*inputs),
    )
