"""The transfer methods on the offline testbed (``configs/quickstart.py``): target accuracy on held-out digits
5-9 (10 labels per class) and on the same digits rotated 25 degrees (out of distribution), mean ± std over seeds.

    python -m benchmarks.transfer_methods [--section strategies|lora|negative|all] [--seeds 0,1,2]

- ``strategies``: scratch, linear probe, last block, full fine-tuning, LP-FT, LLRD, ULMFiT, L2-SP, BiT-HyperRule.
- ``lora``: the parameter-efficient methods (LoRA, DoRA, (IA)^3, VPT, adapters, QLoRA, BitFit) vs full
  fine-tuning vs linear probe: accuracy, trainable parameters, step time.
- ``negative``: sources pretrained on correct, 50% shuffled and fully shuffled labels: transferability scores
  (LogME, H-score, NCE, LEEP) before, fine-tuned accuracy after, and the scratch-baseline guard.

Every run is ``python -m jtl.train --config configs/quickstart.py:<variant>`` with a seed (and the source model).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from pathlib import Path

import jax
import numpy as np
from absl import logging as absl_logging

import jtl.masking as jm
from jtl import data, models, optim
from jtl.config import load_config
from jtl.features import extract_features, h_score, leep, logme, nce
from jtl.quickstart import CONFIG, pretrained_source
from jtl.train import train_and_evaluate
from jtl.weights import load_pretrained

STRATEGIES = {
    "from scratch": "scratch",
    "linear probe": "frozen",
    "last block + head": "last1",
    "full fine-tuning": "full",
    "LP-FT": "lpft",
    "LLRD (0.7)": "llrd",
    "ULMFiT (gradual unfreezing)": "ulmfit",
    "L2-SP": "l2sp",
    "BiT-HyperRule": "bit",
}
PEFT = {
    "linear probe": "frozen",
    "LoRA r=4": "lora",
    "DoRA r=4": "dora",
    "(IA)^3": "ia3",
    "VPT deep, 4 prompts": "vpt",
    "Houlsby adapters 8": "adapters",
    "QLoRA NF4 r=4": "qlora",
    "BitFit": "bitfit",
    "full fine-tuning": "full",
}
SOURCES = {"correct labels": "source", "50% shuffled": "source-shuffled50", "100% shuffled": "source-shuffled100"}


def run(variant: str, seed: int, workdir: Path, source: Path | None, steps: int, **changes) -> dict:
    config = load_config(f"{CONFIG}:{variant}")
    config.seed = seed
    if steps and not config.hyperrule:
        config.total_steps = steps
    if source is not None and variant != "scratch":
        config.model.pretrained = str(source)
    for key, value in changes.items():
        node = config
        *path, last = key.split(".")
        for part in path:
            node = node[part]
        node[last] = value
    tag = "-".join([variant, f"seed{seed}", f"steps{steps}", *(f"{k}{v}" for k, v in changes.items())])
    with contextlib.redirect_stdout(io.StringIO()):
        result = train_and_evaluate(config, workdir / tag)
    records = [json.loads(line) for line in (workdir / tag / "metrics.jsonl").read_text().splitlines()]
    rates = [r["train/examples_per_second"] for r in records if "train/examples_per_second" in r][1:]
    result["ms_per_step"] = 1000 * config.batch_size / np.mean(rates) if rates else float("nan")
    model = models.create(config.model.name, num_classes=config.num_classes, **dict(config.model.overrides))
    mask = jm.resolve_mask(optim.trainable(config, model), result["params"])
    leaves, trainable = jax.tree_util.tree_leaves(result["params"]), jax.tree_util.tree_leaves(mask)
    result["trainable"] = sum(x.size for x, t in zip(leaves, trainable, strict=True) if t)
    result["total"] = sum(x.size for x in leaves)
    return result


def _mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def strategies(seeds: list[int], workdir: Path, source: Path, steps: int) -> list[str]:
    rows = ["| method | target accuracy | rotated (OOD) accuracy |", "|---|---|---|"]
    for name, variant in STRATEGIES.items():
        results = [run(variant, seed, workdir, source, steps) for seed in seeds]
        rows.append(
            f"| {name} | {_mean_std([r['eval/accuracy'] for r in results])} "
            f"| {_mean_std([r['eval_ood/accuracy'] for r in results])} |"
        )
    return rows


def peft(seeds: list[int], workdir: Path, source: Path, steps: int) -> list[str]:
    rows = ["| method | target accuracy | trainable params | ms / step |", "|---|---|---|---|"]
    for name, variant in PEFT.items():
        results = [run(variant, seed, workdir, source, steps) for seed in seeds]
        share = results[0]["trainable"] / results[0]["total"]
        rows.append(
            f"| {name} | {_mean_std([r['eval/accuracy'] for r in results])} "
            f"| {results[0]['trainable']:,} ({share:.1%}) | {np.mean([r['ms_per_step'] for r in results]):.2f} |"
        )
    return rows


def scores_of(source: Path) -> dict[str, float]:
    """Transferability of a source model to the target training set (10 labels x 5 digits)."""
    train = data.digits_task((5, 6, 7, 8, 9), shots=10)["train"]
    model, variables, _ = load_pretrained(str(source), num_classes=0, verbose=False)
    features, labels = extract_features(model, variables, data.eval_batches(train, 50))
    # LEEP and NCE read the source classifier's own predictions over digits 0-4.
    classifier, source_variables, _ = load_pretrained(str(source), verbose=False)
    batch = next(data.eval_batches(train, len(train)))
    probs = jax.nn.softmax(classifier.apply(source_variables, batch["image"]))
    return {
        "LogME": float(logme(features, labels, 5)),
        "H-score": float(h_score(features, labels, 5)),
        "NCE": float(nce(np.argmax(probs, -1), labels, 5, 5)),
        "LEEP": float(leep(probs, labels, 5)),
    }


def negative(seeds: list[int], workdir: Path, source_steps: int, steps: int, verbose: bool) -> list[str]:
    rows = [
        "| source | LogME | H-score | NCE | LEEP | fine-tuned accuracy | from scratch | guard |",
        "|---|---|---|---|---|---|---|---|",
    ]
    by_source = {}
    for name, variant in SOURCES.items():
        cache = workdir / (f"{variant}-steps{source_steps}" if source_steps else variant)
        with contextlib.redirect_stdout(io.StringIO()) if not verbose else contextlib.nullcontext():
            source = pretrained_source(cache, quiet=True, steps=source_steps, variant=variant)
        scores = scores_of(source)
        # The guard's baseline uses the from-scratch variant's rate (configs/quickstart.py:scratch).
        guard = {"baseline.scratch": True, "baseline.learning_rate": 3e-3}
        results = [run("full", seed, workdir / variant, source, steps, **guard) for seed in seeds]
        flagged = sum(r["negative_transfer"] for r in results)
        by_source[name] = (scores, np.mean([r["eval/accuracy"] for r in results]))
        rows.append(
            f"| {name} | {scores['LogME']:.3f} | {scores['H-score']:.3f} | {scores['NCE']:.3f} | {scores['LEEP']:.3f} "
            f"| {_mean_std([r['eval/accuracy'] for r in results])} "
            f"| {_mean_std([r['baseline/eval/accuracy'] for r in results])} "
            f"| negative transfer flagged in {flagged}/{len(results)} seeds |"
        )
    by_accuracy = sorted(by_source, key=lambda n: -by_source[n][1])
    rows.append("")
    rows.append(f"Sources by fine-tuned accuracy: {' > '.join(by_accuracy)}.")
    for score in ("LogME", "H-score", "NCE", "LEEP"):
        order = sorted(by_source, key=lambda n: -by_source[n][0][score])
        verdict = "the same order" if order == by_accuracy else "a different order: " + " > ".join(order)
        rows.append(f"{score} ranks them in {verdict}.")
    return rows


def main(argv: list[str] | None = None) -> dict[str, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--section", default="all", choices=["strategies", "lora", "negative", "all"])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--workdir", default="workdirs/transfer_methods")
    parser.add_argument("--steps", type=int, default=0, help="override the target runs' steps (0: config's)")
    parser.add_argument("--source-steps", type=int, default=0, help="override the sources' steps (0: config's)")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    absl_logging.set_verbosity(absl_logging.ERROR)
    seeds = [int(s) for s in args.seeds.split(",")]
    workdir = Path(args.workdir)
    source_dir = workdir / (f"source-steps{args.source_steps}" if args.source_steps else "source")
    tables = {}
    if args.section in ("strategies", "lora", "all"):
        with contextlib.redirect_stdout(io.StringIO()):
            source = pretrained_source(source_dir, quiet=True, steps=args.source_steps)
    if args.section in ("strategies", "all"):
        tables["strategies"] = strategies(seeds, workdir, source, args.steps)
    if args.section in ("lora", "all"):
        tables["lora"] = peft(seeds, workdir, source, args.steps)
    if args.section in ("negative", "all"):
        tables["negative"] = negative(seeds, workdir, args.source_steps, args.steps, args.verbose)
    for name, rows in tables.items():
        print(f"\n{name} (seeds {seeds}):")
        print("\n".join(rows))
    return tables


if __name__ == "__main__":
    main()
