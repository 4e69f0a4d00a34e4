"""``python -m jtl.train --config configs/X.py[:arg] [--config.key=value ...] [--workdir DIR]``.

One sectioned ``train_and_evaluate`` that reads top to bottom: set-up, data, model and weights, what trains,
optimizer, state (resumed from the workdir's latest checkpoint if there is one), compiled steps, the loop
(log / eval / checkpoint on their own cadences, SIGTERM saves and exits), final evaluation. The objective is
one task, domain adaptation (``config.target``: a labelled source and an unlabelled target, model selection
without target labels) or several tasks on a shared backbone (``config.tasks``).
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tensorboardX import SummaryWriter

import jtl.masking as jm
from jtl import data as jdata
from jtl import methods, models, multitask, parallel
from jtl.cadence import is_time
from jtl.checkpoint import Checkpointer
from jtl.config import ConfigError, command_line_parser, parse_command_line
from jtl.weights import load_pretrained, load_tokenizer


class TrainingError(RuntimeError):
    """The run cannot go on (a non-finite loss, ...); the message says why and what was kept."""


def _preprocessing_stats(data: ml_collections.ConfigDict, pretrained: str) -> tuple[tuple, tuple]:
    """Normalisation from the pretrained model's ``preprocessor_config.json`` if it has one, else the config's."""
    processor = Path(pretrained or "-") / "preprocessor_config.json"
    if processor.is_file():
        stats = json.loads(processor.read_text())
        if "image_mean" in stats and "image_std" in stats:
            return tuple(stats["image_mean"]), tuple(stats["image_std"])
    return tuple(data.mean), tuple(data.std)


def _build_data(data: ml_collections.ConfigDict, model: Any, pretrained: str = "") -> dict[str, Any]:
    """Train and test sources of one dataset config (``config.data``, ``config.target`` or a task's ``data``), and
    their transforms (None where the source is already model-ready)."""
    digits_only = data.ood_shift or data.label_noise or data.shift or data.half >= 0 or data.labels != "class"
    if digits_only and data.source != "digits":
        raise ConfigError(
            "data.ood_shift, data.label_noise, data.shift, data.half and data.labels apply to data.source='digits' "
            f"only, not {data.source!r}"
        )
    if data.source == "digits":
        splits = jdata.digits_task(
            data.classes,
            shots=data.shots or None,
            seed=data.split_seed,
            half=data.half if data.half >= 0 else None,
            labels=data.labels,
        )
        if data.label_noise:
            splits["train"] = jdata.shuffle_labels(splits["train"], data.label_noise, data.split_seed)
        for index, kind in enumerate(k.strip() for k in data.shift.split(",") if k.strip()):
            for offset, split in enumerate(("train", "test")):
                splits[split] = jdata.shifted(splits[split], kind, seed=data.split_seed + 2 * index + offset)
        if data.ood_shift:
            splits["ood"] = jdata.shifted(splits["test"], data.ood_shift, seed=data.split_seed)
        return {**splits, "train_transform": None, "eval_transform": None}
    if isinstance(model, models.Bert):
        tokenizer = load_tokenizer(data.tokenizer or pretrained)
        preprocessing = jdata.TextPreprocessing(tokenizer, data.max_length, data.text_key)
    else:
        mean, std = _preprocessing_stats(data, pretrained)
        preprocessing = jdata.ImagePreprocessing(model.image_size, mean, std, crop=data.crop, flip=data.flip)
    transforms = {"train_transform": preprocessing.train, "eval_transform": preprocessing.eval}
    if data.source == "tfds":
        data_dir = data.data_dir or None
        return {
            "train": jdata.tfds_source(data.name, data.train_split, data_dir),
            "test": jdata.tfds_source(data.name, data.test_split, data_dir),
            **transforms,
        }
    if data.source == "folder":
        if not data.train_dir or not data.test_dir:
            raise ConfigError("data.source='folder' needs data.train_dir and data.test_dir")
        train = jdata.ImageFolderSource(data.train_dir)
        # The test split uses the training classes, in the same order, so labels agree.
        return {"train": train, "test": jdata.ImageFolderSource(data.test_dir, train.classes), **transforms}
    raise ConfigError(f"data.source={data.source!r} is not supported; known: digits, tfds, folder")


def _build_model(config: ml_collections.ConfigDict) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Returns (model, variables, description); pretrained weights when ``config.model.pretrained`` is set."""
    overrides = dict(config.model.overrides)
    # Multi-task: the shared backbone returns features; the tasks' heads live in params["heads"].
    num_classes = 0 if config.tasks else config.num_classes
    if isinstance(overrides.get("dtype"), str):
        overrides["dtype"] = jnp.dtype(overrides["dtype"])  # e.g. "bfloat16": compute dtype, params stay float32
    if config.model.pretrained:
        if config.model.drop_pre_logits:
            overrides["drop_pre_logits"] = True
        model, variables, _ = load_pretrained(
            config.model.pretrained, num_classes=num_classes, verbose=jax.process_index() == 0, **overrides
        )
        if config.model.reinit:
            variables = models.init(model, seed=config.seed)
    else:
        model = models.create(config.model.name, num_classes=num_classes, **overrides)
        variables = models.init(model, seed=config.seed)
    if config.lora.rank:
        spec = methods.LoRASpec(
            tuple(config.lora.targets), config.lora.rank, config.lora.alpha, config.lora.dropout, config.lora.rslora
        )
        model = methods.with_lora(model, spec)
        params = methods.add_adapters(variables["params"], spec, jax.random.PRNGKey(config.seed))
        variables = {**variables, "params": params}
    description = {
        "class": type(model).__name__,
        **{k: repr(getattr(model, k)) for k in model.__dataclass_fields__ if k not in ("parent", "name")},
    }
    return model, variables, description


def _feature_dim(model: Any, variables: dict) -> int:
    """The width of the model's pooled features (its head's input)."""
    backbone = model.clone(num_classes=0)
    return jax.eval_shape(lambda v: backbone.apply(v, *model.example_inputs()), variables).shape[-1]


def _adaptation_spec(config: ml_collections.ConfigDict) -> methods.AdaptationSpec | None:
    """The domain-adaptation method from ``config.adaptation`` when ``config.target`` names a target domain."""
    if not config.target.source:
        if config.adaptation.method != "none":
            raise ConfigError(
                f"config.adaptation.method={config.adaptation.method!r} needs an unlabelled target domain: "
                "set config.target.source (and its other data fields)"
            )
        return None
    if config.adaptation.method not in methods.METHODS:
        raise ConfigError(f"config.adaptation.method={config.adaptation.method!r}; known: {', '.join(methods.METHODS)}")
    a = config.adaptation
    return methods.AdaptationSpec(
        a.method, a.weight, config.total_steps, a.gamma, a.temperature, a.entropy_conditioning, a.discriminator_width
    )


def _multitask_setup(config: ml_collections.ConfigDict) -> tuple[list[multitask.Task], multitask.Weighting] | None:
    """The tasks and their weighting from ``config.tasks`` / ``config.multitask`` (None: one task)."""
    if not config.tasks:
        return None
    tasks = [multitask.Task(name, t.kind, t.num_classes, t.weight) for name, t in config.tasks.items()]
    m = config.multitask
    weighting = multitask.Weighting(
        m.weighting, m.dwa_temperature, m.dwa_period, m.gradnorm_alpha, m.gradnorm_learning_rate
    )
    try:
        multitask.check(tasks, weighting)
    except ValueError as e:
        raise ConfigError(f"config.tasks / config.multitask: {e}") from e
    return tasks, weighting


def _with_auxiliary(trainable: Any) -> Any:
    """The mask spec applied to the model's own params, with the objective's entries (domain discriminator,
    task heads, loss weights) always trainable."""

    def mask(params: dict) -> dict:
        own = {k: v for k, v in params.items() if k not in parallel.AUXILIARY}
        resolved = jm.resolve_mask(trainable, own)
        always = {k: jax.tree_util.tree_map(lambda _: True, v) for k, v in params.items() if k in parallel.AUXILIARY}
        merged = {**resolved, **always}
        return {k: merged[k] for k in params}  # the params' own key order

    return mask


def _trainable(config: ml_collections.ConfigDict, model: Any) -> Any:
    """The trainable-mask spec from ``config.trainable`` / ``config.frozen`` / ``config.train_last_n``."""
    if config.train_last_n >= 0:
        # The last N layers below the top, plus the top (final norm, pooler and head) itself.
        return models.top_layers(model, config.train_last_n + 1)
    if config.trainable:
        return list(config.trainable)
    if config.frozen:
        return lambda tree: jm.trainable_mask(tree, frozen=list(config.frozen))
    if config.lora.rank:
        return list(methods.LORA_TRAINABLE)
    return lambda tree: jax.tree_util.tree_map(lambda _: True, tree)


def _stages(config: ml_collections.ConfigDict, model: Any) -> tuple[tuple[int, ...], list[Any]]:
    """``(starts, trainables)``: stage k trains ``trainables[k]`` from step ``starts[k]`` (one stage unless
    ``config.unfreeze_starts`` asks for gradual unfreezing)."""
    if not config.unfreeze_starts:
        return (0,), [_trainable(config, model)]
    others = config.trainable or config.frozen or config.train_last_n >= 0 or config.lora.rank
    if others:
        raise ConfigError(
            "config.unfreeze_starts decides what trains in each stage; leave config.trainable, config.frozen, "
            "config.train_last_n and config.lora.rank unset"
        )
    starts = tuple(int(s) for s in config.unfreeze_starts)
    if starts[0] != 0 or any(b <= a for a, b in itertools.pairwise(starts)):
        raise ConfigError(f"config.unfreeze_starts={starts}: must start at 0 and increase")
    _, top = models.layer_index(model)
    everything = top + 1
    return starts, [models.top_layers(model, k + 1 if k < len(starts) - 1 else everything) for k in range(len(starts))]


def _schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    lr, warmup, total = config.learning_rate, config.warmup_steps, config.total_steps
    decay_steps = max(total - warmup, 1)
    if config.schedule == "cosine":
        decay = optax.cosine_decay_schedule(lr, decay_steps)
    elif config.schedule == "linear":
        decay = optax.linear_schedule(lr, 0.0, decay_steps)
    elif config.schedule == "constant":
        decay = optax.constant_schedule(lr)
    elif config.schedule == "step":  # the rate divided by 10 at 30%, 60% and 90% of the run
        drops = {int(total * f) - warmup: 0.1 for f in (0.3, 0.6, 0.9) if int(total * f) > warmup}
        decay = optax.piecewise_constant_schedule(lr, drops)
    else:
        raise ConfigError(f"config.schedule={config.schedule!r}; known: cosine, linear, constant, step")
    if not warmup:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


def _optimizer(
    config: ml_collections.ConfigDict, model: Any, trainable: Any, schedule: optax.Schedule
) -> optax.GradientTransformation:
    if config.optimizer == "sgd":
        base = optax.sgd(schedule, momentum=config.momentum or None)
    elif config.optimizer == "adamw":
        base = optax.adamw(schedule, weight_decay=config.weight_decay, mask=jm.weight_decay_mask)
    elif config.optimizer == "adam":
        base = optax.adam(schedule)
    else:
        raise ConfigError(f"config.optimizer={config.optimizer!r}; known: sgd, adam, adamw")
    chain = [methods.l2_sp(config.l2sp_alpha, config.l2sp_beta)] if config.l2sp_alpha or config.l2sp_beta else []
    chain += [optax.clip_by_global_norm(config.grad_clip)] if config.grad_clip else []
    tx = jm.freeze(optax.chain(*chain, base), trainable=trainable)
    scaling = []
    if config.lr_mults:
        scaling.append(jm.lr_multipliers([tuple(rule) for rule in config.lr_mults]))
    if config.layer_decay:
        layer_of, top = models.layer_index(model)
        scaling.append(jm.layerwise_lr_decay(layer_of, top, config.layer_decay))
    return optax.chain(tx, *scaling)


def evaluate(
    compiled: parallel.Compiled, state: Any, source: Any, batch_size: int, transform: Any = None
) -> dict[str, float]:
    """Loss and accuracy over every example of ``source`` exactly once (padding masked).

    Args:
      compiled: the compiled steps (:func:`jtl.parallel.compile_jit` or ``compile_pmap``).
      state: the placed train state.
      source: a random-access source of ``{"image" | "input_ids", ..., "label"}`` examples.
      batch_size: examples per evaluation batch (the last one padded).
      transform: per-example preprocessing.

    Returns:
      ``{"loss", "accuracy"}``, means over the examples.

    >>> model = models.create("vit-testing", num_classes=2, image_size=8, patch_size=4, num_channels=1)
    >>> params = models.init(model)["params"]
    >>> state = parallel.TrainState(jnp.zeros((), jnp.int32), params, {}, (), jax.random.PRNGKey(0))
    >>> compiled = parallel.compile_jit(lambda s, b: (s, {}), parallel.make_eval_step(model, 2), parallel.make_mesh())
    >>> result = evaluate(compiled, compiled.put_state(state), jdata.digits_task([0, 1], shots=5)["test"], 64)
    >>> sorted(result), 0.0 <= result["accuracy"] <= 1.0
    (['accuracy', 'loss'], True)
    """
    totals = {"loss": 0.0, "correct": 0.0, "count": 0.0}
    for batch in jdata.eval_batches(source, batch_size, transform):
        sums = compiled.eval(state, compiled.put_global_batch(batch))
        for key in totals:
            totals[key] += float(sums[key])
    return {"loss": totals["loss"] / totals["count"], "accuracy": totals["correct"] / totals["count"]}


def _evaluate_task(compiled: parallel.Compiled, state: Any, task: multitask.Task, split: dict, batch_size: int) -> dict:
    """One task's loss and metric (accuracy or MSE) over its whole test split."""
    totals = {"loss": 0.0, "metric": 0.0, "count": 0.0}
    for batch in jdata.eval_batches(split["test"], batch_size, split["eval_transform"]):
        prefixed = {f"{task.name}/{k}": v for k, v in batch.items() if k != "mask"}
        sums = compiled.eval(state, compiled.put_global_batch({**prefixed, "mask": batch["mask"]}))
        for key in totals:
            totals[key] += float(sums[f"{task.name}/{key}"])
    return {"loss": totals["loss"] / totals["count"], multitask.metric_name(task): totals["metric"] / totals["count"]}


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


def _host_variables(state: parallel.TrainState) -> dict:
    """The model's variables as host arrays (a replicated array's local copy)."""

    def local(x: Any) -> Any:
        return np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else np.asarray(x)

    params = {k: v for k, v in state.params.items() if k not in parallel.AUXILIARY}
    return jax.tree_util.tree_map(local, {"params": params, "batch_stats": state.batch_stats})


def _dev_risk(
    outputs: Any, splits: dict, target_train: Any, target: dict, config: ml_collections.ConfigDict, variables: dict
) -> float:
    """Deep embedded validation of the current model: source validation losses importance-weighted toward the
    target domain in feature space (no target label is read)."""

    def run(source: Any, transform: Any) -> tuple:
        features, logits, labels = [], [], []
        for batch in jdata.eval_batches(_sample(source, config.adaptation.dev_examples, config.seed), 256, transform):
            keep = batch["mask"]
            f, z = outputs(variables, {k: v for k, v in batch.items() if k not in ("label", "mask")})
            features.append(np.asarray(f)[keep])
            logits.append(np.asarray(z, np.float64)[keep])
            labels.append(batch["label"][keep] if "label" in batch else None)
        return np.concatenate(features), np.concatenate(logits), labels

    source_features, _, _ = run(splits["train"], splits["eval_transform"])
    target_features, _, _ = run(target_train, target["eval_transform"])
    validation_features, logits, labels = run(splits["test"], splits["eval_transform"])
    labels = np.concatenate(labels)
    log_probs = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    losses = -log_probs[np.arange(len(labels)), labels]
    return methods.deep_embedded_validation(source_features, target_features, validation_features, losses)


def _model_selection(history: list[dict], final: dict, workdir: Path, is_chief: bool) -> dict:
    """Which evaluation each criterion picks, and the target accuracy there: source validation accuracy and DEV
    (no target label read) beside the oracle (the best target accuracy, which peeks at target labels)."""
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


def progress_bar(step: int, total: int, width: int = 30) -> str:
    """A text progress bar.

    Args:
      step: steps done.
      total: steps in all.
      width: characters in the bar.

    Returns:
      The bar and the count, e.g. ``[##--] 5/10``.

    >>> progress_bar(5, 20, width=10)
    '[##--------] 5/20'
    """
    done = width * step // max(total, 1)
    return f"[{'#' * done}{'-' * (width - done)}] {step}/{total}"


class _Preemption:
    """Turns SIGTERM (TPU preemption) into a flag the loop checks, so it can save and exit cleanly."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        del signum, frame
        self.requested = True

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Trains and evaluates as ``config`` says, checkpointing to and resuming from ``workdir``.

    Args:
      config: the experiment config (see ``configs/``).
      workdir: where checkpoints, ``metrics.jsonl``, TensorBoard event files (``tensorboard/``) and
        ``final_metrics.json`` go.

    Returns:
      The final metrics (also written to ``workdir/final_metrics.json``), and the final ``params`` and
      ``batch_stats``.

    >>> import contextlib, io, tempfile
    >>> from jtl.config import base_config
    >>> config = base_config()
    >>> config.model.name, config.num_classes, config.data.classes = "vit-digits", 2, (0, 1)
    >>> config.total_steps, config.checkpoint_every, config.compilation_cache = 5, 0, ""
    >>> with contextlib.redirect_stdout(io.StringIO()):  # the report and the progress lines
    ...     result = train_and_evaluate(config, tempfile.mkdtemp())
    >>> result["step"], 0.0 <= result["eval/accuracy"] <= 1.0
    (5, True)
    """
    # --- Set-up ------------------------------------------------------------------------------------------------
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    is_chief = jax.process_index() == 0
    if config.compilation_cache:
        jax.config.update("jax_compilation_cache_dir", str(Path(config.compilation_cache).expanduser()))
        # JAX caches only programs that took over a second to compile by default; on CPU most of ours take
        # less but add up to most of the start-up time.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    devices = jax.devices()[: config.num_devices] if config.num_devices else jax.devices()
    if config.batch_size % len(devices):
        raise ConfigError(f"config.batch_size={config.batch_size} is not divisible by {len(devices)} devices")

    # --- Model and weights -----------------------------------------------------------------------------------------
    model, variables, description = _build_model(config)

    # --- Objective: one task, domain adaptation (source + unlabelled target) or several tasks ----------------
    adaptation = _adaptation_spec(config)
    tasks_setup = _multitask_setup(config)
    if (adaptation or tasks_setup) and (config.mixup_alpha or config.hyperrule or config.baseline.scratch):
        raise ConfigError(
            "config.mixup_alpha, config.hyperrule and config.baseline.scratch apply to single-task training, "
            "not with config.target (domain adaptation) or config.tasks (multi-task)"
        )
    if adaptation and tasks_setup:
        raise ConfigError("config.target (domain adaptation) and config.tasks (multi-task) cannot be combined")
    if tasks_setup and (config.accum_steps > 1 or config.transferability):
        raise ConfigError("config.accum_steps > 1 and config.transferability do not apply with config.tasks")
    params = variables["params"]
    if adaptation:
        discriminator = methods.init_discriminator(
            adaptation, _feature_dim(model, variables), config.num_classes, jax.random.PRNGKey(config.seed + 1)
        )
        params = params if discriminator is None else {**params, parallel.DISCRIMINATOR: discriminator}
    if tasks_setup:
        tasks, weighting = tasks_setup
        heads = multitask.init_heads(tasks, _feature_dim(model, variables), jax.random.PRNGKey(config.seed + 1))
        params = {**params, parallel.HEADS: heads}
        loss_weights = multitask.init_loss_weights(tasks, weighting)
        params = params if loss_weights is None else {**params, parallel.LOSS_WEIGHTS: loss_weights}

    # --- Data: each host reads only its shard --------------------------------------------------------------------
    host_batch = config.batch_size // jax.process_count()

    def stream(source: Any, transform: Any, seed: int) -> Any:
        return jdata.train_batches(
            source,
            host_batch,
            seed=seed,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            transform=transform,
        )

    if tasks_setup:
        # Each task reads its own dataset; one batch of each per step.
        task_splits = {
            name: _build_data(task.data, model, config.model.pretrained) for name, task in config.tasks.items()
        }
        train_iter = jdata.ZippedBatches(
            {
                name: stream(split["train"], split["train_transform"], config.seed + i)
                for i, (name, split) in enumerate(task_splits.items())
            }
        )
        splits = next(iter(task_splits.values()))
    else:
        splits = _build_data(config.data, model, config.model.pretrained)
        train_iter = stream(splits["train"], splits["train_transform"], config.seed)
    if adaptation:
        # The target domain's training split is read without its labels.
        target = _build_data(config.target, model, config.model.pretrained)
        target_train = jdata.Unlabelled(target["train"])
        target_iter = stream(target_train, target["train_transform"], config.seed + 1)
        train_iter = jdata.ZippedBatches({"source": train_iter, "target": target_iter}, unprefixed="source")

    # --- Schedule: the config's, or BiT-HyperRule's choice from the training set's size -------------------------
    if config.hyperrule:
        config = _apply_hyperrule(config, len(splits["train"]), is_chief)
    schedule = _schedule(config)
    if config.batch_norm not in ("train", "frozen", "reestimate"):
        raise ConfigError(f"config.batch_norm={config.batch_norm!r}; known: train, frozen, reestimate")
    if config.mixup_alpha and isinstance(methods.base_model(model), models.Bert):
        raise ConfigError("config.mixup_alpha blends images; it does not apply to text models")

    # --- Before training: how well the pretrained features suit the target task -------------------------------
    scores = _transferability(model, variables, splits, config) if config.transferability else {}
    if scores and is_chief:
        print("transferability of the starting features: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))

    # --- What trains, stage by stage (one stage unless gradual unfreezing / LP-FT) -----------------------------
    batch_stats = variables.get("batch_stats", {})
    starts, stage_trainables = _stages(config, model)

    def stage_of(steps_done: int) -> int:
        return bisect.bisect_right(starts, steps_done) - 1

    def build_stage(stage: int) -> tuple[optax.GradientTransformation, parallel.Compiled]:
        trainable = _with_auxiliary(stage_trainables[stage])
        mask = jm.resolve_mask(trainable, params)
        tx = _optimizer(config, model, trainable, schedule)
        all_bn_trainable = all(m for name, m in jm.named_leaves(mask) if "/bn" in name or name.startswith("bn"))
        if is_chief:
            if len(starts) > 1:
                print(f"stage {stage} of gradual unfreezing, from step {starts[stage]}:")
            print(jm.report(params, trainable=mask, optimizer=tx))

        def train_step(axis_name: str | None) -> Any:
            if tasks_setup:
                return multitask.make_train_step(
                    model,
                    tasks,
                    tx,
                    trainable,
                    weighting=weighting,
                    train_batch_stats=config.batch_norm == "train" and all_bn_trainable,
                    axis_name=axis_name,
                )
            return parallel.make_train_step(
                model,
                tx,
                trainable,
                num_classes=config.num_classes,
                label_smoothing=config.label_smoothing,
                accum_steps=config.accum_steps,
                train_batch_stats=config.batch_norm == "train" and all_bn_trainable,
                mixup_alpha=config.mixup_alpha,
                adaptation=adaptation,
                axis_name=axis_name,
            )

        if tasks_setup:
            eval_step = multitask.make_eval_step(model, tasks)
        else:
            eval_step = parallel.make_eval_step(model, config.num_classes)
        if config.parallel == "jit":
            compiled = parallel.compile_jit(train_step(None), eval_step, parallel.make_mesh(devices))
        elif config.parallel == "pmap":
            compiled = parallel.compile_pmap(train_step, eval_step)
        else:
            raise ConfigError(f"config.parallel={config.parallel!r}; known: jit, pmap")
        return tx, compiled

    if is_chief:
        print(
            f"model {description['class']}; {len(devices)} {devices[0].platform} device(s), "
            f"global batch {config.batch_size} ({config.batch_size // len(devices)} per device)"
        )

    # --- State, resumed from the latest checkpoint ---------------------------------------------------------------
    checkpointer = Checkpointer(workdir, keep=config.keep_checkpoints)
    start_step = checkpointer.latest_step() or 0
    # A checkpoint holds the optimizer state of the stage that ran its last step.
    stage = stage_of(max(start_step - 1, 0))
    tx, compiled = build_stage(stage)
    state = parallel.TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=tx.init(params),
        rng=jax.random.PRNGKey(config.seed),
        extra=multitask.init_extra(tasks, weighting) if tasks_setup else (),
    )
    if start_step:
        state, data_state, start_step = checkpointer.restore(state, description)
        train_iter.set_state(data_state)
        if is_chief:
            print(f"resumed from {checkpointer.directory / str(start_step)}")
    state = compiled.put_state(state)

    def reestimate_batch_stats(state: parallel.TrainState) -> parallel.TrainState:
        """BatchNorm statistics recomputed on the training set (every host reads the same batches)."""
        host_state = compiled.get_state(state)
        transform = splits["eval_transform"]
        batches = jdata.train_batches(
            splits["train"],
            config.batch_size,
            seed=config.seed + 1,
            transform=None if transform is None else lambda example, _: transform(example),
        )
        count = max(len(splits["train"]) // config.batch_size, 1)
        variables = {"params": host_state.params, "batch_stats": host_state.batch_stats}
        stats = methods.reestimate_batch_stats(model, variables, itertools.islice(batches, count))
        return compiled.put_state(host_state._replace(batch_stats=stats))

    def evaluate_all(state: parallel.TrainState) -> dict[str, float]:
        if tasks_setup:
            return {
                f"eval/{name}/{key}": value
                for task, (name, split) in zip(tasks, task_splits.items(), strict=True)
                for key, value in _evaluate_task(compiled, state, task, split, config.eval_batch_size).items()
            }
        # Domain adaptation evaluates on the target domain; the source's test split is its validation set.
        test = target if adaptation else splits
        result = evaluate(compiled, state, test["test"], config.eval_batch_size, test["eval_transform"])
        metrics = {f"eval/{k}": v for k, v in result.items()}
        if adaptation:
            source = evaluate(compiled, state, splits["test"], config.eval_batch_size, splits["eval_transform"])
            metrics.update({f"eval_source/{k}": v for k, v in source.items()})
            if config.adaptation.dev:
                variables = _host_variables(compiled.get_state(state))
                metrics["selection/dev_risk"] = _dev_risk(dev_outputs, splits, target_train, target, config, variables)
        if "ood" in test:
            shifted = evaluate(compiled, state, test["ood"], config.eval_batch_size, test["eval_transform"])
            metrics.update({f"eval_ood/{k}": v for k, v in shifted.items()})
        return metrics

    if adaptation and config.adaptation.dev:
        # Features and logits in one pass, for deep embedded validation.
        dev_outputs = jax.jit(lambda v, batch: methods.features_and_logits(model, v, *models.model_inputs(batch))[:2])
    reestimate = config.batch_norm == "reestimate" and bool(batch_stats)
    if reestimate and start_step == 0:
        state = reestimate_batch_stats(state)

    # --- Train loop ------------------------------------------------------------------------------------------------
    metrics_file = (workdir / "metrics.jsonl").open("a") if is_chief else None
    interactive = sys.stdout.isatty()
    tensorboard = SummaryWriter(str(workdir / "tensorboard")) if is_chief else None
    preemption = _Preemption()
    losses_since_check: list[jax.Array] = []
    history: list[dict[str, float]] = []
    last_time, last_step = time.perf_counter(), start_step

    def write(record: dict[str, Any]) -> None:
        history.append(record)
        if metrics_file is not None:
            metrics_file.write(json.dumps(record) + "\n")
            metrics_file.flush()
        if tensorboard is not None:
            for key, value in record.items():
                if key != "step":
                    tensorboard.add_scalar(key, value, record["step"])
            tensorboard.flush()

    def check_finite(step: int) -> None:
        values = [float(v) for v in losses_since_check]
        losses_since_check.clear()
        if not all(math.isfinite(v) for v in values):
            kept = checkpointer.latest_step()
            raise TrainingError(
                f"non-finite training loss by step {step} (losses {values[-5:]}); stopped without saving. "
                f"The last good checkpoint is step {kept} in {checkpointer.directory}."
            )

    def save(step: int) -> None:
        check_finite(step)
        checkpointer.save(step, compiled.get_state(state), train_iter.get_state(), description)

    try:
        for step in range(start_step + 1, config.total_steps + 1):
            if stage_of(step - 1) != stage:
                # Unfreeze the next group: a new step is compiled, and the moments of what already trained
                # carry over.
                stage = stage_of(step - 1)
                host_state = compiled.get_state(state)
                tx, compiled = build_stage(stage)
                opt_state = jm.carry_over_state(host_state.opt_state, tx.init(host_state.params))
                state = compiled.put_state(host_state._replace(opt_state=opt_state))
            batch = compiled.put_batch(next(train_iter))
            state, train_metrics = compiled.train(state, batch)
            losses_since_check.append(train_metrics["loss"])
            if is_time(step, config.log_every, config.total_steps):
                check_finite(step)
                now = time.perf_counter()
                rate = (step - last_step) * config.batch_size / max(now - last_time, 1e-9)
                eta = (config.total_steps - step) * config.batch_size / max(rate, 1e-9)
                record = {"step": step, **{f"train/{k}": float(v) for k, v in train_metrics.items()}}
                record["train/examples_per_second"] = rate
                write(record)
                if is_chief:
                    print(
                        f"\r{progress_bar(step, config.total_steps)}  loss {record['train/loss']:.4f}  "
                        f"{rate:.0f} examples/s  ETA {eta:.0f}s",
                        flush=True,
                    )
                last_time, last_step = now, step
            elif is_chief and interactive:
                # Between log lines a terminal gets an in-place bar; no device sync happens for it.
                print(f"\r{progress_bar(step, config.total_steps)}", end="", flush=True)
            if is_time(step, config.eval_every, config.total_steps):
                if reestimate:
                    state = reestimate_batch_stats(state)
                write({"step": step, **evaluate_all(state)})
            if is_time(step, config.checkpoint_every, config.total_steps) or preemption.requested:
                save(step)
            if preemption.requested:
                if is_chief:
                    print(f"SIGTERM: saved step {step}, exiting", flush=True)
                return {"step": step, "preempted": True}
    finally:
        preemption.restore()
        checkpointer.close()
        if metrics_file is not None:
            metrics_file.close()
        if tensorboard is not None:
            tensorboard.close()

    # --- Final metrics, and the comparison with training from scratch --------------------------------------------
    if reestimate:
        state = reestimate_batch_stats(state)
    result = {"step": config.total_steps, **evaluate_all(state), **scores}
    if adaptation:
        result.update(_model_selection(history, result, workdir, is_chief))
    final_state = compiled.get_state(state)
    if config.lora.rank and config.model.pretrained and is_chief:
        # Only the adapters and the head: a small checkpoint that points at the base weights.
        methods.save_adapters(workdir / "adapters", model, final_state.params, base=config.model.pretrained)
    if config.baseline.scratch:
        result.update(_scratch_baseline(config, workdir, result["eval/accuracy"], is_chief))
    if is_chief:
        (workdir / "final_metrics.json").write_text(json.dumps(result, indent=1))
    result["params"], result["batch_stats"] = final_state.params, final_state.batch_stats
    return result


def _apply_hyperrule(config: ml_collections.ConfigDict, num_examples: int, is_chief: bool) -> Any:
    """A copy of ``config`` with BiT-HyperRule's steps, schedule, optimizer and MixUp for this dataset size."""
    if config.hyperrule != "bit":
        raise ConfigError(f"config.hyperrule={config.hyperrule!r}; known: bit")
    rule = methods.bit_hyperrule(num_examples, batch_size=config.batch_size)
    config = ml_collections.ConfigDict(config.to_dict())
    config.total_steps, config.warmup_steps, config.learning_rate = (
        rule.total_steps,
        rule.warmup_steps,
        rule.learning_rate,
    )
    config.optimizer, config.momentum, config.mixup_alpha, config.schedule = "sgd", 0.9, rule.mixup_alpha, "step"
    config.lock()
    if is_chief:
        print(
            f"BiT-HyperRule for {num_examples} examples: {rule.total_steps} steps, warm-up {rule.warmup_steps}, "
            f"SGD lr {rule.learning_rate:g} divided by 10 at 30/60/90%, MixUp {rule.mixup_alpha}"
        )
    return config


def _transferability(model: Any, variables: dict, splits: dict, config: ml_collections.ConfigDict) -> dict:
    """LogME and H-score of the starting model's features on the training set."""
    features, labels = methods.extract_features(
        model, variables, jdata.eval_batches(splits["train"], config.eval_batch_size, splits["eval_transform"])
    )
    return {
        "transferability/logme": float(methods.logme(features, labels, config.num_classes)),
        "transferability/h_score": float(methods.h_score(features, labels, config.num_classes)),
    }


def _scratch_baseline(config: ml_collections.ConfigDict, workdir: Path, accuracy: float, is_chief: bool) -> dict:
    """Trains the same architecture from scratch (everything trainable) and flags negative transfer."""
    baseline = ml_collections.ConfigDict(config.to_dict())
    baseline.model.reinit = bool(config.model.pretrained)
    baseline.trainable, baseline.frozen, baseline.train_last_n, baseline.unfreeze_starts = (), (), -1, ()
    baseline.lora.rank, baseline.l2sp_alpha, baseline.l2sp_beta = 0, 0.0, 0.0
    baseline.layer_decay, baseline.lr_mults, baseline.transferability = 0.0, (), False
    baseline.baseline.scratch = False
    baseline.learning_rate = config.baseline.learning_rate or config.learning_rate
    baseline.lock()
    if is_chief:
        print("training the from-scratch baseline", flush=True)
    scratch = train_and_evaluate(baseline, workdir / "scratch_baseline")["eval/accuracy"]
    negative = accuracy < scratch
    if is_chief:
        verdict = "NEGATIVE TRANSFER: the pretrained start loses to" if negative else "transfer beats"
        print(f"{verdict} training from scratch: accuracy {accuracy:.4f} vs {scratch:.4f} from scratch")
    return {"baseline/eval/accuracy": scratch, "transfer_gain": accuracy - scratch, "negative_transfer": negative}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``python -m jtl.train``: parses the command line, loads the config and runs.

    Args:
      argv: the arguments (default: ``sys.argv[1:]``).

    Returns:
      The run's final metrics.

    A config that does not load exits with status 2 and a message naming it:

    >>> main(["--config", "no/such/config.py"])
    Traceback (most recent call last):
    ...
    SystemExit: 2
    """
    argv = sys.argv[1:] if argv is None else argv
    parser = command_line_parser("python -m jtl.train", __doc__.splitlines()[0], "checkpoints and metrics")
    parser.add_argument("--coordinator", default=None, help="multi-host: host:port of process 0")
    parser.add_argument("--num_processes", type=int, default=None, help="multi-host: the number of processes")
    parser.add_argument("--process_id", type=int, default=None, help="multi-host: this process's index")
    args, config, workdir = parse_command_line(parser, argv)
    if args.coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        # Several processes (hosts): JAX's own distributed runtime; on Cloud TPU the arguments are found
        # automatically when left out.
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    return train_and_evaluate(config, workdir)


if __name__ == "__main__":
    main()
