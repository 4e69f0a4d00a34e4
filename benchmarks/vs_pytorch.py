"""jtl vs PyTorch: the same transformer's train and forward steps, timed side by side in one process.

Run: ``python -m benchmarks.vs_pytorch`` (defaults: ViT-S/16 at 224 and BERT-base at 128 tokens, batch 8, fp32,
AdamW, on the CPU with ``torch.set_num_threads`` = cores). jtl's steps are the trainer's own
(``jtl.step.make_train_step`` under ``jax.jit`` with the state donated, frozen leaves not differentiated);
PyTorch's are Hugging Face ``transformers``' ``ViTForImageClassification`` / ``BertForSequenceClassification``
with ``torch.optim.AdamW`` over the parameters that train. Modes: ``full`` fine-tuning, the ``last2`` blocks and
the head, the ``frozen`` backbone (a new head), ``lora`` (rank 8 on the attention's query and value, and the
head) and ``forward`` (inference). Inputs are random, never zero. Prints median seconds per step of ``--iters``
timed steps after warm-up and compilation (the two frameworks' steps alternate, so the machine's drift
affects both alike), and each PyTorch/jtl ratio (> 1: jtl is faster).

``--xla-attempts`` reruns the first model's full step in one subprocess per XLA CPU option set (``XLA_FLAGS``
must be set before JAX starts) and prints each attempt's ratio, measured against PyTorch in that same process.

On a GPU: ``--dtype bfloat16`` computes in bf16 (jtl: ``dtype=bfloat16`` params kept in fp32; PyTorch: autocast),
``--torch-compile`` compiles PyTorch's steps, and ``--peak-tflops`` turns FLOPs (from XLA's cost analysis of
jtl's compiled step, used for both frameworks) into MFU. ``benchmarks/gpu.sh`` runs that configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._steps import TrainStep, everything, flops_of, time_interleaved
from jtl import models
from jtl.adapters import LORA_TRAINABLE, LoRASpec, add_adapters, with_lora

MODES = ("full", "last2", "frozen", "lora", "forward")
NUM_CLASSES = 10
LORA = LoRASpec(rank=8, alpha=16.0)
# Each attempt is one process; the first is the baseline every other ratio is read against.
XLA_ATTEMPTS = {
    "default": "",
    "oneDNN (--xla_cpu_use_onednn)": "--xla_cpu_use_onednn=true",
    "oneDNN custom calls": "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true",
    "XNNPACK (--xla_cpu_use_xnnpack)": "--xla_cpu_use_xnnpack=true",
    "thunks off (--xla_cpu_use_thunk_runtime=false)": "--xla_cpu_use_thunk_runtime=false",
    "fast math (--xla_cpu_enable_fast_math)": "--xla_cpu_enable_fast_math=true",
    "no YNNPACK fusions (Eigen matmuls)": "--xla_cpu_experimental_ynn_fusion_type=",
}


def random_inputs(family: str, batch: int, image_size: int, seq_len: int, vocab: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, NUM_CLASSES, size=batch)
    if family == "vit":
        return {"image": rng.normal(size=(batch, image_size, image_size, 3)).astype(np.float32), "label": labels}
    return {
        "input_ids": rng.integers(1, vocab, size=(batch, seq_len)).astype(np.int32),
        "attention_mask": np.ones((batch, seq_len), np.int32),
        "label": labels,
    }


# ---------------------------------------------------------------------------------------------- jtl


def jtl_trainable(model: Any, mode: str) -> Any:
    """What trains in each mode, as the trainer's ``trainable`` / ``train_last_n`` / ``lora`` set it."""
    if mode == "full":
        return everything
    if mode == "frozen":
        return ("head/.*",)
    if mode == "lora":
        return LORA_TRAINABLE
    return models.top_layers(model, 2 + 1)  # the last 2 blocks and the top (final norm, head)


