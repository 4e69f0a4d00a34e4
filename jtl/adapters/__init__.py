"""Parameter-efficient fine-tuning: adapter methods beside any jtl model's layers (added, trained, merged and
unmerged, switched, saved and loaded on their own) and BitFit's trainable rules.

Every method follows one protocol (:class:`Method`); :func:`with_adapters` wraps a model so that it applies them.
"""

from jtl.adapters._bottleneck import BottleneckSpec
from jtl.adapters._io import load_adapters, save_adapters
from jtl.adapters._lora import (
    BITFIT_TRAINABLE,
    LORA_TRAINABLE,
    LoRASpec,
    add_adapters,
    with_lora,
)
from jtl.adapters._method import (
    METHODS,
    Method,
    adapter_dropout,
    attach_adapters,
    base_model,
    fold,
    matching_layers,
    merge_adapters,
    method_from_dict,
    method_to_dict,
    register,
    split_adapters,
    trainable_patterns,
    unmerge_adapters,
    with_adapters,
)
from jtl.adapters._prompts import PromptSpec
from jtl.adapters._qlora import QLoRASpec

__all__ = [
    "BITFIT_TRAINABLE",
    "LORA_TRAINABLE",
    "METHODS",
    "BottleneckSpec",
    "LoRASpec",
    "Method",
    "PromptSpec",
    "QLoRASpec",
    "adapter_dropout",
    "add_adapters",
    "attach_adapters",
    "base_model",
    "fold",
    "load_adapters",
    "matching_layers",
    "merge_adapters",
    "method_from_dict",
    "method_to_dict",
    "register",
    "save_adapters",
    "split_adapters",
    "trainable_patterns",
    "unmerge_adapters",
    "with_adapters",
    "with_lora",
]
