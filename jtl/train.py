"""``python -m jtl.train --config configs/X.py[:arg] [--config.key=value ...] [--workdir DIR] [--debug]``.

One sectioned ``train_and_evaluate`` that reads top to bottom and never branches on what is optimised: the
objective (:mod:`jtl.objectives`, chosen by ``config.objective``) says what data it reads, what its loss is and
how it is evaluated; the model and weights come from ``config.model``; what trains and how from
:mod:`jtl.optim`; one step (:mod:`jtl.step`) compiled with jit or pmap (:mod:`jtl.parallel`); the loop logs,
evaluates and checkpoints on their own cadences, resumes from the workdir's latest checkpoint, and saves and exits
on SIGTERM.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tensorboardX import SummaryWriter

import jtl.masking as jm
from jtl import adapters, models, objectives, optim, parallel, sharding, step
from jtl import data as jdata
from jtl.cadence import is_time
from jtl.checkpoint import Checkpointer, WorkdirLock
from jtl.cli import TrainingError, run_command
from jtl.config import ConfigError, command_line_parser, parse_command_line, save_config
from jtl.step import interpolate_weights, reestimate_batch_stats
from jtl.weights import load_pretrained


def build_model(
    config: ml_collections.ConfigDict, num_classes: int, shardings: Any = None
) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """The model of ``config.model``: pretrained weights when ``config.model.pretrained`` is set (with a zero-shot
    head when ``config.model.zero_shot.classes`` names the classes), else the registry's ``config.model.name`` from
    scratch; the adapters that :func:`jtl.adapters.from_config` finds in the config (``config.lora``,
    ``config.ia3``, ``config.vpt``, ``config.bottleneck``).

    Args:
      config: the experiment config.
      num_classes: the head's classes (0: a backbone returning pooled features).
      shardings: ``abstract variables -> shardings`` for a model initialised from scratch, which is then created
        sharded (:func:`jtl.models.init`); pretrained weights come as host arrays, placed later shard by shard.

    Returns:
      ``(model, variables, description)``; the description (class and fields) guards checkpoint restores.

    >>> from jtl.config import base_config
    >>> model, variables, description = build_model(base_config(), 3)
    >>> description["class"], model.num_classes
    ('ViT', 3)
    """
    if config.model.remat not in models.REMAT:
        raise ConfigError(f"config.model.remat={config.model.remat!r}: expected one of {models.REMAT}")
    overrides = dict(config.model.overrides)
    if isinstance(overrides.get("dtype"), str):
        overrides["dtype"] = jnp.dtype(overrides["dtype"])  # e.g. "bfloat16": compute dtype, params stay float32
    zero_shot = tuple(config.model.zero_shot.classes)
    if zero_shot:
        if not config.model.pretrained or len(zero_shot) != num_classes:
            raise ConfigError(
                f"config.model.zero_shot.classes: {len(zero_shot)} class names need config.model.pretrained (a CLIP "
                f"or SigLIP checkpoint) and as many classes to train ({num_classes})"
            )
        model, variables, _ = models.zero_shot_model(
            config.model.pretrained,
            zero_shot,
            tuple(config.model.zero_shot.templates),
            verbose=jax.process_index() == 0,
            **overrides,
        )
    elif config.model.pretrained:
        if config.model.drop_pre_logits:
            overrides["drop_pre_logits"] = True
        model, variables, _ = load_pretrained(
            config.model.pretrained, num_classes=num_classes, verbose=jax.process_index() == 0, **overrides
        )
    else:
        try:
            model = models.create(config.model.name, num_classes=num_classes, **overrides)
        except ValueError as e:
            raise ConfigError(f"config.model.name={config.model.name!r} / config.model.overrides: {e}") from e
    model = memory_controls(model, config.model.remat, config.model.scan_layers)
    if config.model.reinit or not config.model.pretrained:
        variables = models.init(model, seed=config.seed, shardings=shardings)
    methods = adapters.from_config(config)
    if methods:
        model = adapters.with_adapters(model, *methods)
        params = variables["params"]
        for method in methods:
            params = adapters.add_adapters(params, method, jax.random.PRNGKey(config.seed))
        variables = {**variables, "params": params}
    # Without the memory controls, which change how the model runs but not its variables: a checkpoint written
    # with scan or remat resumes without them, and the other way round.
    skipped = ("parent", "name", *models.MEMORY_FIELDS)
    description = {
        "class": type(model).__name__,
        **{k: repr(getattr(model, k)) for k in model.__dataclass_fields__ if k not in skipped},
    }
    return model, variables, description


def memory_controls(model: Any, remat: str, scan_layers: bool) -> Any:
    """``model`` with ``config.model.remat`` and ``config.model.scan_layers`` set (see ``jtl.models.REMAT``);
    the model itself when both are off.

    Args:
      model: a jtl model.
      remat: each encoder block's rematerialisation: ``"none"``, ``"full"`` or ``"dots_saveable"``.
      scan_layers: run the encoder blocks as one scan.

    Returns:
      The model.

    Raises:
      ConfigError: a family with its own encoder (BEiT, Swin, DeBERTa, ModernBERT, ALBERT, the CNNs), naming the
        config key and the family.

    >>> vit = models.create("vit-testing")
    >>> memory_controls(vit, "full", True).remat, memory_controls(vit, "none", False) is vit
    ('full', True)
    >>> memory_controls(models.create("resnet-testing"), "none", True)
    Traceback (most recent call last):
    ...
    jtl.config.ConfigError: config.model.scan_layers=True: the resnet family (ResNet) ...
    """
    asked = {
        name: value
        for name, value, off in (("remat", remat, "none"), ("scan_layers", scan_layers, False))
        if value != off
    }
    missing = [name for name in asked if name not in model.__dataclass_fields__]
    if missing:
        name = missing[0]
        raise ConfigError(
            f"config.model.{name}={asked[name]!r}: the {models.family_of(model).name} family "
            f"({type(model).__name__}) has an encoder of its own, which takes no remat or scan; the families on the "
            "shared transformer encoder do (ViT/DeiT, BERT/RoBERTa/DistilBERT/ELECTRA, CLIP, SigLIP, DINOv2, AST, "
            "wav2vec2)"
        )
    return model.clone(**asked) if asked else model


def data_loader(model: Any, pretrained: str = "") -> objectives.Load:
    """``dataset config -> splits`` for ``model``'s inputs (:func:`jtl.data.load_splits`).

    Args:
      model: the model the data feeds (its input kind and resolution, or an audio model's feature extractor).
      pretrained: the pretrained source (its tokenizer or normalisation statistics).

    Returns:
      The loader an objective's ``load`` takes.

    >>> from jtl.config import data_config
    >>> load = data_loader(models.create("vit-digits", num_classes=10))
    >>> sorted(load(data_config()))
    ['eval_transform', 'test', 'train', 'train_transform']
    """
    kind, image_size = models.input_kind(model), getattr(model, "image_size", 0)
    features = model.default_feature_extractor() if kind == "audio" else None
    return lambda data: jdata.load_splits(data, kind, image_size, pretrained, features)


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


class _Log:
    """Metrics to ``metrics.jsonl``, TensorBoard and the terminal (chief only), and the run's history."""

    def __init__(self, workdir: Path, total_steps: int, batch_size: int, is_chief: bool, start_step: int):
        self.history: list[dict[str, Any]] = []
        self.file = (workdir / "metrics.jsonl").open("a") if is_chief else None
        self.tensorboard = SummaryWriter(str(workdir / "tensorboard")) if is_chief else None
        self.interactive = is_chief and sys.stdout.isatty()
        self.total_steps, self.batch_size, self.is_chief = total_steps, batch_size, is_chief
        self.last_time, self.last_step = time.perf_counter(), start_step

    def write(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        if self.tensorboard is not None:
            for key, value in record.items():
                if key != "step":
                    self.tensorboard.add_scalar(key, value, record["step"])
            self.tensorboard.flush()

    def train(self, step_done: int, metrics: dict) -> None:
        """A training record with examples/s, and the progress line."""
        now = time.perf_counter()
        rate = (step_done - self.last_step) * self.batch_size / max(now - self.last_time, 1e-9)
        eta = (self.total_steps - step_done) * self.batch_size / max(rate, 1e-9)
        record = {"step": step_done, **{f"train/{k}": float(v) for k, v in metrics.items()}}
        record["train/examples_per_second"] = rate
        self.write(record)
        if self.is_chief:
            print(
                f"\r{progress_bar(step_done, self.total_steps)}  loss {record['train/loss']:.4f}  "
                f"{rate:.0f} examples/s  ETA {eta:.0f}s",
                flush=True,
            )
        self.last_time, self.last_step = now, step_done

    def tick(self, step_done: int) -> None:
        # Between log lines a terminal gets an in-place bar; no device sync happens for it.
        if self.interactive:
            print(f"\r{progress_bar(step_done, self.total_steps)}", end="", flush=True)

    def close(self) -> None:
        for sink in (self.file, self.tensorboard):
            if sink is not None:
                sink.close()


def _check_finite(losses: list[jax.Array], step_done: int, checkpointer: Checkpointer) -> None:
    values = [float(v) for v in losses]
    losses.clear()
    if not all(math.isfinite(v) for v in values):
        raise TrainingError(
            f"non-finite training loss by step {step_done} (losses {values[-5:]}); stopped without saving. "
            f"The last good checkpoint is step {checkpointer.latest_step()} in {checkpointer.directory}."
        )


def _devices(config: ml_collections.ConfigDict) -> list:
    if config.compilation_cache:
        jax.config.update("jax_compilation_cache_dir", str(Path(config.compilation_cache).expanduser()))
        # JAX caches only programs that took over a second to compile by default; on CPU most of ours take
        # less but add up to most of the start-up time.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    devices = jax.devices()[: config.num_devices] if config.num_devices else jax.devices()
    if config.batch_size % len(devices):
        raise ConfigError(f"config.batch_size={config.batch_size} is not divisible by {len(devices)} devices")
    if config.mesh.model < 1 or len(devices) % config.mesh.model:
        raise ConfigError(f"config.mesh.model={config.mesh.model} does not divide the {len(devices)} devices")
    if jax.process_count() > 1 and jax.local_device_count() % config.mesh.model:
        # A model group spanning hosts would give two hosts one row of the data axis, and each its own batch rows.
        raise ConfigError(
            f"config.mesh.model={config.mesh.model} does not divide the {jax.local_device_count()} devices of a host"
        )
    if config.parallel == "pmap" and _shards_parameters(config):
        raise ConfigError(
            "config.parallel='pmap' holds the whole state on every device; parameter sharding "
            "(config.sharding.fsdp, config.sharding.rules, config.mesh.model > 1) needs config.parallel='jit'"
        )
    return devices


def _shards_parameters(config: ml_collections.ConfigDict) -> bool:
    return bool(config.sharding.fsdp or config.sharding.rules or config.mesh.model > 1)


def _plan(config: ml_collections.ConfigDict, mesh: Any, *params: Any) -> sharding.Plan:
    """Where each leaf of the train state lives: ``config.sharding.rules``, or the defaults for the config's
    FSDP and model axis."""
    rules = config.sharding.rules or sharding.default_rules(
        fsdp=config.sharding.fsdp, tensor_parallel=config.mesh.model > 1
    )
    try:
        return sharding.Plan(
            mesh,
            params,
            rules,
            unmatched=config.sharding.unmatched,
            min_size=config.sharding.min_size,
            allow_unused=not config.sharding.rules,  # the defaults are written for every family
        )
    except sharding.ShardingError as e:
        raise ConfigError(f"config.sharding: {e}") from e


def _stream(config: ml_collections.ConfigDict) -> objectives.Stream:
    """Training batches of this host's shard; the objective's streams differ in their seed offsets."""
    host_batch = config.batch_size // jax.process_count()
    return lambda source, transform, offset: jdata.train_batches(
        source,
        host_batch,
        seed=config.seed + offset,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        transform=transform,
    )


def _compile(
    config: ml_collections.ConfigDict, train_step: Any, eval_step: Any, predict_step: Any, plan: sharding.Plan
) -> parallel.Compiled:
    if config.parallel == "jit":
        return parallel.compile_jit(train_step, eval_step, plan.mesh, predict_step, plan)
    if config.parallel == "pmap":
        return parallel.compile_pmap(train_step, eval_step, predict_step)
    raise ConfigError(f"config.parallel={config.parallel!r}; known: jit, pmap")


class _Sums:
    """The objective's view of the compiled eval steps (:data:`jtl.objectives.Sums`): sums over a source, and
    per-example predictions."""

    def __init__(self, compiled: parallel.Compiled, state: Any, batch_size: int) -> None:
        self.compiled, self.state, self.batch_size = compiled, state, batch_size

    def __call__(self, source: Any, transform: Any = None, keys: Any = None) -> dict[str, float]:
        totals: dict[str, float] = {}
        for batch in jdata.eval_batches(source, self.batch_size, transform):
            out = self.compiled.eval(self.state, self.compiled.put_global_batch(keys(batch) if keys else batch))
            for key, value in out.items():
                totals[key] = totals.get(key, 0.0) + float(value)
        return totals

    def predictions(self, source: Any, transform: Any = None) -> Iterator[tuple[dict, dict]]:
        for batch in jdata.eval_batches(source, self.batch_size, transform):
            outputs = self.compiled.predict(self.state, self.compiled.put_global_batch(batch))
            yield batch, jax.tree_util.tree_map(np.asarray, outputs)


def _evaluate(objective: Any, compiled: parallel.Compiled, state: Any, model: Any, batch_size: int) -> dict:
    """The objective's evaluation, its sums taken by the compiled eval step over every example once."""
    sums = _Sums(compiled, state, batch_size)

    def variables() -> dict:  # whole, on the host: gathered from their shards
        current = compiled.get_state(state)
        return parallel.to_host({"params": current.params, "batch_stats": current.batch_stats})

    return objective.evaluate(sums, model, variables)


def _reestimate(compiled: parallel.Compiled, state: Any, model: Any, split: dict, config: Any) -> Any:
    """BatchNorm statistics recomputed on the training set (every host reads the same batches)."""
    host_state = compiled.get_state(state)
    transform = split["eval_transform"]
    batches = jdata.train_batches(
        split["train"],
        config.batch_size,
        seed=config.seed + 1,
        transform=None if transform is None else lambda example, _: transform(example),
    )
    count = max(len(split["train"]) // config.batch_size, 1)
    variables = {"params": host_state.params, "batch_stats": host_state.batch_stats}
    stats = reestimate_batch_stats(model, variables, itertools.islice(batches, count))
    return compiled.put_state(host_state._replace(batch_stats=stats))


def _describe(config: Any, description: dict, objective: Any, devices: list, scores: dict, plan: Any) -> None:
    if scores:
        print("transferability of the starting features: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
    print(
        f"model {description['class']}, objective {type(objective).__name__}; {len(devices)} "
        f"{devices[0].platform} device(s), global batch {config.batch_size} "
        f"({config.batch_size // len(devices)} per device)"
    )
    if _shards_parameters(config):
        mesh = " x ".join(f"{axis} {size}" for axis, size in plan.mesh.shape.items())
        print(f"parameters sharded over a mesh of {mesh}")


def _next_stage(built: tuple[Any, parallel.Compiled], compiled: parallel.Compiled, state: Any) -> tuple:
    """Unfreezes the next group: its step is compiled anew; the moments of what already trained carry over."""
    tx, next_compiled = built
    host_state = compiled.get_state(state)
    tree = step.trained(host_state.params, host_state.objective_params)
    opt_state = jm.carry_over_state(host_state.opt_state, next_compiled.create_state(tx.init, tree))
    return next_compiled, next_compiled.put_state(host_state._replace(opt_state=opt_state))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Trains and evaluates as ``config`` says, checkpointing to and resuming from ``workdir``.

    Args:
      config: the experiment config (see ``configs/``).
      workdir: where the config (``config.json``), checkpoints, ``metrics.jsonl``, TensorBoard event files
        (``tensorboard/``) and ``final_metrics.json`` go.

    Returns:
      The final metrics (also written to ``workdir/final_metrics.json``), and the final ``params``,
      ``batch_stats`` and ``objective_params``.

    >>> import contextlib, io, tempfile
    >>> from jtl.config import base_config
    >>> config = base_config()
    >>> config.model.name, config.num_classes, config.data.classes = "vit-digits", 2, (0, 1)
    >>> config.total_steps, config.checkpoint_every, config.compilation_cache = 5, 0, ""
    >>> with contextlib.redirect_stdout(io.StringIO()):  # the report and the progress lines
    ...     result = train_and_evaluate(config, tempfile.mkdtemp())
    >>> result["step"], 0.0 <= result["eval/accuracy"] <= 1.0
    (5, True)

    A second run in a workdir that a live run holds stops at once (:class:`jtl.checkpoint.WorkdirLock`).
    """
    workdir = Path(workdir)
    # Before anything is written there: the config, metrics and checkpoints are the live run's. Only the chief
    # locks, as a multi-host run's processes share the workdir.
    with WorkdirLock(workdir) if jax.process_index() == 0 else contextlib.nullcontext():
        return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: Path) -> dict[str, Any]:
    # --- Set-up -----------------------------------------------------------------------------------------------------
    workdir.mkdir(parents=True, exist_ok=True)
    is_chief = jax.process_index() == 0
    if is_chief:  # the run's record: python -m jtl.export --workdir rebuilds the model from it
        save_config(config, workdir)
    devices = _devices(config)
    mesh = parallel.make_mesh(devices, config.mesh.model)

    def model_shardings(variables: Any) -> Any:
        return _plan(config, mesh, variables["params"]).shardings(variables)

    # --- Objective, model and weights, data (each host reads only its shard) -------------------------------------
    objective = objectives.from_config(config)
    shard_at_init = config.parallel == "jit" and _shards_parameters(config)
    model, variables, description = build_model(
        config, objective.head_classes, model_shardings if shard_at_init else None
    )
    objective.load(data_loader(model, config.model.pretrained))
    train_iter = objective.train_stream(_stream(config))
    if config.hyperrule:  # BiT-HyperRule's schedule from the training set's size
        config = optim.apply_hyperrule(config, len(objective.primary["train"]), is_chief)
    learning_rate = optim.schedule(config)
    scores = objective.start(model, variables)
    objective_params, objective_state = objective.init(jax.random.PRNGKey(config.seed + 1), model, variables)
    plan = _plan(config, mesh, variables["params"], objective_params)
    if is_chief:
        _describe(config, description, objective, devices, scores, plan)

    # --- What trains, stage by stage (one stage unless gradual unfreezing / LP-FT), and the compiled steps -------
    stages = optim.stages(config, model, variables["params"])
    # WiSE-FT's starting point, on the host: the train step donates the device buffers it is given.
    start_weights = parallel.to_host(variables) if config.wise_ft else None

    def stage_optimizer(stage: int) -> Any:
        return optim.optimizer(config, model, stages.trainables[stage], learning_rate)

    def build_stage(stage: int) -> tuple[Any, parallel.Compiled]:
        trainable = stages.trainables[stage]
        tx = stage_optimizer(stage)
        if is_chief:
            if len(stages.trainables) > 1:
                print(f"stage {stage} of gradual unfreezing, from step {stages.schedule.starts[stage]}:")
            tree = step.trained(variables["params"], objective_params)
            groups = adapters.adapter_groups(*getattr(model, "adapters", ()))  # a row per adapter method
            print(jm.report(tree, trainable=step.trained_mask(trainable), depth=2, optimizer=tx, leaf_groups=groups))
        batch_stats = optim.train_batch_stats(config, jm.resolve_mask(trainable, variables["params"]))
        train_step = step.make_train_step(
            model, objective, tx, trainable, accum_steps=config.accum_steps, train_batch_stats=batch_stats
        )
        eval_step, predict_step = step.make_eval_step(model, objective), step.make_predict_step(model, objective)
        return tx, _compile(config, train_step, eval_step, predict_step, plan)

    # --- State: resumed from the latest readable checkpoint, or created where the plan places it ----------------
    checkpointer = Checkpointer(workdir, keep=config.keep_checkpoints)

    def stage_of_checkpoint(saved_step: int) -> int:  # it holds the optimizer state of its last step's stage
        return stages.of(max(saved_step - 1, 0))

    def initial_state(tx: Any) -> Any:
        def init(variables: dict, objective_params: Any, objective_state: Any) -> step.TrainState:
            kwargs = {"objective_params": objective_params, "objective_state": objective_state, "seed": config.seed}
            return step.init_state(variables, tx, **kwargs)

        return init

    def restore_into(saved_step: int) -> Any:
        """What a checkpoint of ``saved_step`` fits (its stage's optimizer state), as placed shapes: nothing is
        allocated before Orbax reads each shard into place."""
        tx = stage_optimizer(stage_of_checkpoint(saved_step))
        abstract = jax.eval_shape(initial_state(tx), variables, objective_params, objective_state)
        return jax.tree_util.tree_map(
            lambda x, where: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=where), abstract, plan.shardings(abstract)
        )

    start_step = 0
    try:
        if checkpointer.latest_step():
            state, data_state, start_step = checkpointer.restore(restore_into, description)
            train_iter.set_state(data_state)
            if is_chief:
                print(f"resumed from {checkpointer.directory / str(start_step)}")
        stage = stage_of_checkpoint(start_step)
        tx, compiled = build_stage(stage)
        if not start_step:
            state = compiled.create_state(initial_state(tx), variables, objective_params, objective_state)
    except BaseException:
        checkpointer.close()  # its background threads end with the run that failed to start
        raise
    # From here on the stages' reports need only names and shapes; the values live in the state.
    variables, objective_params = jax.eval_shape(lambda: (variables, objective_params))
    state = compiled.put_state(state)
    reestimate = config.batch_norm == "reestimate" and bool(state.batch_stats)
    if reestimate and start_step == 0:
        state = _reestimate(compiled, state, model, objective.primary, config)

    # --- Train loop -------------------------------------------------------------------------------------------------
    log = _Log(workdir, config.total_steps, config.batch_size, is_chief, start_step)
    preemption, losses = _Preemption(), []
    try:
        for step_done in range(start_step + 1, config.total_steps + 1):
            if stages.of(step_done - 1) != stage:
                stage = stages.of(step_done - 1)
                compiled, state = _next_stage(build_stage(stage), compiled, state)
            state, train_metrics = compiled.train(state, compiled.put_batch(next(train_iter)))
            losses.append(train_metrics["loss"])
            if is_time(step_done, config.log_every, config.total_steps):
                _check_finite(losses, step_done, checkpointer)
                log.train(step_done, train_metrics)
            else:
                log.tick(step_done)
            if is_time(step_done, config.eval_every, config.total_steps):
                if reestimate:
                    state = _reestimate(compiled, state, model, objective.primary, config)
                log.write({"step": step_done, **_evaluate(objective, compiled, state, model, config.eval_batch_size)})
            if is_time(step_done, config.checkpoint_every, config.total_steps) or preemption.requested:
                _check_finite(losses, step_done, checkpointer)
                checkpointer.save(step_done, compiled.get_state(state), train_iter.get_state(), description)
            if preemption.requested:
                if is_chief:
                    print(f"SIGTERM: saved step {step_done}, exiting", flush=True)
                return {"step": step_done, "preempted": True}
    finally:
        preemption.restore()
        checkpointer.close()
        log.close()

    # --- Final metrics, model selection, adapters, and the comparison with training from scratch ------------------
    if reestimate:
        state = _reestimate(compiled, state, model, objective.primary, config)
    result = {"step": config.total_steps, **_evaluate(objective, compiled, state, model, config.eval_batch_size)}
    result.update(scores)
    result.update(objective.summarize(log.history, result, workdir, is_chief))
    final_state = compiled.get_state(state)
    if getattr(model, "adapters", ()) and config.model.pretrained:
        # Only the adapters and the head: a small checkpoint that points at the base weights.
        final_params = parallel.to_host(final_state.params)  # every host takes part in gathering the shards
        if is_chief:
            adapters.save_adapters(workdir / "adapters", model, final_params, base=config.model.pretrained)
    for alpha in config.wise_ft:
        result.update(_wise_ft(alpha, start_weights, objective, compiled, state, model, config.eval_batch_size))
    if config.baseline.scratch:
        result.update(_scratch_baseline(config, workdir, objective.metric, result, is_chief))
    if is_chief:
        (workdir / "final_metrics.json").write_text(json.dumps(result, indent=1))
    result["params"], result["batch_stats"] = final_state.params, final_state.batch_stats
    result["objective_params"] = final_state.objective_params
    return result


def _wise_ft(
    alpha: float, start: dict, objective: Any, compiled: parallel.Compiled, state: Any, model: Any, batch_size: int
) -> dict:
    """The objective's evaluation of the starting and final weights interpolated (WiSE-FT), as
    ``wise_ft/<alpha>/<metric>``; the objective's own params stay the final ones."""
    host = compiled.get_state(state)
    mixed = host._replace(
        params=interpolate_weights(start["params"], host.params, alpha),
        batch_stats=interpolate_weights(start.get("batch_stats", {}), host.batch_stats, alpha),
    )
    metrics = _evaluate(objective, compiled, compiled.put_state(mixed), model, batch_size)
    return {f"wise_ft/{alpha:g}/{key}": value for key, value in metrics.items()}


def _scratch_baseline(
    config: ml_collections.ConfigDict, workdir: Path, metric: str | None, result: dict, is_chief: bool
) -> dict:
    """Trains the same architecture from scratch (everything trainable) and flags negative transfer."""
    if metric is None:
        raise ConfigError("config.baseline.scratch: this objective names no metric to compare")
    baseline = ml_collections.ConfigDict(config.to_dict())
    baseline.model.reinit = bool(config.model.pretrained)
    baseline.trainable, baseline.frozen, baseline.train_last_n, baseline.unfreeze_starts = (), (), -1, ()
    adapters.switch_off(baseline)
    baseline.l2sp_alpha, baseline.l2sp_beta = 0.0, 0.0
    baseline.layer_decay, baseline.lr_mults, baseline.transferability = 0.0, (), False
    baseline.baseline.scratch, baseline.wise_ft = False, ()
    baseline.learning_rate = config.baseline.learning_rate or config.learning_rate
    baseline.lock()
    if is_chief:
        print("training the from-scratch baseline", flush=True)
    scratch, transfer = train_and_evaluate(baseline, workdir / "scratch_baseline")[metric], result[metric]
    negative = transfer < scratch
    if is_chief:
        verdict = "NEGATIVE TRANSFER: the pretrained start loses to" if negative else "transfer beats"
        name = metric.rpartition("/")[2]
        print(f"{verdict} training from scratch: {name} {transfer:.4f} vs {scratch:.4f} from scratch")
    return {f"baseline/{metric}": scratch, "transfer_gain": transfer - scratch, "negative_transfer": negative}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``python -m jtl.train``: parses the command line, loads the config and runs.

    Args:
      argv: the arguments (default: ``sys.argv[1:]``).

    Returns:
      The run's final metrics.

    A config that does not load, or any other mistake in it, exits with status 2 and a message naming it:

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
    return run_command(parser, args.debug, lambda: train_and_evaluate(config, workdir))


if __name__ == "__main__":
    main()
