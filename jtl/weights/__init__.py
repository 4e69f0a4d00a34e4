"""Pretrained weights into jtl models: readers, per-source tables, head surgery, resolution change, reports."""

from jtl.weights._convert import LoadReport, Rule, batch_norm, conv, convert, layer_norm, linear, merge_into
from jtl.weights._families import resample_pos_embedding
from jtl.weights._load import (
    Pretrained,
    download_from_hub,
    hf_flax_to_torch_layout,
    load_pretrained,
    load_tokenizer,
    save_big_vision_npz,
)
from jtl.weights._native import save_pretrained
from jtl.weights._readers import (
    WeightLoadError,
    flatten_nested,
    read_file,
    read_msgpack,
    read_npz,
    read_safetensors,
    read_sharded,
    read_torch,
)

__all__ = [
    "LoadReport",
    "Pretrained",
    "Rule",
    "WeightLoadError",
    "batch_norm",
    "conv",
    "convert",
    "download_from_hub",
    "flatten_nested",
    "hf_flax_to_torch_layout",
    "layer_norm",
    "linear",
    "load_pretrained",
    "load_tokenizer",
    "merge_into",
    "read_file",
    "read_msgpack",
    "read_npz",
    "read_safetensors",
    "read_sharded",
    "read_torch",
    "resample_pos_embedding",
    "save_big_vision_npz",
    "save_pretrained",
]
