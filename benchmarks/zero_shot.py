"""Zero-shot, fine-tuned and WiSE-FT on the digits testbed (``configs/zero_shot.py``): a tiny CLIP pretrained in
PyTorch, then jtl's zero-shot head, fine-tuning from it on a shifted target, and the weights interpolated between
the two, ID and OOD accuracy mean ± std over seeds.

    python -m benchmarks.zero_shot [--seeds 0,1,2] [--steps 200] [--shots 10] [--pretrain-steps 1000]

1. A simulated hub checkpoint: a ``transformers`` ``CLIPModel`` (image side 8x8x1, patches 2x2) is trained
   contrastively in PyTorch on half of scikit-learn's digits (``half=0``, clean), every image with a caption drawn
   from varied templates and spellings (``"a photo of the digit seven"``, ``"handwritten 7"``, ...), through a
   word-level tokenizer; ``save_pretrained`` writes it and the tokenizer to a directory.
2. Every run is ``python -m jtl.train --config configs/zero_shot.py:<directory> --config.seed=<seed>``: the vision
   tower starts with the zero-shot head (``config.model.zero_shot``, the ten number words in three templates), then
   fine-tunes end to end on a few shots per class of the other half of the digits under a shift
   (``config.data.shift``, the ID distribution), and is evaluated on that half's shifted test split (ID) and on the
   same split under a second shift on top (``config.data.ood_shift``, OOD). ``config.wise_ft`` evaluates the
   interpolations between the start (alpha 0: the zero-shot classifier) and the fine-tuned weights (alpha 1).
The seeds change the shots, the test split and the fine-tuning; the pretrained checkpoint is the same.
"""

from __future__ import annotations

import argparse
import contextlib
import io
from pathlib import Path

import numpy as np
from absl import logging as absl_logging

from jtl.config import load_config
from jtl.train import train_and_evaluate

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "zero_shot.py"
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CAPTIONS = (
    "a photo of the digit {word}",
    "a photo of the digit {digit}.",
    "handwritten {digit}",
    "a handwritten {word}.",
    "the number {word}",
    "{word}",
    "{digit}",
    "a scan of a handwritten {word}",
    "an image of the numeral {digit}",
    "a drawing of a {word}.",
)
SPECIAL = ("<pad>", "<bos>", "<unk>", "<eos>")  # ids 0-3
# The towers' widths and depths (the images are 8x8x1 in 2x2 patches; the captions at most 16 tokens).
VISION = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4)
TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)


def _vocabulary() -> list[str]:
    words = {".", *NUMBER_WORDS, *(str(d) for d in range(10))}
    for caption in CAPTIONS:
        words.update(w for w in caption.replace(".", " ").split() if "{" not in w)
    return [*SPECIAL, *sorted(words)]


