"""Loading benchmark: a ViT-B/16-sized Hugging Face checkpoint through ``jtl.weights.load_pretrained`` against
``safetensors.numpy.load_file`` of the same file, in time and in peak memory.

Run: ``python benchmarks/loading.py`` (writes a random-weight ViT-B/16 ``model.safetensors``, 343 MB, to a
temporary directory). Each measurement runs in a fresh process, so peak RSS is that process's own; the figure
is the peak above the RSS after imports. Prints medians over ``--repeats`` interleaved pairs of processes.
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
    from jtl.weights import load_pretrained
    base = rss_mib()
    start = time.perf_counter()
    model, variables, report = load_pretrained(path, verbose=False)
    jax.block_until_ready(variables)
    seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": seconds, "peak_mib": peak - base}))
"""


def write_vit_b16(directory: Path, hidden: int = 768, depth: int = 12, mlp: int = 3072, patch: int = 16) -> int:
    """Writes a random ViT-B/16 in Hugging Face's layout (config.json + model.safetensors); returns its bytes."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)

    def rand(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32) * 0.02

    state = {
        "vit.embeddings.cls_token": rand(1, 1, hidden),
        "vit.embeddings.position_embeddings": rand(1, 197, hidden),
        "vit.embeddings.patch_embeddings.projection.weight": rand(hidden, 3, patch, patch),
        "vit.embeddings.patch_embeddings.projection.bias": rand(hidden),
        "vit.layernorm.weight": rand(hidden),
        "vit.layernorm.bias": rand(hidden),
        "classifier.weight": rand(1000, hidden),
        "classifier.bias": rand(1000),
    }
    for i in range(depth):
        block = f"vit.encoder.layer.{i}."
        for name in ("attention.attention.query", "attention.attention.key", "attention.attention.value"):
            state[block + name + ".weight"], state[block + name + ".bias"] = rand(hidden, hidden), rand(hidden)
        state[block + "attention.output.dense.weight"] = rand(hidden, hidden)
        state[block + "attention.output.dense.bias"] = rand(hidden)
        state[block + "intermediate.dense.weight"], state[block + "intermediate.dense.bias"] = (
            rand(mlp, hidden),
            rand(mlp),
        )
        state[block + "output.dense.weight"], state[block + "output.dense.bias"] = rand(hidden, mlp), rand(hidden)
        for norm in ("layernorm_before", "layernorm_after"):
            state[block + norm + ".weight"], state[block + norm + ".bias"] = rand(hidden), rand(hidden)
    save_file(state, str(directory / "model.safetensors"))
    config = {
        "model_type": "vit",
        "hidden_size": hidden,
        "num_hidden_layers": depth,
        "num_attention_heads": hidden // 64,
        "intermediate_size": mlp,
        "image_size": 224,
        "patch_size": patch,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-12,
    }
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
    parser.add_argument("--depth", type=int, default=12, help="blocks (12 for ViT-B; fewer for a smoke run)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        size = write_vit_b16(directory, depth=args.depth)
        runs: dict[str, list[dict[str, float]]] = {"safetensors": [], "jtl": []}
        for _ in range(args.repeats):  # interleaved, so that a noisy stretch of the machine hits both alike
            for mode, mode_runs in runs.items():
                mode_runs.append(measure(mode, directory))
        results = {
            mode: {key: statistics.median(r[key] for r in mode_runs) for key in ("seconds", "peak_mib")}
            for mode, mode_runs in runs.items()
        }
    base = results["safetensors"]
    print(f"checkpoint: ViT-B/16 layout, depth {args.depth}, {size / 2**20:.0f} MiB safetensors (float32)")
    print(f"{'loader':<40} {'seconds':>8} {'x':>6} {'peak MiB':>9} {'x':>6}")
    labels = {"safetensors": "safetensors.numpy.load_file", "jtl": "jtl.weights.load_pretrained"}
    for mode, r in results.items():
        print(
            f"{labels[mode]:<40} {r['seconds']:8.3f} {r['seconds'] / base['seconds']:6.2f} "
            f"{r['peak_mib']:9.0f} {r['peak_mib'] / base['peak_mib']:6.2f}"
        )
    return results


if __name__ == "__main__":
    main()
