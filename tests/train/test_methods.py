"""The transfer methods driven from configs through train_and_evaluate: exact facts about what changed."""

import json

import jax
import numpy as np
import pytest

import jtl.masking as jm
from jtl import data, models
from jtl.adapters import load_adapters
from jtl.checkpoint import UnreadableCheckpointWarning
from jtl.config import ConfigError
from jtl.features import extract_features, h_score, logme
from jtl.objectives.classification import mixup
from jtl.optim import bit_hyperrule, l2_sp
from jtl.train import train_and_evaluate
from jtl.weights import load_pretrained, save_pretrained
from tests.train.conftest import with_changes


def _run(config, workdir, **changes):
    """A run without checkpoints (Orbax saves dominate these few-step runs) unless the test asks for them."""
    return train_and_evaluate(with_changes(config, **{"checkpoint_every": 0, **changes}), workdir)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A tiny ViT 'pretrained' on digits 3-5, saved in jtl's format."""
    root = tmp_path_factory.mktemp("source")
    from jtl.config import base_config

    c = base_config()
    c.num_classes = 3
    c.model.overrides = {"image_size": 8, "patch_size": 4, "num_channels": 1, "dropout_rate": 0.0}
    c.data.classes, c.data.shots = (3, 4, 5), 16
    c.total_steps, c.batch_size, c.checkpoint_every, c.log_every, c.compilation_cache = 20, 16, 0, 10, ""
    result = _run(c, root / "run")
    model = models.create("vit-testing", num_classes=3, **dict(c.model.overrides))
    save_pretrained(root / "export", model, {"params": result["params"]})
    return root / "export"


def _changed(before, after):
    return {
        name
        for (name, a), (_, b) in zip(jm.named_leaves(before), jm.named_leaves(after), strict=True)
        if not np.array_equal(a, b)
    }


def _start(path):
    _, variables, _ = load_pretrained(str(path), num_classes=3, verbose=False)
    return variables["params"]


def test_gradual_unfreezing_stages_train_top_layers_first(tiny_config):
    from jtl.optim import stages

    config = tiny_config.copy_and_resolve_references()
    config.unfreeze_starts = (0, 2, 4)
    model = models.create("vit-testing", num_classes=3, **dict(config.model.overrides))
    params = models.init(model)["params"]
    starts, trainables = stages(config, model, params)
    assert starts.starts == (0, 2, 4)
    trained = [{n for n, t in jm.named_leaves(jm.resolve_mask(spec, params)) if t} for spec in trainables]
    everything = {n for n, _ in jm.named_leaves(params)}
    # vit-testing has 2 blocks: stage 0 trains norm + head, stage 1 adds block_1, stage 2 everything.
    assert {n.split("/")[0] for n in trained[0]} == {"head", "norm"}
    assert trained[1] - trained[0] == {n for n in everything if n.startswith("encoder/block_1/")}
    assert trained[2] == everything


def test_gradual_unfreezing_run_moves_each_group_from_its_stage(tiny_config, source, tmp_path):
    start = _start(source)
    result = _run(tiny_config, tmp_path, total_steps=6, unfreeze_starts=(0, 2, 4), **{"model.pretrained": str(source)})
    assert _changed(start, result["params"]) == {n for n, _ in jm.named_leaves(start)}


def test_lp_ft_resumed_at_the_stage_change_equals_uninterrupted(tiny_config, source, tmp_path):
    # The checkpoint after step 4 holds the linear probe's optimizer state; step 5 starts full fine-tuning.
    stop = 4
    settings = {"unfreeze_starts": (0, 4), "schedule": "constant", "model.pretrained": str(source)}
    uninterrupted = _run(tiny_config, tmp_path / "a", total_steps=8, **settings)
    _run(tiny_config, tmp_path / "b", total_steps=stop, checkpoint_every=stop, **settings)
    resumed = _run(tiny_config, tmp_path / "b", total_steps=8, checkpoint_every=8, **settings)
    # Step 8's checkpoint (full fine-tuning's optimizer state) made unreadable: the restart falls back across
    # the stage change to step 4's (the probe's) and still ends as the uninterrupted run.
    (tmp_path / "b" / "checkpoints" / "8" / "model" / "metadata").write_text("{")
    with pytest.warns(UnreadableCheckpointWarning, match=r"checkpoints/8 cannot be restored .* restored step 4"):
        fallen_back = _run(tiny_config, tmp_path / "b", total_steps=8, **settings)
    for result in (resumed, fallen_back):
        for a, b in zip(
            jax.tree_util.tree_leaves(uninterrupted["params"]), jax.tree_util.tree_leaves(result["params"]), strict=True
        ):
            np.testing.assert_array_equal(a, b)


