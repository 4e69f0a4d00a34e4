"""Sharded training through the trainer: one device, 4-way FSDP and a 2x2 (data x model) mesh give the same run;
every objective trains sharded; stage changes, BatchNorm re-estimation and evaluation work on sharded state."""

import json
import shutil

import jax
import numpy as np
import pytest

from jtl import models
from jtl.adapters import load_adapters
from jtl.config import ConfigError
from jtl.train import train_and_evaluate
from jtl.weights import save_pretrained
from tests.train.conftest import make_mt_config, make_tiny_config, with_changes
from tests.train.test_detection import tiny as tiny_detection

# min_size 0: the tiny models' leaves are all small, and these tests are about sharding them.
FSDP = {"sharding.fsdp": True, "sharding.min_size": 0}
LAYOUTS = {"one device": {"num_devices": 1}, "fsdp 4": FSDP, "fsdp 2 x model 2": {**FSDP, "mesh.model": 2}}


def _losses(workdir):
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in records if "train/loss" in r]


def _run(config, workdir, **changes):
    result = train_and_evaluate(with_changes(config, **{"checkpoint_every": 0, **changes}), workdir)
    return result, _losses(workdir)


def _assert_close_trees(a, b, atol):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=atol)


@pytest.fixture(scope="module")
def layout_runs(tmp_path_factory):
    # SGD: Adam's g / sqrt(v) turns float rounding in near-zero gradients into whole learning-rate steps.
    config = with_changes(make_tiny_config(), total_steps=6, eval_every=3, optimizer="sgd", learning_rate=0.3)
    return {name: _run(config, tmp_path_factory.mktemp("run"), **changes) for name, changes in LAYOUTS.items()}


def test_one_device_fsdp_and_a_2x2_mesh_give_the_same_losses_and_weights(layout_runs):
    (reference, losses), *others = layout_runs.values()
    assert len(losses) == 6 and losses[-1] < losses[0] - 1e-3, losses
    for result, sharded_losses in others:
        np.testing.assert_allclose(sharded_losses, losses, rtol=1e-5)
        _assert_close_trees(result["params"], reference["params"], atol=1e-6)
        assert result["eval/accuracy"] == reference["eval/accuracy"]


def test_the_state_is_sharded_as_the_layout_says(layout_runs):
    specs = {
        name: {k: tuple(result["params"]["encoder"]["block_0"][k[0]][k[1]]["kernel"].sharding.spec) for k in KERNELS}
        for name, (result, _) in layout_runs.items()
    }
    # FSDP: each kernel's largest dimension over the data axis; with a model axis, Megatron's splits too.
    assert specs["fsdp 4"] == {k: FSDP_4[k] for k in KERNELS}
    assert specs["fsdp 2 x model 2"] == {k: TENSOR_PARALLEL[k] for k in KERNELS}
    one = layout_runs["one device"][0]["params"]["encoder"]["block_0"]["mlp"]["fc1"]["kernel"]
    assert len(one.sharding.device_set) == 1


KERNELS = (("attn", "query"), ("attn", "out"), ("mlp", "fc1"), ("mlp", "fc2"))
# vit-testing: width 16, MLP 32; a tie between equal dimensions goes to the first.
FSDP_4 = {
    ("attn", "query"): ("data", None),
    ("attn", "out"): ("data", None),
    ("mlp", "fc1"): (None, "data"),
    ("mlp", "fc2"): ("data", None),
}
TENSOR_PARALLEL = {
    ("attn", "query"): ("data", "model"),
    ("attn", "out"): ("model", "data"),
    ("mlp", "fc1"): ("data", "model"),
    ("mlp", "fc2"): ("model", "data"),
}


def _objective_config(objective, da_config):
    if objective == "adaptation":  # DANN, with DEV's features at each evaluation
        config = da_config
    elif objective == "multitask":
        config = make_mt_config(make_tiny_config())
    else:
        config = tiny_detection("faster_rcnn", total_steps=3)
    return with_changes(config, optimizer="sgd", learning_rate=0.1)  # SGD: see layout_runs


@pytest.mark.parametrize("objective", ["adaptation", "multitask", "detection"])
def test_every_objective_trains_sharded_as_it_trains_replicated(objective, da_config, tmp_path):
    config = _objective_config(objective, da_config)
    replicated, replicated_losses = _run(config, tmp_path / "replicated")
    sharded, sharded_losses = _run(config, tmp_path / "sharded", **{**FSDP, "mesh.model": 2})
    np.testing.assert_allclose(sharded_losses, replicated_losses, rtol=1e-4)
    _assert_close_trees(
        [sharded["params"], sharded["objective_params"]],
        [replicated["params"], replicated["objective_params"]],
        atol=1e-5,
    )
    metrics = [k for k in replicated if k.startswith(("eval/", "selection/"))]
    assert metrics
    for key in metrics:
        np.testing.assert_allclose(sharded[key], replicated[key], rtol=1e-4, atol=1e-6, err_msg=key)


