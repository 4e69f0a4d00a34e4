"""Detection end to end through the trainer, from configs/detection.py on a tiny testbed: training, COCO
evaluation and its results file, checkpoint/resume, jit and pmap, a COCO-format folder."""

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from jtl.config import ConfigError, load_config
from jtl.data import digit_canvases, write_coco_folder
from jtl.train import train_and_evaluate
from tests.detection.test_faster_rcnn import _torchvision_state
from tests.train.conftest import with_changes

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "detection.py"
TINY_BACKBONE = {"depths": (1, 1, 1, 1), "hidden_sizes": (4, 8, 8, 8), "embedding_size": 4, "image_size": 32}


def tiny(variant, **changes):
    config = load_config(f"{CONFIG}:{variant}")
    fields = dict(config.detection.fields)
    if config.detection.detector == "detr":
        fields.update(d_model=8, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=8, decoder_ffn_dim=8)
        fields.update(encoder_attention_heads=2, decoder_attention_heads=2, num_queries=4)
    else:
        fields.update(fpn_channels=8, representation_size=8, anchor_sizes=(4, 8, 16, 32, 64))
        fields.update(rpn_pre_nms_top_n_train=24, rpn_post_nms_top_n_train=12, rpn_pre_nms_top_n_test=24)
        fields.update(rpn_post_nms_top_n_test=12, box_batch_size_per_image=8, detections_per_img=5)
    base = {
        "model.overrides": TINY_BACKBONE,
        "detection.fields": fields,
        "data.image_size": 32,
        "data.max_boxes": 3,
        "data.canvases.canvas_size": 32,
        "data.canvases.max_digits": 2,
        "data.canvases.train": 8,
        "data.canvases.test": 4,
        "num_classes": 3,
        "data.classes": (0, 1, 2),
        "total_steps": 4,
        "warmup_steps": 0,
        "batch_size": 4,
        "eval_batch_size": 4,
        "log_every": 1,
        "checkpoint_every": 0,
        "compilation_cache": "",
    }
    return with_changes(config, **{**base, **changes})


def assert_same_trees(a, b):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_faster_rcnn_trains_evaluates_and_resumes_exactly(tmp_path):
    config = tiny("faster_rcnn")
    uninterrupted = train_and_evaluate(config, tmp_path / "a")
    assert 0.0 <= uninterrupted["eval/AP"] <= 1.0 and "eval/AP/0" in uninterrupted
    results = json.loads((tmp_path / "a" / "detections.json").read_text())
    assert results and {"image_id", "category_id", "bbox", "score"} <= set(results[0])
    # Killed after its step-2 checkpoint (the step-4 one never written), then restarted in the same workdir.
    train_and_evaluate(with_changes(config, checkpoint_every=2), tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "4")
    resumed = train_and_evaluate(with_changes(config, checkpoint_every=2), tmp_path / "b")
    assert_same_trees(
        [uninterrupted["params"], uninterrupted["objective_params"]], [resumed["params"], resumed["objective_params"]]
    )
    assert resumed["eval/AP"] == uninterrupted["eval/AP"]


def test_torchvision_v2_start_frozen_under_pmap(tmp_path):
    """From a torchvision fasterrcnn_resnet50_fpn_v2-style state dict (the ResNet to the model, the rest to the
    detector) with the backbone frozen: under pmap its weights stay bit-identical to the checkpoint's."""
    import torch

    state = _torchvision_state("v2", False, np.random.default_rng(0))
    path = tmp_path / "fasterrcnn_v2.pth"
    torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}, path)
    fields = {k: v for k, v in tiny("faster_rcnn").detection.fields.items() if k.startswith(("rpn_", "box_", "det"))}
    changes = {"model.pretrained": str(path), "detection.weights": str(path), "detection.fields": fields}
    config = tiny("faster_rcnn,frozen", parallel="pmap", total_steps=2, **changes, **{"model.overrides": {}})
    result = train_and_evaluate(config, tmp_path / "run")
    np.testing.assert_array_equal(
        result["params"]["stage_1"]["block_0"]["conv1"]["kernel"],
        state["backbone.body.layer2.0.conv1.weight"].transpose(2, 3, 1, 0),
    )
    kernel = result["objective_params"]["box_head"]["fc"]["kernel"]
    assert kernel.shape == (7 * 7 * 256, 16) and np.isfinite(result["eval/AP"])


def test_detr_on_a_coco_folder(tmp_path):
    train = write_coco_folder(digit_canvases(8, canvas_size=32, max_digits=2, classes=(0, 1, 2)), tmp_path / "train")
    test = write_coco_folder(
        digit_canvases(4, canvas_size=32, max_digits=2, classes=(0, 1, 2), seed=1), tmp_path / "test"
    )
    config = tiny(
        "detr",
        **{
            "data.source": "coco",
            "data.train_annotations": str(train[0]),
            "data.train_dir": str(train[1]),
            "data.test_annotations": str(test[0]),
            "data.test_dir": str(test[1]),
            "total_steps": 2,
        },
    )
    result = train_and_evaluate(config, tmp_path / "run")
    assert np.isfinite(result["eval/AP"]) and set(result) >= {"eval/AP50", "eval/AP75", "eval/AP_small"}


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"config\.detection\.detector=.yolo."):
        train_and_evaluate(tiny("faster_rcnn", **{"detection.detector": "yolo"}), tmp_path / "a")
    with pytest.raises(ConfigError, match=r"config\.detection\.fields: .*no_such_field"):
        train_and_evaluate(tiny("faster_rcnn", **{"detection.fields": {"no_such_field": 1}}), tmp_path / "b")
    with pytest.raises(ConfigError, match=r"config\.frozen: these patterns match no leaf: \['stage_9/\.\*'\]"):
        train_and_evaluate(tiny("faster_rcnn", frozen=("stage_9/.*",)), tmp_path / "c")
