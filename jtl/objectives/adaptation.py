"""Domain adaptation: a labelled source (``config.data``) and an unlabelled target (``config.target``) read side
by side, one batch of each per step; the source's classification loss plus the method's transfer loss (DANN,
CDAN, MMD, CORAL, MCC; the discriminator is the objective's param). Evaluation is on the target's test split; the
source's test split is the validation set, and deep embedded validation (DEV) estimates the target risk without
a target label. At the end, the evaluation each selection rule picks is reported beside the oracle."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jtl import data as jdata
from jtl import models
from jtl.config import ConfigError
from jtl.features import features_and_logits
from jtl.objectives._base import Load, Stream, Sums, check_unset
from jtl.objectives._domain import (
    cdan_inputs,
    coral,
    dann_coefficient,
    domain_adversarial_loss,
    entropy,
    gradient_reversal,
    mcc,
    mmd,
)
from jtl.objectives._transfer import (
    METHODS,
    AdaptationSpec,
    DomainDiscriminator,
    deep_embedded_validation,
    density_ratios,
    dev_risk,
    init_discriminator,
    transfer_loss,
)
from jtl.objectives.classification import Classification, cross_entropy_and_accuracy, split_metrics

TARGET = "target/"


def target_part(batch: dict) -> dict:
    """The unlabelled target batch inside a domain-adaptation batch: its ``target/`` keys, unprefixed.

    Args:
      batch: the batch, source keys plus ``target/`` keys.

    Returns:
      ``{field: value}`` of the target domain.

    >>> sorted(target_part({"image": 0, "label": 0, "target/image": 1}))
    ['image']
    """
    return {key.removeprefix(TARGET): value for key, value in batch.items() if key.startswith(TARGET)}


class _Subset(NamedTuple):
    source: Any
    indices: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict:
        return self.source[int(self.indices[index])]


def _sample(source: Any, limit: int, seed: int) -> Any:
    """At most ``limit`` examples of ``source``, a seeded random subset."""
    if len(source) <= limit:
        return source
    return _Subset(source, np.sort(np.random.default_rng(seed).permutation(len(source))[:limit]))


class DomainAdaptation(Classification):
    """Source classification plus a transfer loss toward an unlabelled target domain.

    Args:
      num_classes: the classes (shared by both domains).
      spec: the method and its settings.
      data: the labelled source's dataset config.
      target: the unlabelled target's dataset config.
      dev: run deep embedded validation at each evaluation.
      dev_examples: DEV reads at most this many examples of each set (a seeded sample).
      seed: the sample's seed.
      label_smoothing: as in ``optax.smooth_labels``.
      transferability: LogME and H-score of the starting features (on the source).
      eval_batch_size: for those scores.

    >>> objective = DomainAdaptation(3, AdaptationSpec("cdan", discriminator_width=4))
    >>> model = models.create("vit-testing", num_classes=3)
    >>> params, _ = objective.init(jax.random.PRNGKey(0), model, models.init(model))
    >>> params["discriminator"]["hidden_0"]["kernel"].shape
    (48, 4)
    """

    def __init__(
        self,
        num_classes: int,
        spec: AdaptationSpec,
        *,
        data: ml_collections.ConfigDict | None = None,
        target: ml_collections.ConfigDict | None = None,
        dev: bool = True,
        dev_examples: int = 2000,
        seed: int = 0,
        label_smoothing: float = 0.0,
        transferability: bool = False,
        eval_batch_size: int = 64,
    ):
        super().__init__(
            num_classes,
            label_smoothing,
            transferability=transferability,
            data=data,
            eval_batch_size=eval_batch_size,
        )
        self.spec = spec
        self.target_config = target
        self.dev = dev
        self.dev_examples = dev_examples
        self.seed = seed
        self._dev_outputs = None

    # --- host side --------------------------------------------------------------------------------------------------
    def load(self, load: Load) -> None:
        super().load(load)
        self.target = load(self.target_config)
        # The target domain's training split is read without its labels.
        self.target_train = jdata.Unlabelled(self.target["train"])

    def train_stream(self, stream: Stream) -> Iterator[dict]:
        source = super().train_stream(stream)
        target = stream(self.target_train, self.target["train_transform"], 1)
        return jdata.ZippedBatches({"source": source, "target": target}, unprefixed="source")

    def init(self, rng: jax.Array, model: Any, variables: dict) -> tuple[Any, Any]:
        super().init(rng, model, variables)
        backbone = model.clone(num_classes=0)
        width = jax.eval_shape(lambda v: backbone.apply(v, *model.example_inputs()), variables).shape[-1]
        discriminator = init_discriminator(self.spec, width, self.num_classes, rng)
        return ({} if discriminator is None else {"discriminator": discriminator}), ()

    # --- pure -------------------------------------------------------------------------------------------------------
    def loss(self, forward: Any, params: Any, state: Any, batch: dict, step: jax.Array) -> tuple:
        del state
        # Source and target go through the model together, as one batch (BatchNorm sees both domains).
        inputs = models.model_inputs(batch)
        if self.spec.method != "none":
            target = models.model_inputs(target_part(batch))
            inputs = tuple(jnp.concatenate(pair) for pair in zip(inputs, target, strict=True))
        features, all_logits, batch_stats = forward.features_and_logits(*inputs)
        n = batch["label"].shape[0]
        logits = all_logits[:n]
        transfer, metrics = transfer_loss(
            self.spec, params.get("discriminator"), features[:n], features[n:], logits, all_logits[n:], step
        )
        loss, accuracy = cross_entropy_and_accuracy(logits, batch, self.num_classes, self.label_smoothing)
        return loss + transfer, (batch_stats, {"accuracy": accuracy, **metrics, "classification_loss": loss})

    # --- host side: evaluation --------------------------------------------------------------------------------------
    def evaluate(self, sums: Sums, model: Any, variables: Callable[[], dict]) -> dict[str, float]:
        metrics = split_metrics(sums, self.target)
        source = {"test": self.primary["test"], "eval_transform": self.primary["eval_transform"]}
        metrics.update(split_metrics(sums, source, "eval_source"))
        if self.dev:
            metrics["selection/dev_risk"] = self._dev_risk(model, variables())
        return metrics

    def _dev_risk(self, model: Any, variables: dict) -> float:
        """Deep embedded validation of the current model: source validation losses importance-weighted toward
        the target domain in feature space (no target label is read)."""
        if self._dev_outputs is None:
            self._dev_outputs = jax.jit(lambda v, batch: features_and_logits(model, v, *models.model_inputs(batch))[:2])

        def run(source: Any, transform: Any) -> tuple:
            features, logits, labels = [], [], []
            for batch in jdata.eval_batches(_sample(source, self.dev_examples, self.seed), 256, transform):
                keep = batch["mask"]
                f, z = self._dev_outputs(variables, {k: v for k, v in batch.items() if k not in ("label", "mask")})
                features.append(np.asarray(f)[keep])
                logits.append(np.asarray(z, np.float64)[keep])
                labels.append(batch["label"][keep] if "label" in batch else None)
            return np.concatenate(features), np.concatenate(logits), labels

        source_features, _, _ = run(self.primary["train"], self.primary["eval_transform"])
        target_features, _, _ = run(self.target_train, self.target["eval_transform"])
        validation_features, logits, labels = run(self.primary["test"], self.primary["eval_transform"])
        labels = np.concatenate(labels)
        log_probs = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
        losses = -log_probs[np.arange(len(labels)), labels]
        return deep_embedded_validation(source_features, target_features, validation_features, losses)

    def summarize(self, history: list[dict], final: dict, workdir: Path, is_chief: bool) -> dict[str, Any]:
        """Which evaluation each criterion picks, and the target accuracy there: source validation accuracy and
        DEV (no target label read) beside the oracle (the best target accuracy, which peeks at target labels)."""
        records = {}
        logged = workdir / "metrics.jsonl"
        earlier = [json.loads(line) for line in logged.read_text().splitlines()] if logged.is_file() else []
        for record in [*earlier, *history, final]:
            if "eval/accuracy" in record:
                records[record["step"]] = record  # a resumed run re-evaluates some steps: the latest counts
        candidates = list(records.values())
        chosen = {"source_validation": max(candidates, key=lambda r: r["eval_source/accuracy"])}
        if "selection/dev_risk" in final:
            chosen["dev"] = min(candidates, key=lambda r: r["selection/dev_risk"])
        chosen["oracle"] = max(candidates, key=lambda r: r["eval/accuracy"])
        chosen["last"] = final
        result = {}
        for name, record in chosen.items():
            result[f"selected/{name}/step"] = record["step"]
            result[f"selected/{name}/accuracy"] = record["eval/accuracy"]
        if is_chief:
            print(
                "model selection, target accuracy at the chosen evaluation: "
                + ", ".join(f"{name} {r['eval/accuracy']:.4f} (step {r['step']})" for name, r in chosen.items())
                + "; only the oracle reads target labels"
            )
        return result


def from_config(config: ml_collections.ConfigDict) -> DomainAdaptation:
    """The domain-adaptation objective of a config (``config.target``, ``config.adaptation``).

    Args:
      config: the experiment config.

    Returns:
      The objective.

    >>> from jtl.config import base_config
    >>> config = base_config()
    >>> config.target.source, config.adaptation.method = "digits", "mmd"
    >>> from_config(config).spec.method
    'mmd'
    """
    if not config.target.source:
        raise ConfigError("the adaptation objective needs an unlabelled target domain: set config.target.source")
    a = config.adaptation
    if a.method not in METHODS:
        raise ConfigError(f"config.adaptation.method={a.method!r}; known: {', '.join(METHODS)}")
    single_task = ("mixup_alpha", "hyperrule", "baseline.scratch")
    check_unset(config, single_task, "single-task training only, not with config.target (domain adaptation)")
    spec = AdaptationSpec(
        a.method, a.weight, config.total_steps, a.gamma, a.temperature, a.entropy_conditioning, a.discriminator_width
    )
    return DomainAdaptation(
        config.num_classes,
        spec,
        data=config.data,
        target=config.target,
        dev=a.dev,
        dev_examples=a.dev_examples,
        seed=config.seed,
        label_smoothing=config.label_smoothing,
        transferability=config.transferability,
        eval_batch_size=config.eval_batch_size,
    )


__all__ = [
    "METHODS",
    "TARGET",
    "AdaptationSpec",
    "DomainAdaptation",
    "DomainDiscriminator",
    "cdan_inputs",
    "coral",
    "dann_coefficient",
    "deep_embedded_validation",
    "density_ratios",
    "dev_risk",
    "domain_adversarial_loss",
    "entropy",
    "from_config",
    "gradient_reversal",
    "init_discriminator",
    "mcc",
    "mmd",
    "target_part",
    "transfer_loss",
]
