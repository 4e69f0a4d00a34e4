"""Readers for checkpoint files: each returns a flat ``{name: numpy array}`` dict, nothing unpickled blindly."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import NamedTuple

import ml_dtypes
import numpy as np


class WeightLoadError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file, keys and shapes at fault."""


class TensorSpec(NamedTuple):
    """A tensor's shape and dtype, read from a file's header without its data."""

    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)


_SAFETENSORS_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "F8_E4M3": ml_dtypes.float8_e4m3fn,
    "F8_E5M2": ml_dtypes.float8_e5m2,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U64": np.uint64,
    "U32": np.uint32,
    "U16": np.uint16,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def _safetensors_header(path: Path) -> tuple[dict[str, tuple[TensorSpec, int, int]], int]:
    """Parses a safetensors header: ``{name: (spec, begin, end)}`` (offsets into the data) and the data start."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if not 0 < length <= size - 8:
                raise ValueError(f"header length {length} does not fit a {size}-byte file")
            header = json.loads(f.read(length))
        entries = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            dtype = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]])
            begin, end = info["data_offsets"]
            spec = TensorSpec(tuple(info["shape"]), dtype)
            if end - begin != math.prod(spec.shape) * dtype.itemsize or end > size - 8 - length:
                raise ValueError(f"tensor {name!r}: data offsets {begin}..{end} do not fit its shape {spec.shape}")
            entries[name] = (spec, begin, end)
    except (OSError, ValueError, KeyError, TypeError, struct.error) as e:
        raise WeightLoadError(f"{path}: not a readable safetensors file ({e})") from e
    return entries, 8 + length


def safetensors_shapes(path: str | Path) -> dict[str, TensorSpec]:
    """Shapes and dtypes of a ``.safetensors`` file's tensors, from its header alone.

    Args:
      path: the file.

    Returns:
      ``{tensor name: TensorSpec}``.

    >>> import tempfile, safetensors.numpy
    >>> path = Path(tempfile.mkdtemp()) / "model.safetensors"
    >>> safetensors.numpy.save_file({"w": np.zeros((2, 3), np.float32)}, str(path))
    >>> spec = safetensors_shapes(path)["w"]
    >>> spec.shape, spec.dtype
    ((2, 3), dtype('float32'))
    """
    return {name: spec for name, (spec, _, _) in _safetensors_header(Path(path))[0].items()}


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """Reads a ``.safetensors`` file (no torch needed): one read into one buffer, tensors are views into it.

    Reading with ``readinto`` releases the GIL (so tracing can run meanwhile) and holds the file's bytes
    once, where ``safetensors.numpy.load_file`` peaks at twice the file.

    Args:
      path: the file.

    Returns:
      ``{tensor name: array}``; bfloat16 tensors come back as ``ml_dtypes.bfloat16`` arrays.

    >>> import tempfile, safetensors.numpy
    >>> path = Path(tempfile.mkdtemp()) / "model.safetensors"
    >>> safetensors.numpy.save_file({"fc.weight": np.ones((2, 3), np.float32)}, str(path))
    >>> {name: x.shape for name, x in read_safetensors(path).items()}
    {'fc.weight': (2, 3)}
    """
    path = Path(path)
    entries, start = _safetensors_header(path)
    data = np.empty(path.stat().st_size - start, np.uint8)
    with open(path, "rb", buffering=0) as f:
        f.seek(start)
        read = f.readinto(memoryview(data))
    if read != data.size:
        raise WeightLoadError(f"{path}: truncated: read {read} of {data.size} data bytes")
    return {name: data[begin:end].view(spec.dtype).reshape(spec.shape) for name, (spec, begin, end) in entries.items()}


def read_sharded(index_path: str | Path) -> dict[str, np.ndarray]:
    """Reads every shard named in a Hugging Face ``*.index.json`` (``weight_map``).

    Args:
      index_path: ``model.safetensors.index.json`` or ``pytorch_model.bin.index.json``.

    Returns:
      The union of the shards' tensors.

    >>> import tempfile, safetensors.numpy
    >>> root = Path(tempfile.mkdtemp())
    >>> safetensors.numpy.save_file({"a": np.ones(2, np.float32)}, str(root / "part-1.safetensors"))
    >>> safetensors.numpy.save_file({"b": np.ones(3, np.float32)}, str(root / "part-2.safetensors"))
    >>> index = {"weight_map": {"a": "part-1.safetensors", "b": "part-2.safetensors"}}
    >>> _ = (root / "model.safetensors.index.json").write_text(json.dumps(index))
    >>> sorted(read_sharded(root / "model.safetensors.index.json"))
    ['a', 'b']
    """
    index_path = Path(index_path)
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError) as e:
        raise WeightLoadError(f"{index_path}: not a sharded-checkpoint index with a 'weight_map' ({e})") from e
    tensors: dict[str, np.ndarray] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = index_path.parent / shard
        if not shard_path.exists():
            raise WeightLoadError(f"{index_path}: shard {shard!r} is listed but {shard_path} does not exist")
        tensors.update(read_file(shard_path))
    return tensors


def read_torch(path: str | Path) -> dict[str, np.ndarray]:
    """Reads a pickled PyTorch state dict (``.bin``/``.pth``/``.pt``) with ``torch.load(weights_only=True)``.

    Only tensors and plain containers are accepted: no arbitrary code runs while loading.

    Args:
      path: the file.

    Returns:
      ``{name: array}`` (a ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper is unwrapped).

    >>> import tempfile, torch
    >>> path = Path(tempfile.mkdtemp()) / "model.pth"
    >>> torch.save({"state_dict": {"fc.weight": torch.ones(2, 3)}}, path)
    >>> {name: x.shape for name, x in read_torch(path).items()}
    {'fc.weight': (2, 3)}
    """
    try:
        import torch
    except ImportError as e:
        raise WeightLoadError(
            f"{path}: reading a pickled PyTorch checkpoint needs torch, which is not installed. Either "
            "`pip install torch` (the CPU build is enough), or convert the file once to safetensors "
            "(`safetensors.torch.save_file(torch.load(path, weights_only=True), 'model.safetensors')`) "
            "and load that instead."
        ) from e
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, ... for foreign or unsafe files
        raise WeightLoadError(f"{path}: torch.load(weights_only=True) refused or failed: {e}") from e
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise WeightLoadError(f"{path}: expected a state dict, found {type(state).__name__}")
    out = {}
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise WeightLoadError(f"{path}: entry {name!r} is a {type(tensor).__name__}, not a tensor")
        tensor = tensor.detach().cpu()
        if tensor.dtype == torch.bfloat16:
            import ml_dtypes

            out[name] = tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        else:
            out[name] = tensor.numpy()
    return out


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Reads a big_vision/vit_jax ``.npz`` (``np.load(allow_pickle=False)``); names are ``a/b/c``.

    Args:
      path: the file.

    Returns:
      ``{name: array}``.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "vit.npz"
    >>> np.savez(path, **{"head/kernel": np.zeros((4, 2))})
    >>> sorted(read_npz(path))
    ['head/kernel']
    """
    try:
        with np.load(str(path), allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except ValueError as e:
        raise WeightLoadError(f"{path}: not a plain-array .npz ({e}); pickled arrays are refused") from e


def read_msgpack(path: str | Path) -> dict[str, np.ndarray]:
    """Reads a Flax ``msgpack`` checkpoint (e.g. ``flax_model.msgpack``); names are ``a/b/c``.

    Args:
      path: the file.

    Returns:
      ``{name: array}``.

    >>> import tempfile
    >>> from flax import serialization
    >>> path = Path(tempfile.mkdtemp()) / "flax_model.msgpack"
    >>> _ = path.write_bytes(serialization.msgpack_serialize({"head": {"kernel": np.ones((4, 2), np.float32)}}))
    >>> {name: x.shape for name, x in read_msgpack(path).items()}
    {'head/kernel': (4, 2)}
    """
    from flax import serialization

    try:
        tree = serialization.msgpack_restore(Path(path).read_bytes())
    except Exception as e:  # msgpack raises several unrelated types for bad bytes
        raise WeightLoadError(f"{path}: not a Flax msgpack checkpoint ({e})") from e
    return flatten_nested(tree)


def flatten_nested(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    """Flattens nested dicts into ``{"a/b/c": array}``.

    Args:
      tree: nested dicts of arrays.
      prefix: prepended to every key.

    Returns:
      ``{slash-joined path: array}``.

    >>> flatten_nested({"a": {"b": np.ones(1)}})
    {'a/b': array([1.])}
    """
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_nested(value, name + "/"))
        else:
            flat[name] = np.asarray(value)
    return flat


READERS = {
    ".safetensors": read_safetensors,
    ".bin": read_torch,
    ".pth": read_torch,
    ".pt": read_torch,
    ".npz": read_npz,
    ".msgpack": read_msgpack,
}


def read_file(path: str | Path) -> dict[str, np.ndarray]:
    """Reads one checkpoint file by its suffix (``.safetensors``, ``.bin``/``.pth``/``.pt``, ``.npz``,
    ``.msgpack``, or a sharded ``*.index.json``).

    Args:
      path: the file.

    Returns:
      ``{name: array}``.

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "w.npz")
    >>> np.savez(path, **{"head/kernel": np.ones((2, 3))})
    >>> {k: v.shape for k, v in read_file(path).items()}
    {'head/kernel': (2, 3)}
    """
    path = Path(path)
    if not path.exists():
        raise WeightLoadError(f"{path}: no such file")
    if path.name.endswith(".index.json"):
        return read_sharded(path)
    reader = READERS.get(path.suffix)
    if reader is None:
        raise WeightLoadError(f"{path}: unknown checkpoint format {path.suffix!r}; known: {sorted(READERS)}")
    return reader(path)