RESNET = {"model.name": "resnet-testing", "model.overrides": {"image_size": 8, "num_channels": 1}}


def test_stage_changes_and_batch_norm_reestimation_on_sharded_state(tiny_config, tmp_path):
    # LP-FT (a stage change at step 2: a new optimizer state, resharded) on a ResNet whose statistics are
    # re-estimated before training and at each evaluation.
    changes = {**RESNET, "batch_norm": "reestimate", "unfreeze_starts": (0, 2), "total_steps": 4, "eval_every": 2}
    replicated, replicated_losses = _run(tiny_config, tmp_path / "replicated", **changes)
    sharded, sharded_losses = _run(tiny_config, tmp_path / "sharded", **changes, **FSDP)
    np.testing.assert_allclose(sharded_losses, replicated_losses, rtol=1e-5)
    _assert_close_trees(
        [sharded["params"], sharded["batch_stats"]], [replicated["params"], replicated["batch_stats"]], atol=1e-5
    )
    conv = sharded["params"]["stage_0"]["block_0"]["conv1"]["kernel"]
    assert "data" in conv.sharding.spec, conv.sharding.spec


def test_pretrained_weights_with_lora_train_sharded_and_save_their_adapters(tiny_config, tmp_path):
    # The pretrained weights arrive as host arrays and go to the devices shard by shard; the adapters are
    # gathered from their shards to be saved.
    model = models.create("vit-testing", num_classes=3, **dict(tiny_config.model.overrides))
    save_pretrained(tmp_path / "pretrained", model, models.init(model, seed=5))
    changes = {
        "model.pretrained": str(tmp_path / "pretrained"),
        "lora.rank": 2,
        "optimizer": "sgd",
        "learning_rate": 0.3,
    }
    replicated, replicated_losses = _run(tiny_config, tmp_path / "replicated", **changes)
    sharded, sharded_losses = _run(tiny_config, tmp_path / "sharded", **changes, **FSDP, **{"mesh.model": 2})
    np.testing.assert_allclose(sharded_losses, replicated_losses, rtol=1e-5)
    query = sharded["params"]["encoder"]["block_0"]["attn"]["query"]
    assert tuple(query["kernel"].sharding.spec) == ("data", "model")
    _, saved = load_adapters(tmp_path / "sharded" / "adapters")
    _assert_close_trees(saved["params"], replicated["params"], atol=1e-6)


def test_a_sharded_checkpoint_resumes_on_another_mesh(layout_runs, tmp_path):
    # Written by FSDP over 4 devices at step 3, resumed on 2 devices as a 1 x 2 tensor-parallel mesh.
    config = with_changes(make_tiny_config(), total_steps=6, eval_every=3, optimizer="sgd", learning_rate=0.3)
    train_and_evaluate(with_changes(config, checkpoint_every=3, **FSDP), tmp_path)
    shutil.rmtree(tmp_path / "checkpoints" / "6")  # as if stopped after step 3's checkpoint
    resumed, losses = _run(config, tmp_path, num_devices=2, **FSDP, **{"mesh.model": 2})
    reference, reference_losses = layout_runs["one device"]
    np.testing.assert_allclose(losses[-3:], reference_losses[3:], rtol=1e-5)
    _assert_close_trees(resumed["params"], reference["params"], atol=1e-6)
    fc1 = resumed["params"]["encoder"]["block_0"]["mlp"]["fc1"]["kernel"]
    assert tuple(fc1.sharding.spec) == (None, "model") and len(fc1.sharding.device_set) == 2


def test_pmap_refuses_parameter_sharding(tiny_config, tmp_path):
    with pytest.raises(ConfigError, match=r"config.parallel='pmap' holds the whole state .* config.parallel='jit'"):
        train_and_evaluate(with_changes(tiny_config, parallel="pmap", **{"sharding.fsdp": True}), tmp_path)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"mesh.model": 3}, r"config.mesh.model=3 does not divide the 4 devices"),
        ({"sharding.rules": ((".*", "fsdp+model:7"),)}, r"config.sharding: .*strategy 'fsdp\+model:7': dimension 7"),
        ({"sharding.rules": ((".*", "zero3"),)}, r"unknown part 'zero3' \(known: replicate, fsdp, model:<dim>\)"),
        (
            {"sharding.rules": ((r"encoder/.*", "fsdp"),), "sharding.unmatched": "error"},
            r"config.sharding: sharding rules: no rule covers these leaves: .*embed/",
        ),
    ],
)
def test_sharding_config_errors_name_the_field(tiny_config, tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message):
        train_and_evaluate(with_changes(tiny_config, **changes), tmp_path)
