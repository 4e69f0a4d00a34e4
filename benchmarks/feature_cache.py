"""Feature cache benchmark: one epoch of linear-classifier training over cached features against one epoch
through the frozen backbone (the trainer's step with only the head trainable: no backbone gradient, but the
forward pass every time).

Run: ``python -m benchmarks.feature_cache`` (defaults: ViT-S/16 at 224x224, 256 examples, batch 32, fp32, one
device). Prints the median seconds per epoch of each and their ratio (the cache must be at least 50x faster).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jtl import models
from jtl.features import extract_features, linear_epochs
from jtl.objectives import Classification
from jtl.step import freeze, init_state, make_train_step


def _median_seconds(fn, repeats: int) -> float:
    fn()  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit-s16")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    device = jax.devices()[0]
    model = models.create(args.model, num_classes=args.classes, image_size=args.image_size)
    variables = jax.device_put(models.init(model), device)
    rng = np.random.default_rng(0)
    channels = model.example_inputs()[0].shape[-1]
    images = rng.normal(size=(args.examples, args.image_size, args.image_size, channels)).astype(np.float32)
    labels = rng.integers(0, args.classes, args.examples).astype(np.int32)
    steps = args.examples // args.batch

    trainable = ["head/.*"]
    tx = freeze(optax.adam(1e-3), trainable)
    step = jax.jit(make_train_step(model, Classification(args.classes), tx, trainable))
    params = variables["params"]
    batches = [
        jax.device_put(
            {
                "image": images[i * args.batch : (i + 1) * args.batch],
                "label": labels[i * args.batch : (i + 1) * args.batch],
            },
            device,
        )
        for i in range(steps)
    ]

    def backbone_epoch() -> None:
        state = init_state({"params": params}, tx)
        for batch in batches:
            state, metrics = step(state, batch)
        jax.block_until_ready(metrics["loss"])

    features, _ = extract_features(model, variables, ({"image": b["image"], "label": b["label"]} for b in batches))
    standardised = jax.device_put(jnp.asarray((features - features.mean(0)) / (features.std(0) + 1e-6)), device)
    cached_labels = jax.device_put(jnp.asarray(labels[: len(features)]), device)
    linear_tx, epochs = linear_epochs(steps, args.batch, 1e-2, 1e-4)
    head = (jnp.zeros((features.shape[1], args.classes)), jnp.zeros(args.classes))
    keys = jax.random.split(jax.random.PRNGKey(0), 1)

    def cached_epoch() -> None:
        jax.block_until_ready(epochs(head, linear_tx.init(head), standardised, cached_labels, keys))

    backbone = _median_seconds(backbone_epoch, args.repeats)
    cached = _median_seconds(cached_epoch, args.repeats)
    print(
        f"{args.model} at {args.image_size}px, {steps * args.batch} examples, batch {args.batch}, "
        f"{features.shape[1]}-d features, {device.platform}:"
    )
    print(f"  epoch through the frozen backbone  {backbone * 1e3:10.2f} ms")
    print(f"  epoch over cached features         {cached * 1e3:10.2f} ms")
    print(f"  cached is {backbone / cached:.0f}x faster")
    return {"backbone_seconds": backbone, "cached_seconds": cached, "ratio": backbone / cached}


if __name__ == "__main__":
    main()