def word_tokenizer() -> object:
    """A word-level ``transformers`` tokenizer over the captions' words: ``<bos> words <eos>``, padded with
    ``<pad>`` (CLIP's text tower pools at the first ``<eos>``, id 3)."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(_vocabulary())}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    special = [("<bos>", 1), ("<eos>", 3)]
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A <eos>", special_tokens=special)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_input_names=["input_ids", "attention_mask"],
        model_max_length=16,
    )


def pretrain(directory: Path, steps: int, seed: int = 0, batch_size: int = 64, verbose: bool = True) -> dict:
    """Trains a tiny ``transformers`` CLIPModel contrastively on the clean digits of ``half=0`` (random captions,
    one-pixel random translations) and saves it and its tokenizer in ``directory``; returns its zero-shot accuracy
    on that half's images, by PyTorch's own ``logits_per_image``."""
    import torch
    import transformers

    from jtl.data import digits_task

    torch.set_num_threads(1)  # its ops are tiny: more threads only wait on each other (and on a busy machine)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    tokenizer = word_tokenizer()
    config = transformers.CLIPConfig(
        vision_config={**VISION, "image_size": 8, "patch_size": 2, "num_channels": 1},
        text_config={
            **TEXT, "vocab_size": len(tokenizer), "max_position_embeddings": 16, "pad_token_id": 0,
            "bos_token_id": 1, "eos_token_id": 3,
        },
        projection_dim=32,
    )  # fmt: skip
    model = transformers.CLIPModel(config).train()
    task = digits_task(range(10), shots=None, seed=seed, half=0)
    images = np.concatenate([task["train"].images, task["test"].images]).transpose(0, 3, 1, 2)
    labels = np.concatenate([task["train"].labels, task["test"].labels])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=steps, pct_start=0.1)
    for step in range(steps):
        index = rng.choice(len(images), batch_size, replace=False)
        batch = np.pad(images[index], ((0, 0), (0, 0), (1, 1), (1, 1)))
        dx, dy = rng.integers(0, 3, size=2)
        pixels = torch.from_numpy(np.ascontiguousarray(batch[:, :, dy : dy + 8, dx : dx + 8]))
        captions = [
            CAPTIONS[rng.integers(len(CAPTIONS))].format(word=NUMBER_WORDS[label], digit=label)
            for label in labels[index]
        ]
        tokens = tokenizer(captions, padding=True, return_tensors="pt")
        loss = model(pixel_values=pixels, **tokens, return_loss=True).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if verbose and (step + 1) % max(steps // 5, 1) == 0:
            print(f"pretraining step {step + 1}/{steps}: contrastive loss {loss.item():.3f}", flush=True)
    model.eval()
    with torch.no_grad():
        prompts = tokenizer([f"a photo of the digit {w}." for w in NUMBER_WORDS], padding=True, return_tensors="pt")
        logits = model(pixel_values=torch.from_numpy(images), **prompts).logits_per_image
    accuracy = float((logits.argmax(-1).numpy() == labels).mean())
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return {"pretrain_zero_shot_accuracy": accuracy}


def run(checkpoint: Path, seed: int, steps: int, shots: int, workdir: Path) -> dict:
    config = load_config(f"{CONFIG}:{checkpoint}")
    config.seed = config.data.split_seed = seed
    if steps:
        config.total_steps = steps
        config.log_every = config.eval_every = steps
    if shots:
        config.data.shots = shots
    with contextlib.redirect_stdout(io.StringIO()):
        return train_and_evaluate(config, workdir / f"seed{seed}-steps{steps}-shots{shots}")


def _mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=0, help="fine-tuning steps; 0: the config's")
    parser.add_argument("--shots", type=int, default=0, help="labelled examples per class; 0: the config's")
    parser.add_argument("--pretrain-steps", type=int, default=1000)
    parser.add_argument("--workdir", default="/tmp/jtl-bench-zero-shot")
    args = parser.parse_args(argv)
    absl_logging.set_verbosity(absl_logging.ERROR)
    seeds = [int(s) for s in args.seeds.split(",")]
    workdir = Path(args.workdir)
    checkpoint = workdir / f"digits-clip-{args.pretrain_steps}"
    pretrained = pretrain(checkpoint, args.pretrain_steps)
    print(
        f"pretrained CLIP in {checkpoint}: zero-shot accuracy {pretrained['pretrain_zero_shot_accuracy']:.3f} on its "
        "own (clean) pretraining images, by PyTorch",
        flush=True,
    )
    runs = [run(checkpoint, seed, args.steps, args.shots, workdir) for seed in seeds]
    config = load_config(f"{CONFIG}:{checkpoint}")
    alphas = [a for a in config.wise_ft if 0 < a < 1]
    rows = [
        ("zero-shot (alpha 0)", "wise_ft/0/"),
        *((f"WiSE-FT alpha {a:g}", f"wise_ft/{a:g}/") for a in alphas),
        ("fine-tuned (alpha 1)", ""),
    ]
    shift, ood = config.data.shift, f"{config.data.shift}+{config.data.ood_shift}"
    table = [f"| model | ID accuracy ({shift}) | OOD accuracy ({ood}) |", "|---|---|---|"]
    for name, prefix in rows:
        table.append(
            f"| {name} | {_mean_std([r[prefix + 'eval/accuracy'] for r in runs])} "
            f"| {_mean_std([r[prefix + 'eval_ood/accuracy'] for r in runs])} |"
        )
    shots = args.shots or config.data.shots
    print(f"\nseeds {seeds}; {shots} shots per class\n" + "\n".join(table))
    return {"pretrained": pretrained, "runs": runs, "table": table}


if __name__ == "__main__":
    main()
