"""jtl's own pretrained format: ``jtl_model.json`` (the model class and fields) + an Orbax checkpoint."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jtl.masking import named_leaves
from jtl.weights._readers import WeightLoadError

MODEL_FILE = "jtl_model.json"
VARIABLES_DIR = "variables"
_SKIP_FIELDS = {"parent", "name"}


def save_pretrained(directory: str | os.PathLike, model: nn.Module, variables: dict[str, Any]) -> Path:
    """Saves a jtl model and its variables so that :func:`load_pretrained` can load them back.

    Args:
      directory: a new or empty directory.
      model: the jtl model (its class and fields are recorded, but not its memory controls ``remat`` and
        ``scan_layers``: they say how it runs, not what it computes).
      variables: its variables (``{"params": ..., "batch_stats": ...}``).

    Returns:
      The directory.

    >>> import tempfile
    >>> from jtl import models
    >>> from jtl.weights import load_pretrained
    >>> model = models.create("vit-testing", num_classes=2)
    >>> directory = save_pretrained(Path(tempfile.mkdtemp()) / "export", model, models.init(model))
    >>> type(load_pretrained(directory, verbose=False)[0]).__name__
    'ViT'
    """
    import orbax.checkpoint as ocp

    # Imported here: jtl.models imports this package.
    from jtl.models import MEMORY_FIELDS

    directory = Path(directory).absolute()
    if directory.exists() and any(directory.iterdir()):
        raise WeightLoadError(f"{directory}: not empty; save_pretrained never overwrites a checkpoint")
    directory.mkdir(parents=True, exist_ok=True)
    fields = {}
    for key in model.__dataclass_fields__:
        if key in _SKIP_FIELDS or key in MEMORY_FIELDS:
            continue
        value = getattr(model, key)
        if key == "dtype":
            value = jnp.dtype(value).name
        fields[key] = value
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(directory / VARIABLES_DIR, variables)
    checkpointer.wait_until_finished()
    (directory / MODEL_FILE).write_text(json.dumps({"model": type(model).__name__, "fields": fields}, indent=1))
    return directory


def read_native(directory: Path) -> tuple[str, dict[str, Any], dict[str, np.ndarray], str]:
    """Reads a :func:`save_pretrained` directory: ``(model class name, fields, tensors, where)``."""
    import orbax.checkpoint as ocp

    directory = directory.absolute()  # Orbax accepts absolute paths only
    spec_path = directory / MODEL_FILE
    try:
        spec = json.loads(spec_path.read_text())
        model_name, fields = spec["model"], spec["fields"]
    except (json.JSONDecodeError, KeyError) as e:
        raise WeightLoadError(f"{spec_path}: not a jtl model description ({e})") from e
    if not (directory / VARIABLES_DIR).exists():
        raise WeightLoadError(f"{directory}: {MODEL_FILE} is there but the Orbax '{VARIABLES_DIR}' directory is not")
    restored = ocp.StandardCheckpointer().restore(directory / VARIABLES_DIR)
    state = {name: np.asarray(x) for name, x in named_leaves(restored)}
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    if "dtype" in fields:
        fields["dtype"] = jnp.dtype(fields["dtype"])
    return model_name, fields, state, str(directory)