def test_unfreezing_with_another_trainable_setting_is_a_config_error(tiny_config, tmp_path):
    with pytest.raises(ConfigError, match="unfreeze_starts decides what trains"):
        _run(tiny_config, tmp_path, unfreeze_starts=(0, 4), trainable=("head/.*",))
    with pytest.raises(ConfigError, match=r"unfreeze_starts=\(1, 4\): must start at 0"):
        _run(tiny_config, tmp_path, unfreeze_starts=(1, 4))


def test_l2_sp_keeps_the_backbone_near_the_pretrained_weights(tiny_config, source, tmp_path):
    start = _start(source)
    settings = {"model.pretrained": str(source), "weight_decay": 0.0, "total_steps": 20}
    plain = _run(tiny_config, tmp_path / "plain", **settings)
    anchored = _run(tiny_config, tmp_path / "l2sp", l2sp_alpha=10.0, **settings)

    def drift(params):
        return sum(
            float(np.sum((np.asarray(a) - np.asarray(b)) ** 2))
            for (name, a), (_, b) in zip(jm.named_leaves(start), jm.named_leaves(params), strict=True)
            if not name.startswith("head/")
        )

    assert drift(anchored["params"]) < 0.5 * drift(plain["params"])


def test_l2_sp_gradient_under_freeze():
    params = {"body": np.array([1.0, 2.0]), "frozen": np.array([5.0]), "head": np.array([3.0])}
    tx = jm.freeze(l2_sp(alpha=0.5, beta=0.25, new="head"), trainable=["body", "head"])
    state = tx.init(params)
    moved = {"body": np.array([2.0, 0.0]), "frozen": np.array([5.0]), "head": np.array([4.0])}
    zeros = jax.tree_util.tree_map(np.zeros_like, params)
    updates, _ = tx.update(zeros, state, moved)
    np.testing.assert_allclose(updates["body"], [0.5, -1.0])  # alpha * (w - w0)
    np.testing.assert_allclose(updates["head"], [1.0])  # beta * w
    np.testing.assert_array_equal(updates["frozen"], [0.0])


def test_lora_from_a_config_trains_only_adapters_and_head_and_saves_them(tiny_config, source, tmp_path):
    result = _run(
        tiny_config,
        tmp_path,
        **{"model.pretrained": str(source), "lora.rank": 2, "lora.targets": (r"encoder/.*/attn/(query|value)",)},
    )
    names = dict(jm.named_leaves(result["params"]))
    for name, before in jm.named_leaves(_start(source)):
        if not name.startswith("head/"):
            np.testing.assert_array_equal(names[name], before, err_msg=name)
    assert sum(n.endswith("lora_b") for n in names) == 4
    model, variables = load_adapters(tmp_path / "adapters")
    images = data.digits_task([0], shots=2)["train"].images
    np.testing.assert_array_equal(model.apply(variables, images), model.apply({"params": result["params"]}, images))
    assert result["eval/accuracy"] == json.loads((tmp_path / "final_metrics.json").read_text())["eval/accuracy"]


RESNET = {"model.name": "resnet-testing", "model.overrides": {"image_size": 8, "num_channels": 1}}


def test_batch_norm_frozen_keeps_the_statistics_while_everything_trains(tiny_config, tmp_path):
    result = _run(tiny_config, tmp_path, batch_norm="frozen", **RESNET)
    initial = models.init(models.create("resnet-testing", num_classes=3, image_size=8, num_channels=1), seed=0)
    assert _changed(initial["batch_stats"], result["batch_stats"]) == set()
    assert "embed/conv/kernel" in _changed(initial["params"], result["params"])


