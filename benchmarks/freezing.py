"""Freezing benchmark: the cost of a train step with the backbone frozen, with the last N blocks trainable,
and with everything trainable, against the anchors' freezing recipe.

Run: ``python benchmarks/freezing.py`` (defaults: a ViT-Ti-shaped encoder, 64 tokens, batch 16, fp32).
Every step clips gradients by global norm and logs the gradient norm, as vit_jax/big_vision do. The anchor
recipe (big_vision, scenic, optax's freezing recipe) takes the full gradient, clips/logs over the whole
tree and then zeroes the frozen updates; jtl differentiates only the trainable leaves
(``jtl.masking.value_and_grad``). Prints median milliseconds per step and the ratio to jtl's full step.
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

import jtl.masking as jm


class Block(nn.Module):
    width: int
    heads: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = nn.LayerNorm(name="norm1")(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads, name="attn")(y, y)
        y = nn.LayerNorm(name="norm2")(x)
        y = nn.Dense(4 * self.width, name="fc1")(y)
        return x + nn.Dense(self.width, name="fc2")(nn.gelu(y))


class Encoder(nn.Module):
    """A ViT-shaped encoder over pre-patched inputs, with jtl's uniform parameter names."""

    width: int
    depth: int
    heads: int
    num_classes: int

    @nn.compact
    def __call__(self, patches: jax.Array) -> jax.Array:
        x = nn.Dense(self.width, name="embed")(patches)
        for i in range(self.depth):
            x = Block(self.width, self.heads, name=f"block_{i}")(x)
        x = nn.LayerNorm(name="norm")(x).mean(axis=1)
        return nn.Dense(self.num_classes, name="head")(x)


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
    params = jax.tree_util.tree_map(jnp.copy, params)  # the step donates its inputs
    for _ in range(2):  # compile and warm up
        params, opt_state, metrics = step(params, opt_state, batch)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        params, opt_state, metrics = step(params, opt_state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--heads", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--last-n", type=int, default=2, help="blocks trainable in the last-N run")
    args = parser.parse_args(argv)

    model = Encoder(args.width, args.depth, args.heads, num_classes=10)
    rng = np.random.default_rng(0)
    patches = jnp.asarray(rng.normal(size=(args.batch, args.tokens, 48)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 10, size=args.batch))
    params = model.init(jax.random.PRNGKey(0), patches[:1])["params"]

    def loss_fn(params: Any, batch: Any) -> jax.Array:
        logits = model.apply({"params": params}, batch[0])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()

    head = ["norm/.*", "head/.*"]
    last_n = head + [f"block_{i}/.*" for i in range(args.depth - args.last_n, args.depth)]
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
    batch = (patches, labels)
    results = {}
    for name, (tx, grad_fn) in runs.items():
        results[name] = time_step(make_step(loss_fn, tx, grad_fn), params, tx.init(params), batch, args.iters)

    print(
        f"jax {jax.__version__}, {jax.device_count()} {jax.devices()[0].platform} device(s); "
        f"encoder width {args.width}, depth {args.depth}, {args.tokens} tokens, batch {args.batch}, fp32"
    )
    full = results["full fine-tuning"]
    width = max(map(len, results))
    print(f"{'step'.ljust(width)}  {'ms/step':>9}  {'x full':>7}")
    for name, ms in results.items():
        print(f"{name.ljust(width)}  {ms:9.2f}  {ms / full:7.2f}")
    return results


if __name__ == "__main__":
    main()
