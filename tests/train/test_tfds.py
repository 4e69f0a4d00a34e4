"""An end-to-end train run on TFDS data under `tfds.testing.mock_data` (no TensorFlow, no download)."""

import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jtl.data import DataError, ImagePreprocessing, tfds_source
from jtl.train import train_and_evaluate


@pytest.mark.parametrize("name, channels", [("mnist", 1), ("cifar10", 3)])
def test_train_on_mock_tfds(tiny_config, tmp_path, name, channels):
    config = tiny_config.copy_and_resolve_references()
    config.data.source = "tfds"
    config.data.name = name
    config.num_classes = 10
    config.model.overrides = {"image_size": 16, "patch_size": 8, "num_channels": channels, "dropout_rate": 0.0}
    with tfds.testing.mock_data(num_examples=40):
        result = train_and_evaluate(config, tmp_path)
    assert 0.0 <= result["eval/accuracy"] <= 1.0 and np.isfinite(result["eval/loss"])
    assert "tensorflow" not in sys.modules


def test_unprepared_dataset_says_how_to_prepare_it(tmp_path):
    with pytest.raises(
        DataError, match=r"(?s)'cifar10' split 'train' is not prepared .*tfds build cifar10 --file_format=array_record"
    ):
        tfds_source("cifar10", "train", data_dir=str(tmp_path))


def test_image_preprocessing_shapes_and_normalisation():
    pre = ImagePreprocessing(size=12, mean=(0.5,), std=(0.25,))
    example = {"image": np.full((20, 30, 1), 255, np.uint8), "label": 3}
    out = pre.train(example, np.random.default_rng(0))
    assert out["image"].shape == (12, 12, 1) and out["label"] == 3
    np.testing.assert_allclose(out["image"], 2.0, atol=1e-5)  # (1 - 0.5) / 0.25
    assert pre.eval(example)["image"].shape == (12, 12, 1)