def jtl_runs(name: str, inputs: dict, modes: list[str], dtype: str) -> Iterator[tuple[Callable[[], Any], float]]:
    """For each mode in turn, ``(run one step, FLOPs of the compiled step from XLA's cost analysis)``."""
    overrides = {"dtype": jnp.bfloat16} if dtype == "bfloat16" else {}
    if name.startswith("vit"):
        overrides["image_size"] = inputs["image"].shape[1]
    else:  # as PyTorch's side: no dropout, so both compute the same thing
        overrides.update(dropout_rate=0.0, attention_dropout_rate=0.0)
    model = models.create(name, num_classes=NUM_CLASSES, head_zero_init=False, **overrides)
    params = models.init(model)["params"]
    batch = jax.device_put(inputs)
    for mode in modes:
        if mode == "forward":
            forward = jax.jit(lambda p, b, model=model: model.apply({"params": p}, *models.model_inputs(b)))
            compiled = forward.lower(params, batch).compile()
            yield (lambda f=compiled: jax.block_until_ready(f(params, batch))), flops_of(compiled)
            continue
        mode_model, mode_params = model, params
        if mode == "lora":
            mode_model = with_lora(model, LORA)
            mode_params = add_adapters(params, LORA, jax.random.PRNGKey(1))
        step = TrainStep(mode_model, mode_params, batch, jtl_trainable(model, mode), NUM_CLASSES)
        yield (lambda step=step: step.run(batch)), flops_of(step.compiled)


# ---------------------------------------------------------------------------------------------- PyTorch