def test_batch_norm_reestimate_equals_the_training_sets_statistics(tiny_config, tmp_path):
    # One batch of all 48 training examples: the re-estimated stem statistics are that batch's moments.
    result = _run(tiny_config, tmp_path, batch_norm="reestimate", batch_size=48, trainable=("head/.*",), **RESNET)
    model = models.create("resnet-testing", num_classes=3, image_size=8, num_channels=1)
    images = data.digits_task((0, 1, 2), shots=16)["train"].images
    variables = {"params": result["params"], "batch_stats": result["batch_stats"]}
    _, captured = model.apply(variables, images, capture_intermediates=True, mutable=["intermediates"])
    conv_out = np.asarray(captured["intermediates"]["embed"]["conv"]["__call__"][0], np.float64)
    stats = result["batch_stats"]["embed"]["bn"]
    np.testing.assert_allclose(stats["mean"], conv_out.mean((0, 1, 2)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(stats["var"], conv_out.var((0, 1, 2)), rtol=1e-4, atol=1e-6)


def test_bit_hyperrule_picks_the_schedule_from_the_dataset_size(tiny_config, tmp_path):
    rule = bit_hyperrule(48, batch_size=16)
    assert (rule.total_steps, rule.warmup_steps, rule.decay_steps, rule.mixup_alpha) == (500, 100, (200, 300, 400), 0.0)
    schedule = rule.schedule()
    lr = rule.learning_rate
    assert lr == pytest.approx(0.003 * 16 / 512)
    for step, expected in [(50, lr / 2), (150, lr), (250, lr / 10), (350, lr / 100), (450, lr / 1000)]:
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-5)
    assert bit_hyperrule(50_000).mixup_alpha == 0.1 and bit_hyperrule(50_000).total_steps == 10_000
    result = _run(tiny_config, tmp_path, hyperrule="bit", log_every=100, checkpoint_every=0)
    assert result["step"] == 500


def test_mixup_blends_images_and_targets_alike():
    batch = {"image": np.arange(6, dtype=np.float32).reshape(3, 2), "label": np.array([0, 1, 2])}
    out = mixup(batch, jax.random.PRNGKey(3), 0.4, 3)
    weight = float(out["targets"][0, 0])
    np.testing.assert_allclose(out["image"], weight * batch["image"] + (1 - weight) * batch["image"][::-1], rtol=1e-6)
    np.testing.assert_allclose(out["targets"][0], [weight, 0, 1 - weight], rtol=1e-6)


def test_ood_split_is_evaluated_alongside_a_mixup_run(tiny_config, tmp_path):
    result = _run(tiny_config, tmp_path, mixup_alpha=0.2, **{"data.ood_shift": "invert", "eval_every": 4})
    assert np.isfinite(result["eval/loss"])
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "eval_ood/accuracy" in r] == [4, 8]
    assert result["eval_ood/accuracy"] != result["eval/accuracy"]
    test = data.digits_task((0, 1, 2), shots=16)["test"]
    np.testing.assert_array_equal(data.shifted(test, "invert").images, 1.0 - test.images)
    np.testing.assert_array_equal(
        data.shifted(test, "noise", seed=1).images, data.shifted(test, "noise", seed=1).images
    )
    with pytest.raises(ValueError, match="unknown shift 'blur'"):
        data.shifted(test, "blur")


def test_transferability_scores_and_scratch_baseline_in_the_final_report(tiny_config, source, tmp_path, capsys):
    result = _run(
        tiny_config,
        tmp_path,
        transferability=True,
        trainable=("head/.*",),
        **{"model.pretrained": str(source), "baseline.scratch": True},
    )
    model, variables, _ = load_pretrained(str(source), num_classes=3, verbose=False)
    train = data.digits_task((0, 1, 2), shots=16)["train"]
    features, labels = extract_features(model, variables, data.eval_batches(train, 16))
    assert result["transferability/logme"] == pytest.approx(float(logme(features, labels, 3)), rel=1e-5)
    assert result["transferability/h_score"] == pytest.approx(float(h_score(features, labels, 3)), rel=1e-5)
    scratch = json.loads((tmp_path / "scratch_baseline" / "final_metrics.json").read_text())["eval/accuracy"]
    assert result["baseline/eval/accuracy"] == scratch
    assert result["negative_transfer"] == (result["eval/accuracy"] < scratch)
    verdict = "NEGATIVE TRANSFER" if result["negative_transfer"] else "transfer beats training from scratch"
    assert verdict in capsys.readouterr().out


def test_wise_ft_evaluates_the_interpolated_weights(tiny_config, source, tmp_path):
    result = _run(tiny_config, tmp_path, wise_ft=(0.0, 0.5, 1.0), **{"model.pretrained": str(source)})
    # alpha 1 is the fine-tuned model, alpha 0 the start: the pretrained backbone with ViT's zero head.
    assert result["wise_ft/1/eval/accuracy"] == result["eval/accuracy"]
    assert result["wise_ft/0/eval/loss"] == pytest.approx(np.log(3), rel=1e-6)
    # alpha 0.5: the average of the two parameter trees, evaluated here by hand.
    model, variables, _ = load_pretrained(str(source), num_classes=3, verbose=False)
    halfway = jax.tree_util.tree_map(lambda a, b: (a + b) / 2, variables["params"], result["params"])
    test = data.digits_task((0, 1, 2), shots=16)["test"]
    correct = [
        (np.argmax(model.apply({"params": halfway}, b["image"]), -1) == b["label"])[b["mask"]]
        for b in data.eval_batches(test, 16)
    ]
    assert result["wise_ft/0.5/eval/accuracy"] == pytest.approx(np.concatenate(correct).mean(), rel=1e-6)
