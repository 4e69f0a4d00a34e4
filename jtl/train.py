"""``python -m jtl.train --config configs/X.py[:arg] [--config.key=value ...] [--workdir DIR]``.

One sectioned ``train_and_evaluate`` that reads top to bottom: set-up, data, model and weights, what trains,
optimizer, state (resumed from the workdir's latest checkpoint if there is one), compiled steps, the loop
(log / eval / checkpoint on their own cadences, SIGTERM saves and exits), final evaluation.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from tensorboardX import SummaryWriter

import jtl.masking as jm
from jtl import data as jdata
from jtl import methods, models, parallel
from jtl.cadence import is_time
from jtl.checkpoint import Checkpointer
from jtl.config import ConfigError, config_from_args
from jtl.weights import load_pretrained, load_tokenizer


class TrainingError(RuntimeError):
    """The run cannot go on (a non-finite loss, ...); the message says why and what was kept."""


def _preprocessing_stats(config: ml_collections.ConfigDict) -> tuple[tuple, tuple]:
    """Normalisation from the pretrained model's ``preprocessor_config.json`` if it has one, else the config's."""
    processor = Path(config.model.pretrained or "-") / "preprocessor_config.json"
    if processor.is_file():
        stats = json.loads(processor.read_text())
        if "image_mean" in stats and "image_std" in stats:
            return tuple(stats["image_mean"]), tuple(stats["image_std"])
    return tuple(config.data.mean), tuple(config.data.std)


def _build_data(config: ml_collections.ConfigDict, model: Any) -> dict[str, Any]:
    """Train and test sources, and their transforms (None where the source is already model-ready)."""
    if (config.data.ood_shift or config.data.label_noise) and config.data.source != "digits":
        raise ConfigError("config.data.ood_shift and config.data.label_noise apply to config.data.source='digits' only")
    if config.data.source == "digits":
        splits = jdata.digits_task(config.data.classes, shots=config.data.shots or None, seed=config.data.split_seed)
        if config.data.label_noise:
            splits["train"] = jdata.shuffle_labels(splits["train"], config.data.label_noise, config.data.split_seed)
        if config.data.ood_shift:
            splits["ood"] = jdata.shifted(splits["test"], config.data.ood_shift, seed=config.data.split_seed)
        return {**splits, "train_transform": None, "eval_transform": None}
    if isinstance(model, models.Bert):
        tokenizer = load_tokenizer(config.data.tokenizer or config.model.pretrained)
        preprocessing = jdata.TextPreprocessing(tokenizer, config.data.max_length, config.data.text_key)
    else:
        mean, std = _preprocessing_stats(config)
        preprocessing = jdata.ImagePreprocessing(
            model.image_size, mean, std, crop=config.data.crop, flip=config.data.flip
        )
    transforms = {"train_transform": preprocessing.train, "eval_transform": preprocessing.eval}
    if config.data.source == "tfds":
        data_dir = config.data.data_dir or None
        return {
            "train": jdata.tfds_source(config.data.name, config.data.train_split, data_dir),
            "test": jdata.tfds_source(config.data.name, config.data.test_split, data_dir),
            **transforms,
        }
    if config.data.source == "folder":
        if not config.data.train_dir or not config.data.test_dir:
            raise ConfigError("config.data.source='folder' needs config.data.train_dir and config.data.test_dir")
        train = jdata.ImageFolderSource(config.data.train_dir)
        # The test split uses the training classes, in the same order, so labels agree.
        return {"train": train, "test": jdata.ImageFolderSource(config.data.test_dir, train.classes), **transforms}
    raise ConfigError(f"config.data.source={config.data.source!r} is not supported; known: digits, tfds, folder")


def _build_model(config: ml_collections.ConfigDict) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Returns (model, variables, description); pretrained weights when ``config.model.pretrained`` is set."""
    overrides = dict(config.model.overrides)
    if isinstance(overrides.get("dtype"), str):
        overrides["dtype"] = jnp.dtype(overrides["dtype"])  # e.g. "bfloat16": compute dtype, params stay float32
    if config.model.pretrained:
        if config.model.drop_pre_logits:
            overrides["drop_pre_logits"] = True
        model, variables, _ = load_pretrained(
            config.model.pretrained, num_classes=config.num_classes, verbose=jax.process_index() == 0, **overrides
        )
        if config.model.reinit:
            variables = models.init(model, seed=config.seed)
    else:
        model = models.create(config.model.name, num_classes=config.num_classes, **overrides)
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


