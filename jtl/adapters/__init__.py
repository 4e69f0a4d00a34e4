"""Parameter-efficient fine-tuning: adapter methods beside any jtl model's layers (added, trained, merged and
unmerged, switched, saved and loaded on their own) and BitFit's trainable rules.

Every method follows one protocol (:class:`Method`); :func:`with_adapters` wraps a model so that it applies them.
The methods: LoRA (Dense and convolution layers), DoRA, (IA)^3, QLoRA, bottleneck adapters (Houlsby, Pfeiffer)
and Visual Prompt Tuning; :func:`from_config` builds them from a config. Adapters go to and come from Hugging Face
PEFT's format (:func:`save_peft`, :func:`load_peft`).
"""

from jtl.adapters._bottleneck import BottleneckSpec
from jtl.adapters._config import FROM_CONFIG, from_config, switch_off
from jtl.adapters._dora import DoRASpec
from jtl.adapters._ia3 import IA3Spec
from jtl.adapters._io import fill_leaves, load_adapters, read_adapters, save_adapters
from jtl.adapters._lora import (
    BITFIT_TRAINABLE,
    LORA_TRAINABLE,
    LoRASpec,
    add_adapters,
    add_low_rank,
    low_rank_conv,
    low_rank_leaves,
    with_lora,
)
from jtl.adapters._method import (
    METHODS,
    Method,
    adapter_dropout,
    adapter_groups,
    add_to_layers,
    attach_adapters,
    base_model,
    fold,
    is_dense,
    matching_layers,
    merge_adapters,
    merge_record,
    method_from_dict,
    method_to_dict,
    register,
    split_adapters,
    trainable_patterns,
    unmerge_adapters,
    with_adapters,
)
from jtl.adapters._peft_format import load_peft, save_peft
from jtl.adapters._prompts import PromptSpec
from jtl.adapters._qlora import QLoRASpec
from jtl.adapters._set import AdapterSet

__all__ = [
    "BITFIT_TRAINABLE",
    "FROM_CONFIG",
    "LORA_TRAINABLE",
    "METHODS",
    "AdapterSet",
    "BottleneckSpec",
    "DoRASpec",
    "IA3Spec",
    "LoRASpec",
    "Method",
    "PromptSpec",
    "QLoRASpec",
    "adapter_dropout",
    "adapter_groups",
    "add_adapters",
    "add_low_rank",
    "add_to_layers",
    "attach_adapters",
    "base_model",
    "fill_leaves",
    "fold",
    "from_config",
    "is_dense",
    "load_adapters",
    "load_peft",
    "low_rank_conv",
    "low_rank_leaves",
    "matching_layers",
    "merge_adapters",
    "merge_record",
    "method_from_dict",
    "method_to_dict",
    "read_adapters",
    "register",
    "save_adapters",
    "save_peft",
    "split_adapters",
    "switch_off",
    "trainable_patterns",
    "unmerge_adapters",
    "with_adapters",
    "with_lora",
]
