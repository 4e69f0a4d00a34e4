"""What each parameter-efficient method costs on ViT-B/16 and BERT-base shapes, against full fine-tuning.

    python -m benchmarks.peft_methods [--models vit-b16,bert-base] [--batch 8] [--iters 3]

For full fine-tuning, LoRA, DoRA, (IA)^3, VPT (ViT only), Houlsby adapters and QLoRA (NF4 and int8): trainable
parameters, optimizer-state bytes (AdamW, as the masking report counts them), the compiled train step's peak
memory from XLA's memory analysis (arguments + outputs + temporaries - aliased buffers; the state is donated) and
the median step time relative to full fine-tuning, steps interleaved. Then QLoRA's base-weight bytes (the
quantized kernels and their scales) against the same kernels in bfloat16 and float32. Random weights: the costs
do not depend on their values. The step is jtl's own (``jtl.step.make_train_step``, gradients of the trainable
leaves only).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jtl.masking as jm
from benchmarks._steps import TrainStep, everything, peak_bytes, time_interleaved
from jtl import adapters, models

NUM_CLASSES = 10
ATTENTION = r"encoder/block_\d+/attn/(query|value)"
EVERY_LINEAR = r"encoder/block_\d+/(attn/(query|key|value|out)|mlp/fc[12])"


def methods(vision: bool) -> dict[str, tuple[Any, ...]]:
    """``name -> adapter methods`` (``()``: full fine-tuning), with each method's usual settings."""
    table: dict[str, tuple[Any, ...]] = {
        "full fine-tuning": (),
        "LoRA r=8 (q, v)": (adapters.LoRASpec(targets=(ATTENTION,), rank=8),),
        "DoRA r=8 (q, v)": (adapters.DoRASpec(targets=(ATTENTION,), rank=8),),
        "(IA)^3 (k, v, ff)": (adapters.IA3Spec(),),
        "Houlsby adapters 64": (adapters.BottleneckSpec.houlsby(64),),
        "QLoRA NF4 r=8 (all linear)": (adapters.QLoRASpec(targets=(EVERY_LINEAR,), rank=8, format="nf4"),),
        "QLoRA int8 r=8 (all linear)": (adapters.QLoRASpec(targets=(EVERY_LINEAR,), rank=8, format="int8"),),
    }
    if vision:
        table["VPT deep, 10 prompts"] = (adapters.PromptSpec(num_tokens=10, deep=True),)
    return table


def _batch(model: Any, batch_size: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    inputs = model.example_inputs()
    if models.input_kind(model) == "image":
        images = rng.normal(size=(batch_size, *inputs[0].shape[1:])).astype(np.float32)
        return {"image": jnp.asarray(images), "label": jnp.asarray(rng.integers(0, NUM_CLASSES, batch_size))}
    length = min(128, getattr(model, "max_position_embeddings", 128))
    return {
        "input_ids": jnp.asarray(rng.integers(0, 1000, (batch_size, length)), jnp.int32),
        "attention_mask": jnp.ones((batch_size, length), jnp.int32),
        "label": jnp.asarray(rng.integers(0, NUM_CLASSES, batch_size)),
    }


def _state_bytes(tree: Any) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(tree) if hasattr(x, "dtype"))


def quantized_base_bytes(params: Any) -> tuple[int, int]:
    """``(bytes of the quantized kernels' codes and scales, their weights)`` in a QLoRA tree (NF4 codes are
    packed two to a byte)."""
    stored = sum(leaf.nbytes for name, leaf in jm.named_leaves(params) if name.endswith(("/kernel_q", "/kernel_scale")))
    shapes = dict(jm.named_leaves(params))
    weights = sum(
        leaf.shape[0] * shapes[name.replace("/lora_a", "/lora_b")].shape[1]
        for name, leaf in jm.named_leaves(params)
        if name.endswith("/lora_a") and name.replace("/lora_a", "/kernel_q") in shapes
    )
    return stored, weights


def measure(name: str, batch_size: int, iters: int, overrides: dict[str, Any]) -> list[dict[str, Any]]:
    model = models.create(name, num_classes=NUM_CLASSES, **overrides)
    base = jax.jit(lambda: models.init(model)["params"])()
    batch = _batch(model, batch_size)
    rows, steps = [], {}
    for label, chosen in methods(models.input_kind(model) == "image").items():
        params = base
        for method in chosen:
            params = adapters.add_adapters(params, method, jax.random.PRNGKey(1))
        trainable = list(adapters.trainable_patterns(*chosen)) if chosen else everything
        wrapped = adapters.with_adapters(model, *chosen) if chosen else model
        step = TrainStep(wrapped, params, batch, trainable, NUM_CLASSES)
        total = sum(x.size for x in jax.tree_util.tree_leaves(params))
        mask = jm.select(params, trainable) if chosen else everything(params)
        leaves = zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(mask), strict=True)
        count = sum(x.size for x, t in leaves if t)
        rows.append(
            {
                "method": label,
                "trainable": count,
                "share": count / total,
                "opt_state_bytes": _state_bytes(step.state.opt_state),
                "peak_bytes": peak_bytes(step.compiled),
                "base_bytes": quantized_base_bytes(params) if label.startswith("QLoRA") else None,
            }
        )
        steps[label] = step
    seconds = time_interleaved({label: lambda s=s: s.run(batch) for label, s in steps.items()}, 1, iters)
    for row in rows:
        row["step_vs_full"] = seconds[row["method"]] / seconds["full fine-tuning"]
        row["step_ms"] = 1e3 * seconds[row["method"]]
    return rows


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def main(argv: list[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vit-b16,bert-base")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--overrides", default="{}", help="model fields as JSON (tiny runs in tests)")
    args = parser.parse_args(argv)
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; batch {args.batch}; AdamW")
    results = {}
    for name in args.models.split(","):
        rows = measure(name, args.batch, args.iters, json.loads(args.overrides))
        results[name] = rows
        print(f"\n{name}")
        print("| method | trainable params | optimizer state | peak memory (XLA) | step time |")
        print("| --- | --- | --- | --- | --- |")
        for r in rows:
            print(
                f"| {r['method']} | {r['trainable']:,} ({100 * r['share']:.2f}%) | {_mib(r['opt_state_bytes'])} "
                f"| {_mib(r['peak_bytes'])} | {r['step_vs_full']:.2f}x ({r['step_ms']:.0f} ms) |"
            )
        for r in rows:
            if r["base_bytes"]:
                stored, weights = r["base_bytes"]
                print(
                    f"{r['method']}: quantized kernels {_mib(stored)} ({stored / (4 * weights):.3f} of fp32) "
                    f"vs {_mib(2 * weights)} bf16, {_mib(4 * weights)} fp32"
                )
    return results


if __name__ == "__main__":
    main()
