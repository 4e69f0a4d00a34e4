#!/usr/bin/env bash
# jtl vs PyTorch on one GPU: ViT-B/16 at 224, bf16, images/s and MFU for full fine-tuning, the frozen backbone
# and LoRA, jtl's steps against transformers' ViT with bf16 autocast and torch.compile, in one process.
#
#   bash benchmarks/gpu.sh               # on an H100/H200 with JAX (CUDA), PyTorch and transformers installed
#   bash benchmarks/gpu.sh --cpu-smoke   # the same script on the CPU with a tiny ViT (the test suite runs this)
#
# Then the sharded variant: ViT-L/16 with its parameters and AdamW state split over every visible GPU (FSDP),
# remat, bf16 compute: per-device state and temporary bytes, images/s and peak memory in use.
#
# It installs nothing: jtl is imported from this checkout, and a missing dependency is named before anything runs.
# PEAK_TFLOPS overrides the bf16 dense peak used for MFU (default: 989.5 for H100 SXM and H200, from the name).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # PyTorch and JAX share the GPU's memory in one process

"$PY" - <<'PYEOF'
import importlib.util, sys
missing = [m for m in ("jax", "flax", "optax", "torch", "transformers", "ml_collections", "numpy")
           if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"benchmarks/gpu.sh: missing Python packages: {', '.join(missing)} (pip install -e . first)")
PYEOF

# The sharded variant: a model that needs its state split, FSDP over every visible device, remat (as
# configs/large_models.py), and the CPU smoke run also scans the blocks.
LARGE='{"dtype": "bfloat16", "remat": "full"}'
SMOKE='{"dtype": "bfloat16", "remat": "full", "scan_layers": true}'

if [[ "${1:-}" == "--cpu-smoke" ]]; then
  env JAX_PLATFORMS=cpu "$PY" -m benchmarks.vs_pytorch --models vit-ti16 --image-size 32 --batch 2 \
    --warmup 1 --iters 1 --dtype bfloat16 --modes full lora --peak-tflops 1
  exec env JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=2 "$PY" -m benchmarks.sharding \
    --models vit-testing --image-size 16 --min-size 0 --devices 2 --steps 1 --overrides "$SMOKE"
fi

name="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
case "$name" in
  *H100*|*H200*) peak="${PEAK_TFLOPS:-989.5}" ;;
  *) peak="${PEAK_TFLOPS:?set PEAK_TFLOPS to the bf16 dense peak of: $name}" ;;
esac
echo "GPU: $name (bf16 dense peak $peak TFLOP/s)"
"$PY" -m benchmarks.vs_pytorch --models vit-b16 --image-size 224 --batch 128 --dtype bfloat16 --torch-compile \
  --warmup 3 --iters 10 --modes full frozen lora --peak-tflops "$peak"

gpus="$(nvidia-smi --list-gpus | wc -l)"
echo "Sharded: ViT-L/16 at 224, bf16 compute, remat full, FSDP over $gpus GPU(s)"
"$PY" -m benchmarks.sharding --models vit-l16 --image-size 224 --devices "$gpus" --per-device 32 --steps 10 \
  --overrides "$LARGE"
