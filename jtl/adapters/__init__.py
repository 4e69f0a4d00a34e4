"""Parameter-efficient fine-tuning: LoRA adapters beside any jtl model's Dense kernels (added, trained, merged,
saved and loaded on their own) and BitFit's trainable rules."""

from jtl.adapters._lora import (
    BITFIT_TRAINABLE,
    LORA_TRAINABLE,
    LoRASpec,
    add_adapters,
    base_model,
    load_adapters,
    merge_adapters,
    save_adapters,
    with_lora,
)

__all__ = [
    "BITFIT_TRAINABLE",
    "LORA_TRAINABLE",
    "LoRASpec",
    "add_adapters",
    "base_model",
    "load_adapters",
    "merge_adapters",
    "save_adapters",
    "with_lora",
]
