import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from jtl.weights import WeightLoadError, read_file, safetensors_shapes


def _tensors():
    rng = np.random.default_rng(0)
    return {
        "f32": rng.normal(size=(3, 5)).astype(np.float32),
        "f16": rng.normal(size=(7,)).astype(np.float16),
        "bf16": rng.normal(size=(2, 2, 3)).astype(ml_dtypes.bfloat16),
        "i64": np.arange(5, dtype=np.int64),
        "u8": np.arange(3, dtype=np.uint8),
        "flag": np.array([True, False]),
        "scalar": np.array(2.5, np.float64),
        "empty": np.zeros((0, 4), np.float32),
    }


def test_safetensors_reader_equals_the_reference_bit_for_bit(tmp_path):
    path = tmp_path / "t.safetensors"
    save_file(_tensors(), str(path), metadata={"format": "np"})
    ours, theirs = read_file(path), load_file(str(path))
    assert sorted(ours) == sorted(theirs)
    for name in theirs:
        assert ours[name].dtype == theirs[name].dtype and ours[name].shape == theirs[name].shape, name
        assert ours[name].tobytes() == theirs[name].tobytes(), name
    shapes = safetensors_shapes(path)
    assert shapes["bf16"].shape == (2, 2, 3) and shapes["bf16"].ndim == 3 and shapes["i64"].dtype == np.int64


def test_truncated_safetensors_names_the_file(tmp_path):
    path = tmp_path / "t.safetensors"
    save_file(_tensors(), str(path))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(WeightLoadError, match=r"t.safetensors: not a readable safetensors file .*'scalar'|truncated"):
        read_file(path)


def test_unknown_suffix_and_missing_file(tmp_path):
    (tmp_path / "w.ckpt").write_bytes(b"")
    with pytest.raises(WeightLoadError, match=r"w.ckpt: unknown checkpoint format '.ckpt'"):
        read_file(tmp_path / "w.ckpt")
    with pytest.raises(WeightLoadError, match=r"nope.safetensors: no such file"):
        read_file(tmp_path / "nope.safetensors")
