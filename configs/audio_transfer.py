"""The offline audio transfer testbed, speech -> music: a small AST pretrained from scratch on a speech-like task
(ten synthesised vowels, many speakers), then trained on a music-like task (six synthesised musical figures,
held notes to scales and trills, random instruments, keys and tempos) with 8 clips per class, from the speech
model or from scratch. The clips come from :func:`jtl.data.write_audio_task`.

    python configs/audio_transfer.py                    # writes the clips to /tmp/jtl-audio-transfer
    python -m jtl.train --config configs/audio_transfer.py:source --workdir workdirs/speech
    python -m jtl.train --config configs/audio_transfer.py:scratch --workdir workdirs/music-scratch
    python -m jtl.train --config configs/audio_transfer.py:transfer --workdir workdirs/music-transfer \\
        --config.model.pretrained=DIR    # the source model, exported with jtl.weights.save_pretrained

``python -m benchmarks.audio_transfer`` does all of it (the source once; transfer and scratch for seeds 0, 1, 2,
``--config.seed``) and prints the table in BENCHMARKS.md.

Variants: ``source`` (speech-like, 10 classes, 60 clips each, 200 steps), ``scratch`` (music-like, 6 classes, 8
clips each, 100 steps from scratch), ``transfer`` (the same, from ``model.pretrained``: a new head, every layer
fine-tuned, with the same rate and steps as ``scratch``). The model
is ``ast-testing`` widened: 32 mel bins x 100 frames (1 s), 8 x 8 patches (48 tokens), 3 blocks of width 64.
"""

import sys

from jtl.config import base_config

ROOT = "/tmp/jtl-audio-transfer"
VARIANTS = ("source", "transfer", "scratch")
# The source's and the target's clips per class (train, test); the target is few-shot.
CLIPS = {"speech": (60, 20), "music": (8, 30)}
MODEL = {
    "num_mel_bins": 32,
    "max_length": 100,
    "patch_size": 8,
    "frequency_stride": 8,
    "time_stride": 8,
    "hidden_size": 64,
    "num_layers": 3,
    "num_heads": 4,
    "mlp_dim": 128,
}


def write_data(root: str = ROOT) -> str:
    """Writes both tasks' clips under ``root/{speech,music}/{train,test}/<class>/*.wav`` (seeds 0 and 1)."""
    from jtl.data import write_audio_task

    write_audio_task(f"{root}/speech", "speech", CLIPS["speech"], seed=0)
    write_audio_task(f"{root}/music", "music", CLIPS["music"], seed=1)
    return root


def get_config(arg=None):
    variant = arg or "scratch"
    if variant not in VARIANTS:
        raise ValueError(f"configs/audio_transfer.py:{variant}: expected one of {VARIANTS}")
    source = variant == "source"
    task = "speech" if source else "music"
    c = base_config()
    c.model.name = "ast-testing"
    c.model.overrides = dict(MODEL)
    c.num_classes = 10 if source else 6
    c.data.source = "folder"
    c.data.train_dir = f"{ROOT}/{task}/train"
    c.data.test_dir = f"{ROOT}/{task}/test"
    c.optimizer = "adamw"
    c.schedule = "cosine"
    c.grad_clip = 1.0
    # The source is regularised as the image testbed's (configs/quickstart.py). Transfer and scratch share every
    # setting (rate, steps, batch) but the initial weights.
    c.learning_rate = 1e-3
    c.weight_decay = 0.05 if source else 1e-4
    c.label_smoothing = 0.1 if source else 0.0
    c.warmup_steps = 30 if source else 10
    c.total_steps = 200 if source else 100
    c.batch_size = 32 if source else 16
    c.eval_batch_size = 60
    c.eval_every = c.total_steps
    c.log_every = 50
    c.checkpoint_every = 0
    return c


if __name__ == "__main__":
    print(write_data(sys.argv[1] if len(sys.argv) > 1 else ROOT))
