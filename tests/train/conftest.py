import pytest

from jtl.config import base_config


@pytest.fixture
def tiny_config():
    """A few-second digits run with a tiny ViT, no dropout (so runs are comparable across device layouts)."""
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
