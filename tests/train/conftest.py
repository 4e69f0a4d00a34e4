import numpy as np
import pytest
from PIL import Image

from jtl.config import base_config, task_config


@pytest.fixture
def tiny_config():
    """A few-second digits run with a tiny ViT, no dropout (so runs are comparable across device layouts)."""
    return make_tiny_config()


def make_tiny_config():
    """What ``tiny_config`` gives, for module-scoped fixtures."""
    c = base_config()
    c.num_classes = 3
    c.model.name = "vit-testing"
    c.model.overrides = {"image_size": 8, "patch_size": 4, "num_channels": 1, "dropout_rate": 0.0}
    c.data.classes = (0, 1, 2)
    c.data.shots = 16
    c.optimizer = "adamw"
    c.learning_rate = 3e-3
    c.total_steps = 8
    c.batch_size = 16
    c.eval_batch_size = 16
    c.log_every = 1
    c.checkpoint_every = 4
    c.compilation_cache = ""
    c.lock()
    return c


@pytest.fixture
def da_config(tiny_config):
    """``tiny_config`` adapting from digits to rotated digits with DANN, evaluated (with DEV) every 2 steps."""
    c = tiny_config.copy_and_resolve_references()
    c.unlock()
    c.data.half = 0
    c.target.source = "digits"
    c.target.classes = (0, 1, 2)
    c.target.half = 1
    c.target.shift = "rotate"
    c.adaptation.method = "dann"
    c.adaptation.discriminator_width = 8
    c.adaptation.dev_examples = 64
    c.total_steps = 4
    c.eval_every = 2
    c.checkpoint_every = 0
    c.lock()
    return c


def make_mt_config(tiny_config):
    """``tiny_config`` as two tasks on one backbone: digit classification and a regression on another half."""
    c = tiny_config.copy_and_resolve_references()
    c.unlock()
    c.tasks = {"digit": task_config("classification", 3), "value": task_config("regression")}
    for name, task in c.tasks.items():
        task.data.classes, task.data.shots = (0, 1, 2), 16
        task.data.half = 0 if name == "digit" else 1
        task.data.labels = {"digit": "class", "value": "value"}[name]
    c.total_steps = 4
    c.checkpoint_every = 0
    c.lock()
    return c


def with_changes(config, **changes):
    """A copy of ``config`` with dotted keys changed (``**{"adaptation.method": "mmd"}``)."""
    config = config.copy_and_resolve_references()
    for key, value in changes.items():
        node = config
        *path, last = key.split(".")
        for part in path:
            node = node[part]
        node[last] = value
    return config


def make_image_folder(root, per_class, seed):
    """``root/{cat,dog,emu}/`` with ``per_class`` images each, of random sizes, PNG and JPEG, colours by class."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(["cat", "dog", "emu"]):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            size = (int(rng.integers(10, 30)), int(rng.integers(10, 30)))
            pixels = np.clip(rng.normal(80 * c, 20, size=(size[1], size[0], 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root
