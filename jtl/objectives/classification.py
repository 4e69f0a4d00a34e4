"""Classification: softmax cross-entropy (label smoothing, MixUp) on the model's own head, accuracy on the test
split and on an out-of-distribution split when the data has one, and transferability scores of the starting
features."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jtl import data as jdata
from jtl import models
from jtl.config import ConfigError
from jtl.features import extract_features, h_score, logme
from jtl.objectives._base import Load, Objective, Stream, Sums


def cross_entropy_and_accuracy(
    logits: jax.Array, batch: dict, num_classes: int, label_smoothing: float = 0.0
) -> tuple[jax.Array, jax.Array]:
    """Mean softmax cross-entropy against the batch's labels (or its soft ``targets``, e.g. from MixUp) and
    the accuracy.

    Args:
      logits: (N, C).
      batch: ``label`` (N,) and optionally ``targets`` (N, C).
      num_classes: C.
      label_smoothing: as in ``optax.smooth_labels``.

    Returns:
      ``(loss, accuracy)``.

    >>> loss, accuracy = cross_entropy_and_accuracy(jnp.array([[0.0, 9.0]]), {"label": jnp.array([1])}, 2)
    >>> round(float(loss), 4), float(accuracy)
    (0.0001, 1.0)
    """
    labels = batch["label"]
    if "targets" in batch:
        targets = batch["targets"]
    else:
        targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
    loss = optax.softmax_cross_entropy(logits.astype(jnp.float32), targets).mean()
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    return loss, accuracy


def mixup(batch: dict, rng: jax.Array, alpha: float, num_classes: int) -> dict:
    """MixUp (Zhang et al., 2018): each image blended with the batch's reverse, targets likewise.

    Args:
      batch: ``image`` and integer ``label``.
      rng: draws the mixing weight from Beta(alpha, alpha).
      alpha: the Beta distribution's parameter.
      num_classes: for the soft targets.

    Returns:
      The batch with mixed ``image`` and a soft ``targets`` (N, num_classes) entry.

    >>> out = mixup({"image": jnp.ones((2, 4)), "label": jnp.array([0, 1])}, jax.random.PRNGKey(0), 0.1, 2)
    >>> out["targets"].sum(1).tolist()
    [1.0, 1.0]
    """
    weight = jax.random.beta(rng, alpha, alpha)
    one_hot = jax.nn.one_hot(batch["label"], num_classes)
    image = batch["image"]
    mixed = weight * image + (1 - weight) * image[::-1]
    return {**batch, "image": mixed.astype(image.dtype), "targets": weight * one_hot + (1 - weight) * one_hot[::-1]}


def classification_sums(logits: jax.Array, batch: dict) -> dict[str, jax.Array]:
    """Sums of the loss, the correct predictions and the examples over the batch's ``mask`` rows.

    Args:
      logits: (N, C).
      batch: ``label`` and ``mask`` (N,).

    Returns:
      ``{"loss", "correct", "count"}``.

    >>> sums = classification_sums(jnp.array([[0.0, 1.0], [1.0, 0.0]]), {"label": jnp.array([1, 1]),
    ...                                                                    "mask": jnp.array([True, False])})
    >>> float(sums["correct"]), float(sums["count"])
    (1.0, 1.0)
    """
    logits = logits.astype(jnp.float32)
    mask = batch["mask"].astype(jnp.float32)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
    return {"loss": jnp.sum(losses * mask), "correct": jnp.sum(correct * mask), "count": jnp.sum(mask)}


def accuracy_metrics(sums: dict[str, float]) -> dict[str, float]:
    """``{"loss", "accuracy"}`` means from :func:`classification_sums` totals.

    Args:
      sums: totals of ``loss``, ``correct`` and ``count``.

    Returns:
      The means.

    >>> accuracy_metrics({"loss": 2.0, "correct": 3.0, "count": 4.0})
    {'loss': 0.5, 'accuracy': 0.75}
    """
    return {"loss": sums["loss"] / sums["count"], "accuracy": sums["correct"] / sums["count"]}


class Classification(Objective):
    """One labelled dataset (``config.data``), the model's own head.

    Args:
      num_classes: the classes.
      label_smoothing: as in ``optax.smooth_labels``.
      mixup_alpha: > 0: MixUp with this Beta parameter (image batches).
      transferability: report LogME and H-score of the starting features on the training set.
      data: the dataset config that :meth:`load` reads.
      eval_batch_size: for those scores' feature pass.

    >>> Classification(3).head_classes
    3
    """

    metric = "eval/accuracy"

    def __init__(
        self,
        num_classes: int,
        label_smoothing: float = 0.0,
        mixup_alpha: float = 0.0,
        *,
        transferability: bool = False,
        data: ml_collections.ConfigDict | None = None,
        eval_batch_size: int = 64,
    ):
        self.num_classes = num_classes
        self.head_classes = num_classes
        self.label_smoothing = label_smoothing
        self.mixup_alpha = mixup_alpha
        self.transferability = transferability
        self.data = data
        self.eval_batch_size = eval_batch_size

    # --- host side --------------------------------------------------------------------------------------------------
    def load(self, load: Load) -> None:
        self.primary = load(self.data)

    def train_stream(self, stream: Stream) -> Iterator[dict]:
        return stream(self.primary["train"], self.primary["train_transform"], 0)

    def init(self, rng: jax.Array, model: Any, variables: dict) -> tuple[Any, Any]:
        del rng, variables
        if self.mixup_alpha and models.input_kind(model) != "image":
            raise ConfigError("config.mixup_alpha blends images; it does not apply to text models")
        return {}, ()

    def start(self, model: Any, variables: dict) -> dict[str, float]:
        if not self.transferability:
            return {}
        split = self.primary
        features, labels = extract_features(
            model, variables, jdata.eval_batches(split["train"], self.eval_batch_size, split["eval_transform"])
        )
        return {
            "transferability/logme": float(logme(features, labels, self.num_classes)),
            "transferability/h_score": float(h_score(features, labels, self.num_classes)),
        }

    # --- pure -------------------------------------------------------------------------------------------------------
    def prepare(self, batch: dict, rng: jax.Array) -> tuple[dict, jax.Array]:
        if self.mixup_alpha <= 0:
            return batch, rng
        rng, mix_rng = jax.random.split(rng)
        return mixup(batch, mix_rng, self.mixup_alpha, self.num_classes), rng

    def loss(self, forward: Any, params: Any, state: Any, batch: dict, step: jax.Array) -> tuple:
        del params, state, step
        logits, batch_stats = forward(*models.model_inputs(batch))
        loss, accuracy = cross_entropy_and_accuracy(logits, batch, self.num_classes, self.label_smoothing)
        return loss, (batch_stats, {"accuracy": accuracy})

    def eval_sums(self, forward: Any, params: Any, batch: dict) -> dict[str, jax.Array]:
        del params
        logits, _ = forward(*models.model_inputs(batch))
        return classification_sums(logits, batch)

    # --- host side: evaluation --------------------------------------------------------------------------------------
    def evaluate(self, sums: Sums, model: Any, variables: Callable[[], dict]) -> dict[str, float]:
        del model, variables
        return split_metrics(sums, self.primary)


def split_metrics(sums: Sums, split: dict, prefix: str = "eval") -> dict[str, float]:
    """Loss and accuracy on a split's test set (``prefix/...``) and its out-of-distribution set if it has one
    (``prefix_ood/...``).

    Args:
      sums: the compiled eval step's sums over a source (:class:`jtl.objectives.Objective.evaluate`).
      split: ``{"test", ["ood"], "eval_transform", ...}``.
      prefix: the metrics' prefix.

    Returns:
      The metrics.

    >>> fake = lambda source, transform=None, keys=None: {"loss": 1.0, "correct": 1.0, "count": 2.0}
    >>> split_metrics(fake, {"test": [], "eval_transform": None})
    {'eval/loss': 0.5, 'eval/accuracy': 0.5}
    """
    metrics = {f"{prefix}/{k}": v for k, v in accuracy_metrics(sums(split["test"], split["eval_transform"])).items()}
    if "ood" in split:
        shifted = accuracy_metrics(sums(split["ood"], split["eval_transform"]))
        metrics.update({f"{prefix}_ood/{k}": v for k, v in shifted.items()})
    return metrics


def from_config(config: ml_collections.ConfigDict) -> Classification:
    """The classification objective of a config.

    Args:
      config: the experiment config (``num_classes``, ``label_smoothing``, ``mixup_alpha``, ``transferability``,
        ``data``).

    Returns:
      The objective.

    >>> from jtl.config import base_config
    >>> from_config(base_config()).num_classes
    10
    """
    if config.adaptation.method != "none":
        raise ConfigError(
            f"config.adaptation.method={config.adaptation.method!r} needs an unlabelled target domain: "
            "set config.target.source (and its other data fields)"
        )
    return Classification(
        config.num_classes,
        config.label_smoothing,
        config.mixup_alpha,
        transferability=config.transferability,
        data=config.data,
        eval_batch_size=config.eval_batch_size,
    )