def torch_model(name: str, inputs: dict) -> Any:
    import transformers

    is_vit = name.startswith("vit")
    fields = models.vit.vit_config(name) if is_vit else models.bert.bert_config(name)
    shared = {
        "hidden_size": fields["hidden_size"],
        "num_hidden_layers": fields["num_layers"],
        "num_attention_heads": fields["num_heads"],
        "num_labels": NUM_CLASSES,
    }
    if is_vit:
        image_size = inputs["image"].shape[1]
        config = transformers.ViTConfig(
            **shared, intermediate_size=fields["mlp_dim"], patch_size=fields["patch_size"], image_size=image_size
        )
        return transformers.ViTForImageClassification(config)
    config = transformers.BertConfig(
        **shared,
        intermediate_size=fields["intermediate_size"],
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return transformers.BertForSequenceClassification(config)


def torch_trainable(model: Any, mode: str) -> None:
    """Sets ``requires_grad`` for the mode; LoRA replaces the attention's query/value with adapted layers."""
    import torch

    is_vit = hasattr(model, "vit")
    backbone = model.vit if is_vit else model.bert
    layers = backbone.layers if is_vit else backbone.encoder.layer
    for p in model.parameters():
        p.requires_grad_(mode == "full")
    if mode == "full":
        return
    heads = [model.classifier, backbone.layernorm if is_vit else backbone.pooler]
    trainable = heads + (list(layers[-2:]) if mode == "last2" else [])
    for module in trainable:
        for p in module.parameters():
            p.requires_grad_(True)
    if mode != "lora":
        return

    class LoRALinear(torch.nn.Module):
        def __init__(self, base: torch.nn.Linear) -> None:
            super().__init__()
            self.base = base
            self.lora_a = torch.nn.Parameter(torch.randn(LORA.rank, base.in_features) / LORA.rank)
            self.lora_b = torch.nn.Parameter(torch.zeros(base.out_features, LORA.rank))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.base(x) + (x @ self.lora_a.T @ self.lora_b.T) * LORA.scale

    # transformers' ViT names the projections q_proj/v_proj, its BERT query/value.
    names = ("q_proj", "v_proj") if is_vit else ("query", "value")
    for layer in layers:
        attention = layer.attention if is_vit else layer.attention.self
        for name in names:
            setattr(attention, name, LoRALinear(getattr(attention, name)))


def torch_runs(name: str, inputs: dict, modes: list[str], dtype: str, compile_steps: bool) -> Iterator[Callable]:
    """For each mode in turn, a function that runs one step (each on a fresh model)."""
    import torch

    device = "cuda" if torch.cuda.is_available() and jax.default_backend() == "gpu" else "cpu"
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bfloat16")
    labels = torch.as_tensor(inputs["label"], device=device)
    if "image" in inputs:
        features = {"pixel_values": torch.as_tensor(inputs["image"].transpose(0, 3, 1, 2), device=device)}
    else:
        features = {k: torch.as_tensor(inputs[k], dtype=torch.long, device=device) for k in ("input_ids",)}
        features["attention_mask"] = torch.as_tensor(inputs["attention_mask"], dtype=torch.long, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for mode in modes:
        torch.manual_seed(0)
        model = torch_model(name, inputs)
        training = mode != "forward"
        if training:
            torch_trainable(model, mode)
        model.to(device).train(training)
        # The usual recipe: the model compiled (forward and, through AOTAutograd, backward), the optimizer eager.
        call = torch.compile(model) if compile_steps else model

        def forward(call: Any = call) -> None:
            with torch.no_grad(), autocast:
                call(**features)
            sync()

        if not training:
            yield forward
            continue
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

        def step(call: Any = call, optimizer: Any = optimizer) -> None:
            with autocast:
                loss = torch.nn.functional.cross_entropy(call(**features).logits.float(), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            sync()

        yield step


# ---------------------------------------------------------------------------------------------- main


def measure(args: argparse.Namespace, name: str) -> dict[str, dict[str, float]]:
    family = "vit" if name.startswith("vit") else "bert"
    vocab = 30522
    inputs = random_inputs(family, args.batch, args.image_size, args.seq_len, vocab)
    results: dict[str, dict[str, float]] = {mode: {} for mode in args.modes}
    # One mode at a time, both frameworks built and timed in alternation, then released.
    jtl_modes = jtl_runs(name, inputs, args.modes, args.dtype) if "jtl" in args.frameworks else None
    torch_modes = torch_runs(name, inputs, args.modes, args.dtype, args.torch_compile)
    torch_modes = torch_modes if "torch" in args.frameworks else None
    for mode in args.modes:
        runs = {}
        if torch_modes is not None:
            runs["torch"] = next(torch_modes)
        if jtl_modes is not None:
            runs["jtl"], results[mode]["flops"] = next(jtl_modes)
        results[mode].update(time_interleaved(runs, args.warmup, args.iters))
    return results


def print_table(name: str, args: argparse.Namespace, results: dict[str, dict[str, float]]) -> None:
    shape = f"{args.image_size} px" if name.startswith("vit") else f"{args.seq_len} tokens"
    print(f"\n{name}, {shape}, batch {args.batch}, {args.dtype}, AdamW; median s/step of {args.iters}")
    mfu = args.peak_tflops > 0
    header = f"{'mode':8} {'jtl s':>8} {'torch s':>8} {'torch/jtl':>9} {'jtl ex/s':>9} {'torch ex/s':>10}"
    print(header + (f" {'GFLOP':>8} {'jtl MFU':>8} {'torch MFU':>9}" if mfu else ""))
    for mode, row in results.items():
        jtl_s, torch_s = row.get("jtl", float("nan")), row.get("torch", float("nan"))
        line = f"{mode:8} {jtl_s:8.3f} {torch_s:8.3f} {torch_s / jtl_s:9.2f} "
        line += f"{args.batch / jtl_s:9.1f} {args.batch / torch_s:10.1f}"
        if mfu:
            flops, peak = row.get("flops", 0.0), args.peak_tflops * 1e12
            line += f" {flops / 1e9:8.1f} {flops / jtl_s / peak:8.1%} {flops / torch_s / peak:9.1%}"
        print(line)


def xla_attempts(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """The first model's full step under each XLA option set, each in its own process with PyTorch beside it."""
    results = {}
    base = [a for a in os.environ.get("XLA_FLAGS", "").split() if a]
    for label, flags in XLA_ATTEMPTS.items():
        env = {**os.environ, "XLA_FLAGS": " ".join([*base, *flags.split()])}
        command = [sys.executable, "-m", "benchmarks.vs_pytorch", "--models", args.models[0], "--modes", "full"]
        command += ["--batch", str(args.batch), "--iters", str(args.iters), "--image-size", str(args.image_size)]
        command += ["--json"]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"{label}: failed ({last})")
            continue
        row = json.loads(done.stdout.strip().splitlines()[-1])[args.models[0]]["full"]
        results[label] = row
    print(f"\nXLA CPU options, {args.models[0]} full step (one process each, PyTorch measured beside jtl)")
    print(f"{'attempt':48} {'jtl s':>7} {'torch s':>8} {'torch/jtl':>9}")
    for label, row in results.items():
        print(f"{label:48} {row['jtl']:7.3f} {row['torch']:8.3f} {row['torch'] / row['jtl']:9.2f}")
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vit-s16", "bert-base"])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--frameworks", nargs="+", default=["jtl", "torch"], choices=["jtl", "torch"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--torch-compile", action="store_true", help="torch.compile PyTorch's steps")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="the device's peak, for MFU (0: no MFU)")
    parser.add_argument(
        "--xla-attempts", action="store_true", help="time the XLA CPU option sets (first model, full step)"
    )
    parser.add_argument("--json", action="store_true", help="print the results as one JSON line instead")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    if args.xla_attempts:
        return xla_attempts(args)
    if not args.json:
        print(
            f"jax {jax.__version__} ({jax.default_backend()}, {jax.devices()[0].device_kind}), "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads); "
            f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
        )
    results = {}
    for name in args.models:
        results[name] = measure(args, name)
        if not args.json:
            print_table(name, args, results[name])
    if args.json:
        print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
