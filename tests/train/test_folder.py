import numpy as np
import pytest

from jtl.data import DataError, ImageFolderSource
from jtl.train import train_and_evaluate
from tests.train.conftest import make_image_folder


def test_train_on_an_image_folder(tiny_config, tmp_path):
    config = tiny_config.copy_and_resolve_references()
    config.data.source = "folder"
    config.data.train_dir = str(make_image_folder(tmp_path / "train", 8, 0))
    config.data.test_dir = str(make_image_folder(tmp_path / "test", 3, 1))
    config.model.overrides = {"image_size": 16, "patch_size": 8, "num_channels": 3, "dropout_rate": 0.0}
    result = train_and_evaluate(config, tmp_path / "run")
    assert result["eval/accuracy"] >= 0.0 and np.isfinite(result["eval/loss"])


def test_folder_errors_name_the_directory(tmp_path):
    with pytest.raises(DataError, match=r"no such directory"):
        ImageFolderSource(tmp_path / "missing")
    (tmp_path / "cat").mkdir()
    with pytest.raises(DataError, match=r"cat: no images"):
        ImageFolderSource(tmp_path)
    (tmp_path / "cat" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"broken.png: not a readable image"):
        ImageFolderSource(tmp_path)[0]
    with pytest.raises(DataError, match=r"class directories \['dog'\] not found"):
        ImageFolderSource(tmp_path, classes=["cat", "dog"])
