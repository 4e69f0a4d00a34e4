"""What the benchmark scripts share: jtl's compiled train step on a fixed batch, and a median timer."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jtl.objectives import Classification
from jtl.step import freeze, init_state, make_train_step


def time_interleaved(runs: dict[str, Callable[[], Any]], warmup: int, iters: int) -> dict[str, float]:
    """Median wall seconds of each ``run()`` (which must block until its results exist), after ``warmup`` calls
    of each; the timed calls alternate between the runs, so a shared, noisy machine's drift affects all alike."""
    for run in runs.values():
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(iters):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def everything(tree: Any) -> Any:
    """The ``trainable`` spec of full fine-tuning."""
    return jax.tree_util.tree_map(lambda _: True, tree)


def flops_of(compiled: Any) -> float:
    """FLOPs of one call of a compiled program, from XLA's cost analysis (0 where it gives none)."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list | tuple):  # older jax: one dict per computation
        analysis = analysis[0]
    return float((analysis or {}).get("flops", 0.0))


def peak_bytes(compiled: Any) -> int:
    """The compiled program's peak memory by XLA's memory analysis (donated inputs counted once)."""
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)


class TrainStep:
    """The trainer's step (``jtl.step.make_train_step``, AdamW, state donated) compiled for ``batch``'s
    shapes; ``run(batch)`` takes one step and, with ``wait``, blocks until the new state exists."""

    def __init__(self, model: Any, params: Any, batch: dict, trainable: Any, num_classes: int) -> None:
        tx = freeze(optax.adamw(1e-4), trainable)
        train = make_train_step(model, Classification(num_classes), tx, trainable)
        step = jax.jit(train, donate_argnums=0)
        params = jax.tree_util.tree_map(jnp.array, params)  # donated: never the caller's arrays
        self.state = init_state({"params": params}, tx)
        self.compiled = step.lower(self.state, batch).compile()

    def run(self, batch: dict, wait: bool = True) -> None:
        self.state, metrics = self.compiled(self.state, batch)
        if wait:
            jax.block_until_ready((self.state, metrics))
