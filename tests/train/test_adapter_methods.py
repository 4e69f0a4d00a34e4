"""`python -m jtl.train` with each adapter method from the config: a few steps train only the adapters and the head."""

import numpy as np
import pytest

import jtl.masking as jm
from jtl.config import config_from_args
from jtl.train import build_model, main
from tests.train.test_cli import CONFIG

METHODS = {
    # query and value of two blocks
    "dora": (["--config.lora.rank=2", "--config.lora.dora=True"], ("lora_a", "lora_b", "lora_magnitude"), 4),
    "ia3": (
        [  # a Python literal inside: its backslashes doubled
            r"--config.ia3.targets=('encoder/block_\\d+/attn/(key|value)', 'encoder/block_\\d+/mlp/fc2')",
            r"--config.ia3.feedforward=('encoder/block_\\d+/mlp/fc2',)",
        ],
        ("ia3_scale",),
        6,  # key, value and fc2 of two blocks
    ),
    # query and value of two blocks, their kernels held as NF4 codes that must stay as they are (and checkpoint)
    "qlora": (
        ["--config.lora.rank=2", "--config.lora.quantize=nf4", "--config.checkpoint_every=3"],
        ("lora_a", "lora_b"),
        4,
    ),
    "vpt": (["--config.vpt.num_tokens=2"], ("vpt_prompt",), 1),  # shallow: before the first block only
    "bottleneck": (  # Houlsby: after the attention output and the MLP of two blocks
        ["--config.bottleneck.size=4"],
        ("adapter_down_kernel", "adapter_down_bias", "adapter_up_kernel", "adapter_up_bias"),
        4,
    ),
}


@pytest.mark.parametrize("kind", sorted(METHODS))
def test_three_steps_train_only_the_adapters_and_head(tmp_path, kind):
    overrides, leaves, layers = METHODS[kind]
    (tmp_path / "tiny.py").write_text(CONFIG)
    args = [str(tmp_path / "tiny.py"), "--config.total_steps=3", "--config.checkpoint_every=0", *overrides]
    result = main(["--config", *args[:1], "--workdir", str(tmp_path / "run"), *args[1:]])
    _, start, _ = build_model(config_from_args(args[0], args[1:]), 3)
    adapted = [name for name, _ in jm.named_leaves(result["params"]) if name.rsplit("/", 1)[-1] in leaves]
    assert len(adapted) == layers * len(leaves)
    # Three steps: the zero-initialised head moves first, then what multiplies it, then (LoRA's A) what multiplies B.
    pairs = zip(jm.named_leaves(start["params"]), jm.named_leaves(result["params"]), strict=True)
    for (name, before), (_, after) in pairs:
        trains = name in adapted or name.startswith("head/")
        assert np.array_equal(before, after) != trains, name
