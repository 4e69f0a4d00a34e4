"""Per-device memory of sharded training: bytes of parameters + AdamW state on each device, replicated and with
FSDP over 4 and 8 devices, for ViT-L/16 and BERT-large shapes, from XLA's compiled memory analysis of jtl's train
step (nothing is allocated: the step is compiled for abstract, sharded inputs).

Run: ``python -m benchmarks.sharding`` (it sets 8 fake CPU devices itself). For each layout the table gives the
compiled step's per-device argument bytes less the batch's (the train state as XLA lays it out), the same figure
computed from the shardings (:meth:`jtl.sharding.Plan.bytes_per_device`), its ratio to the ideal 1/N of the
replicated state, and the step's peak temporary bytes (FSDP gathers each parameter for its use there).

``--steps N`` also creates the state (sharded from birth) and times N train steps of each layout: examples/s and,
on accelerators, each device's peak memory in use (``bash benchmarks/gpu.sh`` runs this on every visible GPU with
``--overrides '{"dtype": "bfloat16", "remat": "full"}'``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

if "jax" not in sys.modules:  # before JAX starts: the devices the layouts need, on the CPU
    os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from jtl import models, parallel, sharding, step
from jtl.objectives import Classification


def abstract_problem(name: str, image_size: int, length: int, overrides: dict) -> tuple[Any, Any, dict]:
    """The model, its abstract variables and one example's abstract inputs (an image or a token sequence)."""
    overrides = {**overrides, **({"image_size": image_size} if "vit" in name else {})}
    if isinstance(overrides.get("dtype"), str):
        overrides["dtype"] = jnp.dtype(overrides["dtype"])
    model = models.create(name, num_classes=10, **overrides)
    variables = jax.eval_shape(lambda: models.init(model))
    if models.input_kind(model) == "image":
        example = {"image": jax.ShapeDtypeStruct((image_size, image_size, 3), np.float32)}
    else:
        example = {name: jax.ShapeDtypeStruct((length,), np.int32) for name in ("input_ids", "attention_mask")}
    return model, variables, {**example, "label": jax.ShapeDtypeStruct((), np.int32)}


def measure(model: Any, variables: Any, example: dict, devices: int, fsdp: bool, args: argparse.Namespace) -> dict:
    """One layout: the compiled train step's per-device memory (``args.per_device`` examples per device), and
    with ``args.steps`` its speed."""
    mesh = parallel.make_mesh(jax.devices()[:devices])
    tx = step.freeze(optax.adamw(1e-4), step.everything)
    state = jax.eval_shape(lambda v: step.init_state(v, tx), variables)
    plan = sharding.Plan(mesh, [variables["params"]], sharding.default_rules(fsdp=fsdp, tensor_parallel=False),
                         min_size=args.min_size)  # fmt: skip
    rows = NamedSharding(mesh, PartitionSpec(parallel.AXIS))
    global_batch = devices * args.per_device
    batch = {k: jax.ShapeDtypeStruct((global_batch, *v.shape), v.dtype, sharding=rows) for k, v in example.items()}
    state_shardings = plan.shardings(state)
    train = jax.jit(
        step.make_train_step(model, Classification(10), tx),
        in_shardings=(state_shardings, rows),
        out_shardings=(state_shardings, NamedSharding(mesh, PartitionSpec())),
        donate_argnums=0,
    )
    compiled = train.lower(state, batch).compile()
    memory = compiled.memory_analysis()
    batch_bytes = sum(args.per_device * int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in example.values())
    figures = {
        "state_bytes": memory.argument_size_in_bytes - batch_bytes,
        "planned_bytes": plan.bytes_per_device(state),
        "temp_bytes": memory.temp_size_in_bytes,
    }
    if args.steps:
        figures.update(time_steps(compiled, model, plan, tx, batch, args.steps))
    return figures


def time_steps(compiled: Any, model: Any, plan: sharding.Plan, tx: Any, batch: dict, steps: int) -> dict:
    """Examples/s of the compiled step on a state created sharded, and the devices' peak memory where known."""
    variables = models.init(model, shardings=plan.shardings)

    def init(variables: dict) -> step.TrainState:
        return step.init_state(variables, tx)

    state = jax.jit(init, out_shardings=plan.shardings(jax.eval_shape(init, variables)))(variables)
    rng = np.random.default_rng(0)
    placed = {
        k: jax.device_put(rng.integers(0, 2, v.shape).astype(v.dtype) if np.issubdtype(v.dtype, np.integer)
                          else rng.normal(size=v.shape).astype(v.dtype), v.sharding)
        for k, v in batch.items()
    }  # fmt: skip
    state, metrics = compiled(state, placed)  # the first call pays for transfers
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = compiled(state, placed)
    jax.block_until_ready(metrics)
    seconds = (time.perf_counter() - start) / steps
    peaks = [(device.memory_stats() or {}).get("peak_bytes_in_use", 0) for device in plan.mesh.devices.flat]
    return {"examples_per_second": len(next(iter(placed.values()))) / seconds, "peak_device_bytes": max(peaks)}


def table(results: dict[str, list[tuple[str, int, dict]]]) -> str:
    timed = "examples_per_second" in next(iter(results.values()))[0][2]
    header = ["model", "layout", "devices", "params + AdamW per device (compiled)", "from the shardings"]
    header += ["vs 1/N of replicated", "peak temporary per device"]
    header += ["examples/s", "peak device memory in use"] if timed else []
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    for name, rows in results.items():
        replicated = rows[0][2]["state_bytes"]
        for layout, devices, figures in rows:
            ratio = figures["state_bytes"] / (replicated / devices)
            state, planned, temp = (figures[k] / 2**20 for k in ("state_bytes", "planned_bytes", "temp_bytes"))
            cells = [name, layout, str(devices), f"{state:,.1f} MiB", f"{planned:,.1f} MiB", f"{ratio:.3f}"]
            cells.append(f"{temp:,.1f} MiB")
            if timed:
                peak = figures["peak_device_bytes"]
                cells += [f"{figures['examples_per_second']:,.1f}", f"{peak / 2**20:,.1f} MiB" if peak else "n/a (CPU)"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, list[tuple[str, int, dict]]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vit-l16", "bert-large"])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--length", type=int, default=128, help="tokens per text example")
    parser.add_argument("--min-size", type=int, default=2**14, help="config.sharding.min_size")
    parser.add_argument("--devices", type=int, nargs="+", default=[4, 8], help="FSDP layouts to measure")
    parser.add_argument("--per-device", type=int, default=1, help="examples per device in a step")
    parser.add_argument("--steps", type=int, default=0, help="also time this many steps of each layout")
    parser.add_argument("--overrides", default="{}", help="model fields as JSON, e.g. remat, scan_layers, dtype")
    args = parser.parse_args(argv)
    layouts = [("replicated", 1, False), *(("FSDP", n, True) for n in args.devices)]
    results = {}
    for name in args.models:
        model, variables, example = abstract_problem(name, args.image_size, args.length, json.loads(args.overrides))
        results[name] = [
            (layout, devices, measure(model, variables, example, devices, fsdp, args))
            for layout, devices, fsdp in layouts
        ]
    print(table(results))
    return results


if __name__ == "__main__":
    main()
