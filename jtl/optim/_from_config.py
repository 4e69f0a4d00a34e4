"""The config's choices as the trainer reads them."""

from __future__ import annotations

import itertools
import re
from typing import Any, NamedTuple

import jax
import ml_collections
import optax

import jtl.masking as jm
from jtl import adapters, models, step
from jtl.config import ConfigError
from jtl.optim._recipes import bit_hyperrule, l2_sp


def trainable(config: ml_collections.ConfigDict, model: Any) -> Any:
    """The trainable spec of the model's params from ``config.trainable`` / ``frozen`` / ``train_last_n`` /
    the configured adapters (:func:`jtl.adapters.from_config`: their leaves and the head; everything when none
    is set).

    Args:
      config: the experiment config.
      model: the model.

    Returns:
      A mask spec for :mod:`jtl.masking` (regexes or a callable).

    >>> from jtl.config import base_config
    >>> config = base_config()
    >>> config.trainable = ("head/.*",)
    >>> trainable(config, None)
    ['head/.*']
    """
    if config.train_last_n >= 0:
        # The last N layers below the top, plus the top (final norm, pooler and head) itself.
        return models.top_layers(model, config.train_last_n + 1)
    if config.trainable:
        return list(config.trainable)
    if config.frozen:
        return lambda tree: jm.trainable_mask(tree, frozen=list(config.frozen), allow_unused=_masked_view(tree))
    methods = adapters.from_config(config)
    if methods:
        return list(adapters.trainable_patterns(*methods))
    return step.everything


def _masked_view(tree: Any) -> bool:
    """Whether ``tree`` is a freeze's view of a parameter tree (its frozen leaves ``optax.MaskedNode``), as an
    optimizer nested in another freeze (the report's) sees it: frozen rules match nothing there, legitimately."""
    leaves = jax.tree_util.tree_leaves(tree, is_leaf=lambda x: isinstance(x, optax.MaskedNode))
    return any(isinstance(leaf, optax.MaskedNode) for leaf in leaves)


class Stages(NamedTuple):
    """What trains in each stage: stage ``k`` trains ``trainables[k]`` from step ``schedule.starts[k]``."""

    schedule: jm.GradualUnfreezing
    trainables: list[Any]

    def of(self, steps_done: int) -> int:
        """The stage that runs the step after ``steps_done`` steps."""
        return self.schedule.stage(steps_done)


def stages(config: ml_collections.ConfigDict, model: Any, params: Any) -> Stages:
    """One stage with :func:`trainable`, or gradual unfreezing by layer index with ``config.unfreeze_starts``:
    stage k trains the top k+1 layers (:func:`jtl.models.layer_index`), the last stage everything.

    Args:
      config: the experiment config.
      model: the model.
      params: its params (the stages' groups are their leaf names).

    Returns:
      :class:`Stages`.

    >>> from jtl.config import base_config
    >>> config = base_config()
    >>> config.unfreeze_starts = (0, 10)
    >>> model = models.create("vit-testing", num_classes=2)
    >>> plan = stages(config, model, models.init(model)["params"])
    >>> plan.of(9), plan.of(10), len(plan.trainables[0]) < len(plan.trainables[1])
    (0, 1, True)
    """
    if not config.unfreeze_starts:
        if config.frozen and params is not None:
            try:
                jm.trainable_mask(params, frozen=list(config.frozen))
            except jm.MaskingError as e:
                raise ConfigError(f"config.frozen: {e}") from e
        return Stages(jm.gradual_unfreezing([".*"], starts=[0]), [trainable(config, model)])
    others = config.trainable or config.frozen or config.train_last_n >= 0 or adapters.from_config(config)
    if others:
        raise ConfigError(
            "config.unfreeze_starts decides what trains in each stage; leave config.trainable, config.frozen, "
            "config.train_last_n and the adapters (config.lora.rank, config.ia3.targets, config.vpt.num_tokens, "
            "config.bottleneck.size) unset"
        )
    starts = tuple(int(s) for s in config.unfreeze_starts)
    if starts[0] != 0 or any(b <= a for a, b in itertools.pairwise(starts)):
        raise ConfigError(f"config.unfreeze_starts={starts}: must start at 0 and increase")
    layer_of, top = models.layer_index(model)
    names = [name for name, _ in jm.named_leaves(params)]
    last = len(starts) - 1
    # Group k: the leaves of layer top - k, exact names; the last group: everything still frozen.
    groups = [
        [re.escape(n) for n in names if (layer_of(n) == top - k if k < last else layer_of(n) <= top - k)]
        for k in range(len(starts))
    ]
    try:
        plan = jm.gradual_unfreezing(groups, starts=starts)
    except jm.MaskingError as e:
        raise ConfigError(f"config.unfreeze_starts={starts}: {e}") from e
    return Stages(plan, [list(plan.trainable_patterns(start)) for start in starts])


def schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    """The learning-rate schedule: ``config.schedule`` (cosine, linear, constant, step) after a linear warm-up.

    Args:
      config: ``learning_rate``, ``warmup_steps``, ``total_steps``, ``schedule``.

    Returns:
      The optax schedule.

    >>> from jtl.config import base_config
    >>> config = base_config()
    >>> config.warmup_steps, config.learning_rate = 10, 1.0
    >>> float(schedule(config)(5))
    0.5
    """
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


def optimizer(
    config: ml_collections.ConfigDict, model: Any, trainable: Any, learning_rate: optax.Schedule
) -> optax.GradientTransformation:
    """The optax chain over :func:`jtl.step.trained`'s tree: L2-SP on the model, gradient clipping, the base
    optimizer (weight decay masked to matrices and kernels), learning-rate multipliers and layer-wise decay on
    the model; ``trainable`` (of the model) frozen by :func:`jtl.step.freeze`.

    Args:
      config: ``optimizer``, ``momentum``, ``weight_decay``, ``grad_clip``, ``l2sp_alpha/beta``, ``lr_mults``,
        ``layer_decay``.
      model: the model (its layer index, for layer-wise decay).
      trainable: what of the model trains.
      learning_rate: the schedule.

    Returns:
      The optimizer.

    >>> from jtl.config import base_config
    >>> model = models.create("vit-testing", num_classes=2)
    >>> tx = optimizer(base_config(), model, ["head/.*"], schedule(base_config()))
    >>> state = tx.init(step.trained(models.init(model)["params"], {}))
    """
    if config.optimizer == "sgd":
        base = optax.sgd(learning_rate, momentum=config.momentum or None)
    elif config.optimizer == "adamw":
        base = optax.adamw(learning_rate, weight_decay=config.weight_decay, mask=jm.weight_decay_mask)
    elif config.optimizer == "adam":
        base = optax.adam(learning_rate)
    else:
        raise ConfigError(f"config.optimizer={config.optimizer!r}; known: sgd, adam, adamw")
    chain = []
    if config.l2sp_alpha or config.l2sp_beta:
        chain.append(step.on_model(l2_sp(config.l2sp_alpha, config.l2sp_beta)))
    chain += [optax.clip_by_global_norm(config.grad_clip)] if config.grad_clip else []
    tx = step.freeze(optax.chain(*chain, base), trainable)
    scaling = []
    if config.lr_mults:
        scaling.append(step.on_model(jm.lr_multipliers([tuple(rule) for rule in config.lr_mults])))
    if config.layer_decay:
        layer_of, top = models.layer_index(model)
        scaling.append(step.on_model(jm.layerwise_lr_decay(layer_of, top, config.layer_decay)))
    return optax.chain(tx, *scaling)


def apply_hyperrule(config: ml_collections.ConfigDict, num_examples: int, verbose: bool) -> ml_collections.ConfigDict:
    """A copy of ``config`` with BiT-HyperRule's steps, schedule, optimizer and MixUp for this dataset size.

    Args:
      config: the experiment config (``hyperrule='bit'``).
      num_examples: the training set's size.
      verbose: print the choice.

    Returns:
      The changed (locked) copy.

    >>> from jtl.config import base_config
    >>> config = base_config()
    >>> config.hyperrule = "bit"
    >>> apply_hyperrule(config, 100, verbose=False).total_steps
    500
    """
    if config.hyperrule != "bit":
        raise ConfigError(f"config.hyperrule={config.hyperrule!r}; known: bit")
    rule = bit_hyperrule(num_examples, batch_size=config.batch_size)
    config = ml_collections.ConfigDict(config.to_dict())
    config.total_steps, config.warmup_steps, config.learning_rate = (
        rule.total_steps,
        rule.warmup_steps,
        rule.learning_rate,
    )
    config.optimizer, config.momentum, config.mixup_alpha, config.schedule = "sgd", 0.9, rule.mixup_alpha, "step"
    config.lock()
    if verbose:
        print(
            f"BiT-HyperRule for {num_examples} examples: {rule.total_steps} steps, warm-up {rule.warmup_steps}, "
            f"SGD lr {rule.learning_rate:g} divided by 10 at 30/60/90%, MixUp {rule.mixup_alpha}"
        )
    return config


def train_batch_stats(config: ml_collections.ConfigDict, mask: Any) -> bool:
    """Whether BatchNorm statistics update in the step: ``config.batch_norm == 'train'`` and every BatchNorm
    layer of the model trains (a frozen backbone keeps its statistics and runs in inference mode).

    Args:
      config: ``batch_norm`` (train, frozen, reestimate).
      mask: the model's resolved trainable mask.

    Returns:
      The flag.

    >>> from jtl.config import base_config
    >>> train_batch_stats(base_config(), {"stage_0": {"bn1": {"scale": False}}})
    False
    """
    if config.batch_norm not in ("train", "frozen", "reestimate"):
        raise ConfigError(f"config.batch_norm={config.batch_norm!r}; known: train, frozen, reestimate")
    bn_trainable = all(m for name, m in jm.named_leaves(mask) if "/bn" in name or name.startswith("bn"))
    return config.batch_norm == "train" and bn_trainable
