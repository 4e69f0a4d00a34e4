"""Pretrained weights into jtl models: readers, the rule engine, source resolution over the layouts that the model
families register, head surgery, resolution change, reports, export, and jtl's own format."""

from jtl.weights._convert import (
    LoadReport,
    Rule,
    batch_norm,
    conv,
    convert,
    fresh_init,
    layer_norm,
    linear,
    merge_into,
)
from jtl.weights._export import export, save_big_vision_npz
from jtl.weights._keys import checkpoint_keys
from jtl.weights._layout import (
    HEAD,
    HEAD_AND_POOLER,
    VIT_MODULE_RENAMES,
    Layout,
    adapt_input_channels,
    first_match,
    hf_gelu_approximate,
    in_memory_key,
    resample_pos_embedding,
    resize_grid,
)
from jtl.weights._load import (
    HF_WEIGHT_FILES,
    Pretrained,
    download_from_hub,
    get_layout,
    hf_flax_to_torch_layout,
    load_pretrained,
    load_tokenizer,
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
    safetensors_shapes,
)
from jtl.weights._save_hf import save_hf_pretrained

__all__ = [
    "HEAD",
    "HEAD_AND_POOLER",
    "HF_WEIGHT_FILES",
    "VIT_MODULE_RENAMES",
    "Layout",
    "LoadReport",
    "Pretrained",
    "Rule",
    "WeightLoadError",
    "adapt_input_channels",
    "batch_norm",
    "checkpoint_keys",
    "conv",
    "convert",
    "download_from_hub",
    "export",
    "first_match",
    "flatten_nested",
    "fresh_init",
    "get_layout",
    "hf_flax_to_torch_layout",
    "hf_gelu_approximate",
    "in_memory_key",
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
    "resize_grid",
    "safetensors_shapes",
    "save_big_vision_npz",
    "save_hf_pretrained",
    "save_pretrained",
]
