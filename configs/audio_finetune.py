"""Fine-tune an audio classifier (AST, Wav2Vec2, HuBERT) on a folder of clips, ``DIR/<class>/*.wav|*.flac``.

Offline, on synthesised tones (three classes: low, middle and high pitch, at 8 kHz, resampled to the model's
16 kHz), with the tiny ``ast-testing`` model from scratch:

    python configs/audio_finetune.py /tmp/jtl-tones
    python -m jtl.train --config configs/audio_finetune.py:ast-testing --workdir workdirs/tones

With a pretrained checkpoint (the hub, or its directory) and your clips:

    python -m jtl.train --config configs/audio_finetune.py:ast \\
        --config.data.train_dir=DIR/train --config.data.test_dir=DIR/test --config.num_classes=N

Args: ``ast`` (MIT/ast-finetuned-audioset-10-10-0.4593: 1024 frames, ~10 s), ``wav2vec2`` (facebook/wav2vec2-base),
``hubert`` (facebook/hubert-base-ls960), ``wav2vec2-large`` (facebook/wav2vec2-large-lv60), or the registry's
``ast-testing`` / ``wav2vec2-testing`` from scratch. Clips are resampled to the checkpoint's rate and go through its
feature extractor (``preprocessor_config.json``): AST's Kaldi filterbank padded or cropped to the model's frames,
Wav2Vec2's normalised waveform padded or cropped to ``model.overrides.num_samples`` (default 1 s). The recipe
(AdamW, warmup then cosine, lr 1e-5 for the transformers as the AST/SUPERB recipes, a 10x multiplier on the
head) has run only in ``tests/train/test_configs.py`` on the synthesised tones; no accuracy is claimed.
"""

import sys
from pathlib import Path

import numpy as np

from jtl.config import base_config

HUB = {
    "ast": "MIT/ast-finetuned-audioset-10-10-0.4593",
    "wav2vec2": "facebook/wav2vec2-base",
    "hubert": "facebook/hubert-base-ls960",
    "wav2vec2-large": "facebook/wav2vec2-large-lv60",
}
TESTING = ("ast-testing", "wav2vec2-testing")
TONES = "/tmp/jtl-tones"


def write_tones(root, per_class=(8, 4), rate=8000, seconds=0.5, seed=0):
    """Writes ``root/{train,test}/{low,middle,high}/*.wav``: noisy sine tones around 200, 600 and 1800 Hz."""
    import scipy.io.wavfile

    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    for split, count in zip(("train", "test"), per_class, strict=True):
        for name, hertz in (("low", 200.0), ("middle", 600.0), ("high", 1800.0)):
            folder = Path(root, split, name)
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pitch = hertz * rng.uniform(0.9, 1.1)
                clip = 0.5 * np.sin(2 * np.pi * pitch * t + rng.uniform(0, 6)) + 0.05 * rng.standard_normal(t.size)
                scipy.io.wavfile.write(folder / f"{i}.wav", rate, (clip * 32767).astype(np.int16))
    return Path(root)


def get_config(arg=None):
    name = arg or "ast"
    if name not in HUB and name not in TESTING:
        raise ValueError(f"configs/audio_finetune.py:{name}: expected one of {sorted(HUB) + list(TESTING)}")
    c = base_config()
    c.data.source = "folder"
    c.optimizer = "adamw"
    c.schedule = "cosine"
    c.weight_decay = 0.01
    c.grad_clip = 1.0
    c.log_every = 10
    if name in TESTING:
        c.model.name = name
        c.num_classes = 3
        c.data.train_dir = f"{TONES}/train"
        c.data.test_dir = f"{TONES}/test"
        c.learning_rate = 1e-3
        c.batch_size = 8
        c.eval_batch_size = 12
        c.total_steps = 60
        c.warmup_steps = 5
        c.eval_every = 30
        c.checkpoint_every = 0
        return c
    c.model.pretrained = HUB[name]
    c.num_classes = 2
    c.learning_rate = 1e-5
    c.lr_mults = (("head/.*", 10.0),)
    c.batch_size = 16
    c.eval_batch_size = 32
    c.total_steps = 2000
    c.warmup_steps = 200
    c.eval_every = 500
    c.checkpoint_every = 500
    return c


if __name__ == "__main__":
    print(write_tones(sys.argv[1] if len(sys.argv) > 1 else TONES))
