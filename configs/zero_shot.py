"""Zero-shot start, fine-tuning and WiSE-FT on scikit-learn's digits (offline), from a CLIP checkpoint directory:
the vision tower starts as the zero-shot classifier of the ten number words (its head from the text tower's
embeddings of three prompt templates), fine-tunes end to end on 10 shots per class of the second half of the digits
with Gaussian noise added (the ID target), and is evaluated on that half's noisy test split (ID), on the same split
also rotated by 25 degrees (OOD), and at the WiSE-FT interpolations between the zero-shot and the fine-tuned
weights (``wise_ft/<alpha>/eval/accuracy``, ``wise_ft/<alpha>/eval_ood/accuracy``; alpha 0 is zero-shot).

    python -m jtl.train --config configs/zero_shot.py:/tmp/jtl-bench-zero-shot/digits-clip-1000

The argument is a ``transformers`` CLIP (or SigLIP) directory with its tokenizer, on 8x8 one-channel images;
``python -m benchmarks.zero_shot`` pretrains one in PyTorch on the first half of the digits, writes it there and
runs this config over three seeds (BENCHMARKS.md).
"""

from jtl.config import base_config

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def get_config(arg=None):
    c = base_config()
    c.num_classes = 10
    c.model.pretrained = arg or "/tmp/jtl-bench-zero-shot/digits-clip-1000"
    c.model.zero_shot.classes = NUMBER_WORDS
    c.model.zero_shot.templates = ("a photo of the digit {}.", "the number {}", "handwritten {}")
    c.data.half = 1  # the pretraining saw the other half
    c.data.shots = 10
    c.data.shift = "noise"
    c.data.ood_shift = "rotate"
    c.wise_ft = (0.0, 0.25, 0.5, 0.75)
    c.optimizer = "adamw"
    c.learning_rate = 1e-4
    c.weight_decay = 0.1
    c.warmup_steps = 20
    c.total_steps = 200
    c.batch_size = 32
    c.eval_batch_size = 256
    c.log_every = 50
    c.eval_every = 200
    c.checkpoint_every = 0
    return c