def _trainable(config: ml_collections.ConfigDict, model: Any) -> Any:
    """The trainable-mask spec from ``config.trainable`` / ``config.frozen`` / ``config.train_last_n``."""
    if config.train_last_n >= 0:
        layer_of, top = models.layer_index(model)
        # The last N layers below the top, plus the top (final norm, pooler and head) itself.
        return lambda tree: jm.map_with_names(lambda name, _: layer_of(name) > top - 1 - config.train_last_n, tree)
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
    layer_of, top = models.layer_index(model)

    def top_layers(count: int) -> Any:
        return lambda tree: jm.map_with_names(lambda name, _: layer_of(name) > top - count, tree)

    everything = top + 1
    return starts, [top_layers(k + 1 if k < len(starts) - 1 else everything) for k in range(len(starts))]


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
    """Loss and accuracy over every example of ``source`` exactly once (padding masked)."""
    totals = {"loss": 0.0, "correct": 0.0, "count": 0.0}
    for batch in jdata.eval_batches(source, batch_size, transform):
        sums = compiled.eval(state, compiled.put_global_batch(batch))
        for key in totals:
            totals[key] += float(sums[key])
    return {"loss": totals["loss"] / totals["count"], "accuracy": totals["correct"] / totals["count"]}


def progress_bar(step: int, total: int, width: int = 30) -> str:
    """A text progress bar.

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
      The final metrics (also written to ``workdir/final_metrics.json``).
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

    # --- Data: each host reads only its shard --------------------------------------------------------------------
    splits = _build_data(config, model)
    host_batch = config.batch_size // jax.process_count()
    train_iter = jdata.train_batches(
        splits["train"],
        host_batch,
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        transform=splits["train_transform"],
    )

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
    params = variables["params"]
    batch_stats = variables.get("batch_stats", {})
    starts, stage_trainables = _stages(config, model)

    def stage_of(steps_done: int) -> int:
        return bisect.bisect_right(starts, steps_done) - 1

    def build_stage(stage: int) -> tuple[optax.GradientTransformation, parallel.Compiled]:
        trainable = stage_trainables[stage]
        mask = jm.resolve_mask(trainable, params)
        tx = _optimizer(config, model, trainable, schedule)
        all_bn_trainable = all(m for name, m in jm.named_leaves(mask) if "/bn" in name or name.startswith("bn"))
        if is_chief:
            if len(starts) > 1:
                print(f"stage {stage} of gradual unfreezing, from step {starts[stage]}:")
            print(jm.report(params, trainable=mask, optimizer=tx))

        def train_step(axis_name: str | None) -> Any:
            return parallel.make_train_step(
                model,
                tx,
                trainable,
                num_classes=config.num_classes,
                label_smoothing=config.label_smoothing,
                accum_steps=config.accum_steps,
                train_batch_stats=config.batch_norm == "train" and all_bn_trainable,
                mixup_alpha=config.mixup_alpha,
                axis_name=axis_name,
            )

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
        result = evaluate(compiled, state, splits["test"], config.eval_batch_size, splits["eval_transform"])
        metrics = {f"eval/{k}": v for k, v in result.items()}
        if "ood" in splits:
            shifted = evaluate(compiled, state, splits["ood"], config.eval_batch_size, splits["eval_transform"])
            metrics.update({f"eval_ood/{k}": v for k, v in shifted.items()})
        return metrics

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
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m jtl.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="path/to/config.py[:arg]")
    parser.add_argument("--workdir", default=None, help="checkpoints and metrics (default: workdirs/<config name>)")
    parser.add_argument("--coordinator", default=None, help="multi-host: host:port of process 0")
    parser.add_argument("--num_processes", type=int, default=None, help="multi-host: the number of processes")
    parser.add_argument("--process_id", type=int, default=None, help="multi-host: this process's index")
    args, rest = parser.parse_known_args([a for a in argv if not a.startswith("--config.")])
    if rest:
        parser.error(f"unrecognised arguments: {rest}")
    if args.coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        # Several processes (hosts): JAX's own distributed runtime; on Cloud TPU the arguments are found
        # automatically when left out.
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    try:
        config = config_from_args(args.config, [a for a in argv if a.startswith("--config.")])
    except ConfigError as e:
        parser.exit(2, f"error: {e}\n")
    workdir = args.workdir or os.path.join("workdirs", Path(args.config.partition(":")[0]).stem)
    return train_and_evaluate(config, workdir)


if __name__ == "__main__":
    main()
