"""Quickstart: transfer learning on scikit-learn's bundled digits with ``jtl.masking``, offline, in seconds.

Run: ``python -m jtl.quickstart``. A small network is pretrained on digits 0-4 (the source task), then
transferred to digits 5-9 with 10 labelled examples per class (the target task) three ways: from scratch,
with the pretrained backbone frozen (only a new head trains, and no backbone gradient is computed), and
with full fine-tuning. It prints the masking report and a table of target accuracy.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits

import jtl.masking as jm

WIDTH = 256
NUM_BLOCKS = 2
BACKBONE = ["embed/.*", "block_.*"]


class DigitNet(nn.Module):
    """A residual MLP with jtl's uniform names: ``embed``, ``block_{i}``, ``head``."""

    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.gelu(nn.Dense(WIDTH, name="embed")(x))
        for i in range(NUM_BLOCKS):
            x = x + nn.gelu(nn.Dense(WIDTH, name=f"block_{i}")(x))
        return nn.Dense(self.num_classes, name="head")(x)


def load_digit_tasks(shots: int, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Source: digits 0-4 (all); target: digits 5-9, ``shots`` labelled per class, the rest for testing."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target
    source = y < 5
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for label in range(5, 10):
        idx = rng.permutation(np.flatnonzero(y == label))
        train_idx.extend(idx[:shots])
        test_idx.extend(idx[shots:])
    return {
        "source": (x[source], y[source]),
        "target_train": (x[train_idx], y[train_idx] - 5),
        "target_test": (x[test_idx], y[test_idx] - 5),
    }


def _loss_fn(model: nn.Module) -> Callable[[Any, tuple[jax.Array, jax.Array]], jax.Array]:
    def loss(params: Any, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
        logits = model.apply({"params": params}, batch[0])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()

    return loss


def train(
    model: nn.Module,
    params: Any,
    data: tuple[np.ndarray, np.ndarray],
    *,
    steps: int,
    learning_rate: float,
    trainable: list[str] | None = None,
) -> tuple[Any, float]:
    """Full-batch AdamW; with ``trainable`` patterns the rest is frozen and gets no gradient computed.

    Returns the trained params and the median step time in milliseconds (after compilation).
    """
    loss = _loss_fn(model)
    base = optax.adamw(learning_rate, weight_decay=1e-4, mask=jm.weight_decay_mask)
    if trainable is None:
        tx, grad_fn = base, jax.value_and_grad(loss)
    else:
        tx, grad_fn = jm.freeze(base, trainable=trainable), jm.value_and_grad(loss, trainable)
    batch = (jnp.asarray(data[0]), jnp.asarray(data[1]))

    @jax.jit
    def step(params: Any, opt_state: Any) -> tuple[Any, Any]:
        _, grads = grad_fn(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    opt_state = tx.init(params)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        params, opt_state = jax.block_until_ready(step(params, opt_state))
        times.append(time.perf_counter() - start)
    return params, 1e3 * float(np.median(times[1:]))


def accuracy(model: nn.Module, params: Any, data: tuple[np.ndarray, np.ndarray]) -> float:
    logits = model.apply({"params": params}, jnp.asarray(data[0]))
    return float(jnp.mean(jnp.argmax(logits, -1) == jnp.asarray(data[1])))


def with_new_head(pretrained: Any, fresh: Any) -> Any:
    """The pretrained backbone with the freshly initialised head of the target model."""
    return {**pretrained, "head": fresh["head"]}


def transfer_once(seed: int, shots: int, steps: int, verbose: bool) -> tuple[dict[str, float], dict[str, float]]:
    """Pretrains on the source task and transfers three ways; returns target accuracies and ms/step."""
    tasks = load_digit_tasks(shots, seed)
    source_model, target_model = DigitNet(num_classes=5), DigitNet(num_classes=5)
    dummy = jnp.zeros((1, tasks["source"][0].shape[1]))
    init_source, init_target = jax.random.split(jax.random.PRNGKey(seed))
    source_init = source_model.init(init_source, dummy)["params"]
    pretrained, _ = train(source_model, source_init, tasks["source"], steps=steps, learning_rate=3e-3)
    fresh = target_model.init(init_target, dummy)["params"]
    transferred = with_new_head(pretrained, fresh)
    if verbose:
        source_accuracy = accuracy(source_model, pretrained, tasks["source"])
        print(f"source task (digits 0-4): train accuracy {source_accuracy:.3f}")
        print("\nmasking report for the frozen-backbone run (AdamW state for trainable leaves only):")
        print(jm.report(transferred, trainable="head/.*", optimizer=optax.adamw(1e-3)))

    runs = {
        "from scratch": (fresh, None),
        "frozen backbone, new head": (transferred, ["head/.*"]),
        "full fine-tuning": (transferred, None),
    }
    results, step_ms = {}, {}
    for name, (params, trainable) in runs.items():
        trained, step_ms[name] = train(
            target_model, params, tasks["target_train"], steps=steps, learning_rate=1e-2, trainable=trainable
        )
        results[name] = accuracy(target_model, trained, tasks["target_test"])
    return results, step_ms


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, default=10, help="labelled target examples per class")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds; the table shows mean and std")
    parser.add_argument("--steps", type=int, default=300, help="train steps per run")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]

    accuracies: dict[str, list[float]] = {}
    times: dict[str, list[float]] = {}
    for i, seed in enumerate(seeds):
        results, step_ms = transfer_once(seed, args.shots, args.steps, verbose=i == 0)
        for name in results:
            accuracies.setdefault(name, []).append(results[name])
            times.setdefault(name, []).append(step_ms[name])

    print(f"\ntarget task: digits 5-9 with {args.shots} labels per class; accuracy on the other target digits")
    print(f"(mean ± std over seeds {seeds}):")
    width = max(map(len, accuracies))
    for name, accs in accuracies.items():
        print(
            f"  {name.ljust(width)}  {np.mean(accs):.3f} ± {np.std(accs):.3f}   ({np.median(times[name]):.2f} ms/step)"
        )
    return accuracies


if __name__ == "__main__":
    main()
