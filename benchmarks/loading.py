"""Loading benchmark: base-sized Hugging Face checkpoints (ViT-B/16, DINOv2-B/14, RoBERTa-base) through
``jtl.weights.load_pretrained`` against ``safetensors.numpy.load_file`` of the same file, in time and in peak memory.

Run: ``python benchmarks/loading.py`` (writes each random-weight ``model.safetensors``, 330-480 MiB, to a
temporary directory in turn). Each measurement runs in a fresh process, so peak RSS is that process's own; the figure
is the peak above the RSS after imports (each side's library, jtl's model families included, is imported before the
clock starts). Prints medians over ``--repeats`` interleaved pairs of processes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CHILD = r"""
import json, resource, sys, time
mode, path = sys.argv[1], sys.argv[2]

def rss_mib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024

if mode == "safetensors":
    from safetensors.numpy import load_file
    base = rss_mib()
    start = time.perf_counter()
    tensors = load_file(path + "/model.safetensors")
    seconds = time.perf_counter() - start
else:
    import jax
    import jtl.models  # the library imported before the clock starts, as safetensors' is
    from jtl.weights import load_pretrained
    base = rss_mib()
    start = time.perf_counter()
    model, variables, report = load_pretrained(path, verbose=False)
    jax.block_until_ready(variables)
    seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": seconds, "peak_mib": peak - base}))
"""


# The encoder blocks of each layout: (attention q/k/v, attention output, MLP in, MLP out, norms, extras).
_BLOCK_NAMES = {
    "vit": (
        "attention.attention.{}", "attention.output.dense", "intermediate.dense", "output.dense",
        ("layernorm_before", "layernorm_after"), (),
    ),
    "dinov2": (
        "attention.attention.{}", "attention.output.dense", "mlp.fc1", "mlp.fc2", ("norm1", "norm2"),
        ("layer_scale1.lambda1", "layer_scale2.lambda1"),
    ),
    "roberta": (
        "attention.self.{}", "attention.output.dense", "intermediate.dense", "output.dense",
        ("attention.output.LayerNorm", "output.LayerNorm"), (),
    ),
}  # fmt: skip


def write_checkpoint(directory: Path, layout: str, depth: int = 12, hidden: int = 768, mlp: int = 3072) -> int:
    """Writes a random base-sized model in Hugging Face's layout (config.json + model.safetensors): ``vit``
    (ViT-B/16 at 224), ``dinov2`` (DINOv2-B/14 at 518, as the hub's) or ``roberta`` (RoBERTa-base); returns the
    file's bytes."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)

    def rand(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32) * 0.02

    def linear(name: str, out: int, inp: int) -> dict[str, np.ndarray]:
        return {f"{name}.weight": rand(out, inp), f"{name}.bias": rand(out)}

    prefix = {"vit": "vit.", "dinov2": "", "roberta": "roberta."}[layout]
    if layout == "roberta":
        state = {
            "roberta.embeddings.word_embeddings.weight": rand(50265, hidden),
            "roberta.embeddings.position_embeddings.weight": rand(514, hidden),
            "roberta.embeddings.token_type_embeddings.weight": rand(1, hidden),
            "roberta.embeddings.LayerNorm.weight": rand(hidden),
            "roberta.embeddings.LayerNorm.bias": rand(hidden),
            **linear("roberta.pooler.dense", hidden, hidden),
        }
        config = {"model_type": "roberta", "vocab_size": 50265, "max_position_embeddings": 514, "type_vocab_size": 1}
    else:
        patch, positions = (16, 197) if layout == "vit" else (14, 1370)
        state = {
            f"{prefix}embeddings.cls_token": rand(1, 1, hidden),
            f"{prefix}embeddings.position_embeddings": rand(1, positions, hidden),
            f"{prefix}embeddings.patch_embeddings.projection.weight": rand(hidden, 3, patch, patch),
            f"{prefix}embeddings.patch_embeddings.projection.bias": rand(hidden),
            f"{prefix}layernorm.weight": rand(hidden),
            f"{prefix}layernorm.bias": rand(hidden),
        }
        if layout == "vit":
            state.update(linear("classifier", 1000, hidden))
        config = {"model_type": layout, "image_size": 224 if layout == "vit" else 518, "patch_size": patch}
    qkv, attention_out, mlp_in, mlp_out, norms, extras = _BLOCK_NAMES[layout]
    for i in range(depth):
        block = f"{prefix}encoder.layer.{i}."
        for projection in ("query", "key", "value"):
            state.update(linear(block + qkv.format(projection), hidden, hidden))
        state.update(linear(block + attention_out, hidden, hidden))
        state.update(linear(block + mlp_in, mlp, hidden))
        state.update(linear(block + mlp_out, hidden, mlp))
        for norm in norms:
            state[block + norm + ".weight"], state[block + norm + ".bias"] = rand(hidden), rand(hidden)
        state.update({block + extra: rand(hidden) for extra in extras})
    save_file(state, str(directory / "model.safetensors"))
    config.update(
        hidden_size=hidden, num_hidden_layers=depth, num_attention_heads=hidden // 64, intermediate_size=mlp,
        hidden_act="gelu",
    )  # fmt: skip
    (directory / "config.json").write_text(json.dumps(config))
    return (directory / "model.safetensors").stat().st_size


def measure(mode: str, directory: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(directory)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--depth", type=int, default=12, help="blocks (12 for base models; fewer for a smoke run)")
    parser.add_argument("--layouts", default="vit,dinov2,roberta", help="of vit (ViT-B/16), dinov2, roberta")
    args = parser.parse_args(argv)

    names = {"vit": "ViT-B/16", "dinov2": "DINOv2-B/14", "roberta": "RoBERTa-base"}
    labels = {"safetensors": "safetensors.numpy.load_file", "jtl": "jtl.weights.load_pretrained"}
    results = {}
    for layout in args.layouts.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            directory = Path(tmp)
            size = write_checkpoint(directory, layout, depth=args.depth)
            runs: dict[str, list[dict[str, float]]] = {"safetensors": [], "jtl": []}
            for _ in range(args.repeats):  # interleaved, so that a noisy stretch of the machine hits both alike
                for mode, mode_runs in runs.items():
                    mode_runs.append(measure(mode, directory))
        results[layout] = {
            mode: {key: statistics.median(r[key] for r in mode_runs) for key in ("seconds", "peak_mib")}
            for mode, mode_runs in runs.items()
        }
        base = results[layout]["safetensors"]
        print(f"checkpoint: {names[layout]} layout, depth {args.depth}, {size / 2**20:.0f} MiB safetensors (float32)")
        print(f"{'loader':<40} {'seconds':>8} {'x':>6} {'peak MiB':>9} {'x':>6}")
        for mode, r in results[layout].items():
            print(
                f"{labels[mode]:<40} {r['seconds']:8.3f} {r['seconds'] / base['seconds']:6.2f} "
                f"{r['peak_mib']:9.0f} {r['peak_mib'] / base['peak_mib']:6.2f}"
            )
    return results


if __name__ == "__main__":
    main()
