import json

import numpy as np
import pytest

from jtl import data, models
from jtl.config import ConfigError, base_config
from jtl.extract import cache_features, extract_and_fit, load_features, main
from jtl.features import extract_features, fit_linear, fit_linear_search
from jtl.weights import load_pretrained

from .test_methods import source  # noqa: F401  (the module-scoped pretrained fixture)


def _config(pretrained):
    c = base_config()
    c.num_classes = 3
    c.model.pretrained = str(pretrained)
    c.data.classes, c.data.shots = (0, 1, 2), 16
    c.eval_batch_size = 32
    c.extract.shard_size = 20
    c.extract.epochs = 30
    c.extract.batch_size = 16
    c.compilation_cache = ""
    c.lock()
    return c


def test_cached_features_equal_the_backbones_and_the_classifier_uses_them(source, tmp_path):  # noqa: F811
    result = extract_and_fit(_config(source), tmp_path)
    model, variables, _ = load_pretrained(str(source), num_classes=3, verbose=False)
    task = data.digits_task((0, 1, 2), shots=16)
    direct, labels = extract_features(model, variables, data.eval_batches(task["train"], 7))
    cached, cached_labels = load_features(tmp_path / "features" / "train", len(task["train"]))
    np.testing.assert_allclose(cached, direct, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(cached_labels, labels)
    assert len(list((tmp_path / "features" / "train").glob("shard_*.npz"))) == 3  # 48 examples, 20 per shard
    written = json.loads((tmp_path / "linear_probe.json").read_text())
    assert written["test/accuracy"] == result["test/accuracy"] > 0.5
    assert set(written["validation_accuracy_by_l2"]) == {str(v) for v in base_config().extract.l2_grid}


def test_cache_resumes_and_shards_over_processes(tmp_path):
    model = models.create("vit-testing", num_classes=0, image_size=8, patch_size=4, num_channels=1)
    variables = models.init(model)
    train = data.digits_task((0, 1), shots=25)["train"]
    # Two processes, each its own shards; a missing shard is an error until the other process is done.
    first = cache_features(model, variables, train, tmp_path, shard_size=10, process_index=0, process_count=2)
    assert [f.name for f in first] == ["shard_00000.npz", "shard_00002.npz", "shard_00004.npz"]
    with pytest.raises(FileNotFoundError, match=r"shards \[1, 3\] are missing"):
        load_features(tmp_path)
    cache_features(model, variables, train, tmp_path, shard_size=10, process_index=1, process_count=2)
    whole, _ = load_features(tmp_path, 50)
    # A rerun keeps finished shards: a marked shard survives it.
    marked = tmp_path / "shard_00001.npz"
    np.savez(marked, features=np.zeros((10, whole.shape[1]), np.float32), labels=np.zeros(10, np.int32))
    cache_features(model, variables, train, tmp_path, shard_size=10)
    assert np.all(load_features(tmp_path, 50)[0][10:20] == 0)


def test_linear_search_prefers_the_better_strength_and_refits():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 400)
    features = np.eye(4)[labels] + rng.normal(size=(400, 4)) * 0.4
    classifier, scores = fit_linear_search(features, labels, 4, l2_grid=(1e-4, 100.0), epochs=20)
    assert scores[1e-4] > scores[100.0] and classifier.l2 == 1e-4


def test_softmax_regression_matches_scikit_learns_optimum():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 400)
    features = np.eye(4)[labels] * 1.5 + rng.normal(size=(400, 4)) * 0.5
    l2 = 1e-2
    ours = fit_linear(features, labels, 4, l2=l2, epochs=3000, batch_size=400, learning_rate=1e-2)
    standardised = (features - np.asarray(ours.mean)) / np.asarray(ours.std)
    # Same objective: mean cross-entropy + l2/2 ||W||^2  <=>  C * sum cross-entropy + 1/2 ||W||^2, C = 1/(n l2).
    reference = LogisticRegression(C=1 / (len(labels) * l2), tol=1e-10, max_iter=10_000).fit(standardised, labels)
    np.testing.assert_allclose(np.asarray(ours.weights).T, reference.coef_, atol=2e-3)
    np.testing.assert_allclose(np.asarray(ours.bias) - np.mean(ours.bias), reference.intercept_, atol=2e-3)


def test_cli_needs_a_pretrained_backbone(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--config", "configs/extract_digits.py", "--workdir", str(tmp_path)])
    assert "jtl.extract needs config.model.pretrained" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        extract_and_fit(_config(""), tmp_path)
