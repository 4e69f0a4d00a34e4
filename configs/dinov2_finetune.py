"""DINOv2 on your own images: a linear probe on the frozen backbone, or full fine-tuning with layer-wise decay.

    python -m jtl.train --config configs/dinov2_finetune.py:probe,s14 \\
        --config.data.train_dir=DIR/train --config.data.test_dir=DIR/test --config.num_classes=N

Args (comma-separated): the mode (``probe``: only the head trains, the backbone's gradient is never computed;
``finetune``: everything, layer-wise learning-rate decay 0.75 and drop path 0.1) and the size (``s14``, ``b14``,
``l14``, ``g14``; ``-reg`` for the checkpoints with register tokens, e.g. ``b14-reg``). The data is an image
folder (``DIR/<class>/*.jpg|png``); normalisation comes from the checkpoint's preprocessor config. The hub's
checkpoints are 518 px; this config runs at 224 px, the position embeddings resampled as Hugging Face interpolates
them (bicubic; antialiased for the register models). The head reads the class token beside the mean patch token,
as DINOv2's linear evaluation does.

Where it has run: in ``tests/train/test_configs.py`` on a tiny random DINOv2 checkpoint and a generated image
folder (both modes, a few steps); not yet on the hub's weights (no network here), so no accuracy is claimed.
"""

from jtl.config import base_config

HUB = {
    "s14": "facebook/dinov2-small",
    "b14": "facebook/dinov2-base",
    "l14": "facebook/dinov2-large",
    "g14": "facebook/dinov2-giant",
    "s14-reg": "facebook/dinov2-with-registers-small",
    "b14-reg": "facebook/dinov2-with-registers-base",
    "l14-reg": "facebook/dinov2-with-registers-large",
    "g14-reg": "facebook/dinov2-with-registers-giant",
}
MODES = ("probe", "finetune")


def get_config(arg=None):
    mode, size = (arg or "probe,s14").split(",")
    if mode not in MODES or size not in HUB:
        raise ValueError(f"configs/dinov2_finetune.py:{arg}: modes {MODES}, sizes {sorted(HUB)}")
    c = base_config()
    c.num_classes = 2
    c.model.pretrained = HUB[size]
    c.model.overrides = {"image_size": 224}
    c.data.source = "folder"
    c.optimizer = "adamw"
    c.schedule = "cosine"
    c.batch_size = 64
    c.eval_batch_size = 128
    c.log_every = 50
    c.eval_every = 500
    c.checkpoint_every = 500
    if mode == "probe":
        c.trainable = ("head/.*",)
        c.learning_rate = 1e-3
        c.weight_decay = 0.0
        c.warmup_steps = 50
        c.total_steps = 1000
    else:
        c.model.overrides = {"image_size": 224, "drop_path_rate": 0.1}
        c.layer_decay = 0.75
        c.learning_rate = 5e-5
        c.weight_decay = 0.05
        c.warmup_steps = 100
        c.total_steps = 2000
    return c
