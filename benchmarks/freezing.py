"""Freezing benchmark: the cost of a train step with the backbone frozen, with the last N blocks trainable,
and with everything trainable, against the anchors' freezing recipe.

Run: ``python -m benchmarks.freezing`` (defaults: jtl's ViT-S/16 at 224 px, batch 8, fp32, SGD momentum).
Every step clips gradients by global norm and logs the gradient norm, as vit_jax/big_vision do. The anchor
recipe (big_vision, scenic, optax's freezing recipe) takes the full gradient, clips/logs over the whole
tree and then zeroes the frozen updates; jtl differentiates only the trainable leaves
(``jtl.masking.value_and_grad``). Prints median milliseconds per step and the ratio to jtl's full step.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jtl.masking as jm
from benchmarks._steps import time_interleaved
from jtl import models


def make_step(
    loss_fn: Callable[..., jax.Array], tx: optax.GradientTransformation, grad_fn: Callable[..., Any]
) -> Callable[..., Any]:
    def step(params: Any, opt_state: Any, batch: Any) -> tuple[Any, Any, dict[str, jax.Array]]:
        loss, grads = grad_fn(loss_fn)(params, batch)
        grad_norm = optax.tree.norm(grads)  # logged every step, as the anchors do
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, {"loss": loss, "grad_norm": grad_norm}

    return jax.jit(step, donate_argnums=(0, 1))


def time_step(step: Callable[..., Any], params: Any, opt_state: Any, batch: Any, iters: int) -> float:
    """Median milliseconds per step, after 2 warm-up steps (the first compiles)."""
    state = [jax.tree_util.tree_map(jnp.copy, params), opt_state]  # the step donates its inputs

    def run() -> None:
        state[0], state[1], metrics = step(state[0], state[1], batch)
        jax.block_until_ready(metrics)

    return 1e3 * time_interleaved({"step": run}, warmup=2, iters=iters)["step"]


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit-s16", help="a ViT of jtl.models' registry")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--last-n", type=int, default=2, help="blocks trainable in the last-N run")
    parser.add_argument("--overrides", default="{}", help="other model fields, as JSON (e.g. a tiny test model)")
    args = parser.parse_args(argv)

    fields = {"image_size": args.image_size, "head_zero_init": False, **json.loads(args.overrides)}
    model = models.create(args.model, num_classes=10, **fields)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.normal(size=(args.batch, args.image_size, args.image_size, model.num_channels)))
    labels = jnp.asarray(rng.integers(0, 10, size=args.batch))
    params = models.init(model)["params"]

    def loss_fn(params: Any, batch: Any) -> jax.Array:
        logits = model.apply({"params": params}, batch[0])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()

    head = ["norm/.*", "head/.*"]
    last_n = models.top_layers(model, args.last_n + 1)
    base = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(1e-3, momentum=0.9))
    runs = {
        "full fine-tuning": (base, jax.value_and_grad),
        f"last {args.last_n} blocks + head (jtl)": (
            jm.freeze(base, trainable=last_n),
            lambda f: jm.value_and_grad(f, last_n),
        ),
        "frozen backbone (jtl)": (jm.freeze(base, trainable=head), lambda f: jm.value_and_grad(f, head)),
        "frozen backbone (anchor recipe)": (
            optax.chain(optax.clip_by_global_norm(1.0), jm.freeze(optax.sgd(1e-3, momentum=0.9), trainable=head)),
            jax.value_and_grad,
        ),
    }
    batch = (images, labels)
    results = {}
    for name, (tx, grad_fn) in runs.items():
        results[name] = time_step(make_step(loss_fn, tx, grad_fn), params, tx.init(params), batch, args.iters)

    print(
        f"jax {jax.__version__}, {jax.device_count()} {jax.devices()[0].platform} device(s); "
        f"{args.model} ({model.num_layers} blocks) at {args.image_size} px, batch {args.batch}, fp32"
    )
    full = results["full fine-tuning"]
    width = max(map(len, results))
    print(f"{'step'.ljust(width)}  {'ms/step':>9}  {'x full':>7}")
    for name, ms in results.items():
        print(f"{name.ljust(width)}  {ms:9.2f}  {ms / full:7.2f}")
    return results


if __name__ == "__main__":
    main()
