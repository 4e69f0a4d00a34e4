"""Features of a pretrained backbone: the model with its head removed, run once over a dataset."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from jtl import models


def feature_fn(model: nn.Module) -> Callable[[dict, dict], jax.Array]:
    """A jitted ``(variables, batch) -> features``: the model's pooled, pre-head output (``num_classes=0``).

    Args:
      model: a jtl model (its head, if any, is ignored).

    Returns:
      The function; features are float32.

    >>> model = models.create("vit-testing", num_classes=3)
    >>> fn = feature_fn(model)
    >>> fn(models.init(model), {"image": model.example_inputs()[0]}).shape
    (1, 16)
    """
    backbone = model.clone(num_classes=0)

    @jax.jit
    def features(variables: dict, batch: dict) -> jax.Array:
        return backbone.apply(variables, *models.model_inputs(batch)).astype(np.float32)

    return features


def features_and_logits(model: nn.Module, variables: dict, *inputs: jax.Array, **apply_kwargs: Any) -> tuple:
    """One forward pass that returns both the pooled features and the head's logits (what domain adaptation's
    losses take), and the updated collections when ``apply_kwargs`` asks for ``mutable`` ones.

    Args:
      model: a jtl model with a head (it sows its pooled features as ``intermediates/features``).
      variables: its variables.
      *inputs: the model's positional inputs (:func:`jtl.models.model_inputs`).
      **apply_kwargs: passed to ``apply`` (``train``, ``rngs``, ``mutable``).

    Returns:
      ``(features (N, D), logits (N, C), updated collections ({} unless mutable))``.

    >>> model = models.create("vit-testing", num_classes=3)
    >>> variables = models.init(model)
    >>> features, logits, _ = features_and_logits(model, variables, *model.example_inputs())
    >>> bool(np.allclose(logits, model.apply(variables, *model.example_inputs()), atol=1e-6)), features.shape
    (True, (1, 16))
    """
    # Every jtl model sows its pooled features before its head, whatever the head is (DeiT's two heads).
    mutable = ["intermediates", *apply_kwargs.pop("mutable", [])]
    logits, updates = model.apply(variables, *inputs, mutable=mutable, **apply_kwargs)
    features = updates.pop("intermediates")["features"][0]
    return features, logits, dict(updates)


def extract_features(
    model: nn.Module, variables: dict, batches: Iterable[dict], fn: Callable | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Runs the backbone over ``batches`` and returns the features and labels of the real (unmasked) examples.

    Args:
      model: a jtl model.
      variables: its variables (a head in them is ignored).
      batches: batches with ``label`` and optionally ``mask`` (as :func:`jtl.data.eval_batches` yields).
      fn: ``feature_fn(model)`` built once by a caller that extracts several times, so it compiles once.

    Returns:
      ``(features (N, D), labels (N,))`` as NumPy arrays.

    >>> from jtl import data
    >>> model = models.create("vit-testing", num_classes=2, image_size=8, patch_size=4, num_channels=1)
    >>> task = data.digits_task([0, 1], shots=3)
    >>> features, labels = extract_features(model, models.init(model), data.eval_batches(task["train"], 4))
    >>> features.shape, labels.shape
    ((6, 16), (6,))
    """
    fn = fn or feature_fn(model)
    features, labels = [], []
    for batch in batches:
        keep = np.asarray(batch.get("mask", np.ones(len(batch["label"]), bool)))
        inputs = {k: v for k, v in batch.items() if k not in ("label", "mask")}
        features.append(np.asarray(fn(variables, inputs))[keep])
        labels.append(np.asarray(batch["label"])[keep])
    return np.concatenate(features), np.concatenate(labels)
