"""Memory benchmark: what rematerialising and scanning the encoder blocks save and cost in a ViT train step, by
XLA's compiled memory analysis on the CPU (no accelerator needed).

Run: ``python -m benchmarks.memory`` (defaults: the remat section on ViT-B/16 at 224 px, the scan section on a
ViT-L/16-shaped model, 24 blocks of width 1024, at 64 px; batch 8; AdamW; full fine-tuning with jtl's step).

- ``remat``: for ``config.model.remat`` none / full / dots_saveable, without and with ``scan_layers``, the
  compiled step's temporary bytes (XLA's ``temp_size_in_bytes``: activations kept for the backward pass,
  gradients, optimizer intermediates), its argument bytes (the donated train state and the batch) and peak
  (arguments + outputs + temporaries - aliased), XLA's FLOPs of the unrolled (unscanned) steps (whether the
  recomputation survived compilation), and the median step time (relative to the first row's).
- ``scan``: for ``config.model.scan_layers`` off / on (each without and with full remat), the seconds to trace and
  lower the step, the seconds XLA takes to compile it, and its temporary bytes. Compiled from shapes only: no
  parameters are materialised.

Each section is one function returning rows plus a title for :func:`print_table`; a new section is one more such
function and one more entry of ``SECTIONS``. The per-device bytes of a sharded train state need several devices
and have their own script, ``benchmarks/sharding.py``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks._steps import TrainStep, everything, flops_of, peak_bytes, time_interleaved
from jtl import models
from jtl.objectives import Classification
from jtl.step import freeze, init_state, make_train_step

NUM_CLASSES = 10
Table = tuple[str, list[dict[str, Any]]]
# The remat values each section compares.
REMAT = models.REMAT
SCAN_REMAT = ("none", "full")


def _model(name: str, image_size: int, overrides: dict[str, Any], **memory: Any) -> Any:
    return models.create(name, num_classes=NUM_CLASSES, image_size=image_size, **overrides, **memory)


def _batch(model: Any, batch_size: int) -> dict[str, jax.Array]:
    rng = np.random.default_rng(0)
    shape = (batch_size, model.image_size, model.image_size, model.num_channels)
    return {
        "image": jnp.asarray(rng.normal(size=shape).astype(np.float32)),
        "label": jnp.asarray(rng.integers(0, NUM_CLASSES, batch_size)),
    }


def _shape(model: Any, image_size: int, batch_size: int) -> str:
    """The model's shape in words, for a table's title."""
    return (
        f"{model.num_layers} blocks, width {model.hidden_size}, {model.num_heads} heads, MLP {model.mlp_dim}, "
        f"patch {model.patch_size}, {image_size} px, batch {batch_size}"
    )


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def remat_section(name: str, image_size: int, batch_size: int, iters: int, overrides: dict[str, Any]) -> Table:
    """The train step with each ``remat`` value, without and with ``scan_layers``: temporary, argument and peak
    bytes, and the step time."""
    steps, rows = {}, []
    plain = _model(name, image_size, overrides)
    batch = _batch(plain, batch_size)
    params = jax.jit(lambda: models.init(plain)["params"])()
    for scan in (False, True):
        for remat in REMAT:
            step = TrainStep(plain.clone(remat=remat, scan_layers=scan), params, batch, everything, NUM_CLASSES)
            memory = step.compiled.memory_analysis()
            rows.append(
                {
                    "scan_layers": scan,
                    "remat": remat,
                    "temporary": _mib(memory.temp_size_in_bytes),
                    "arguments": _mib(memory.argument_size_in_bytes),
                    "peak": _mib(peak_bytes(step.compiled)),
                    # XLA counts a loop's body once, so only the unrolled steps' FLOPs compare.
                    "XLA GFLOP": "-" if scan else f"{flops_of(step.compiled) / 1e9:,.0f}",
                }
            )
            steps[scan, remat] = step
    seconds = time_interleaved({key: lambda s=s: s.run(batch) for key, s in steps.items()}, 1, iters)
    for row in rows:
        took = seconds[row["scan_layers"], row["remat"]]
        row["step time"] = f"{1e3 * took:.0f} ms ({took / seconds[False, REMAT[0]]:.2f}x)"
    return f"remat, {name} shape: {_shape(plain, image_size, batch_size)}", rows


def _compile_seconds(model: Any, batch: dict[str, jax.Array]) -> tuple[float, float, Any]:
    """``(trace + lower seconds, compile seconds, compiled)`` of the train step, from the state's shapes."""
    tx = freeze(optax.adamw(1e-4), everything)
    step = jax.jit(make_train_step(model, Classification(NUM_CLASSES), tx), donate_argnums=0)
    state = jax.eval_shape(lambda: init_state(models.init(model), tx))
    start = time.perf_counter()
    lowered = step.lower(state, batch)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    return lowered_at - start, time.perf_counter() - lowered_at, compiled


def scan_section(name: str, image_size: int, batch_size: int, overrides: dict[str, Any]) -> Table:
    """The train step's compile time and temporary bytes without and with ``scan_layers`` (and full remat)."""
    rows = []
    for remat in SCAN_REMAT:
        for scan in (False, True):
            model = _model(name, image_size, overrides, remat=remat, scan_layers=scan)
            lower, compile_, compiled = _compile_seconds(model, _batch(model, batch_size))
            rows.append(
                {
                    "scan_layers": scan,
                    "remat": remat,
                    "trace + lower": f"{lower:.1f} s",
                    "XLA compile": f"{compile_:.1f} s",
                    "temporary": _mib(compiled.memory_analysis().temp_size_in_bytes),
                }
            )
    model = _model(name, image_size, overrides)
    return f"scan, {name} shape: {_shape(model, image_size, batch_size)}", rows


def print_table(title: str, rows: list[dict[str, Any]]) -> list[str]:
    """Prints ``rows`` (dicts with the same keys) as a markdown table under ``title``; returns its lines."""
    header = list(rows[0])
    lines = [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
        *("| " + " | ".join(str(row[k]) for k in header) + " |" for row in rows),
    ]
    print(f"\n{title}\n")
    print("\n".join(lines))
    return lines


SECTIONS: dict[str, Callable[[argparse.Namespace, dict[str, Any]], Table]] = {
    "remat": lambda a, o: remat_section(a.remat_model, a.remat_image_size, a.batch, a.iters, o),
    "scan": lambda a, o: scan_section(a.scan_model, a.scan_image_size, a.batch, o),
}


def main(argv: list[str] | None = None) -> dict[str, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {list(SECTIONS)}")
    parser.add_argument("--remat-model", default="vit-b16", help="the remat section's ViT (jtl.models registry)")
    parser.add_argument("--remat-image-size", type=int, default=224)
    parser.add_argument("--scan-model", default="vit-l16", help="the scan section's ViT (jtl.models registry)")
    parser.add_argument("--scan-image-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iters", type=int, default=3, help="timed steps per remat value (after one warm-up)")
    parser.add_argument("--overrides", default="{}", help="other model fields, as JSON (e.g. a tiny test model)")
    args = parser.parse_args(argv)
    overrides = json.loads(args.overrides)
    print(f"jax {jax.__version__}, {jax.device_count()} {jax.devices()[0].platform} device(s); AdamW, fp32")
    return {name: print_table(*SECTIONS[name](args, overrides)) for name in args.sections.split(",")}


if __name__ == "__main__":
    main()
