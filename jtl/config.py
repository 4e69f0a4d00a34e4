"""Experiment configs: ``ml_collections`` Python files with ``get_config(arg)``, ``--config file.py[:arg]`` and
``--config.key=value`` overrides, locked so that a typo is an error naming the key and the closest ones."""

from __future__ import annotations

import argparse
import ast
import difflib
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import ml_collections


class ConfigError(ValueError):
    """A config file or override that does not fit; the message names the file or key at fault."""


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Loads ``path/to/config.py[:arg]`` by calling its ``get_config(arg)``; the result is locked.

    Args:
      spec: the config file, optionally followed by ``:arg`` (passed to ``get_config`` as a string).

    Returns:
      The locked ``ConfigDict``.

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "c.py")
    >>> _ = open(path, "w").write("import ml_collections\\ndef get_config(arg=None):\\n"
    ...                           "    return ml_collections.ConfigDict({'lr': 0.1, 'arg': arg})\\n")
    >>> load_config(path + ":b16").arg
    'b16'
    """
    path, _, arg = spec.partition(":")
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--config {spec}: no such file {file}")
    module_spec = importlib.util.spec_from_file_location(f"jtl_config_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{file}: a config file must define get_config(arg=None)")
    try:
        config = module.get_config(arg or None)
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{file}: get_config({arg!r}) failed: {e}") from e
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"{file}: get_config returned {type(config).__name__}, not an ml_collections.ConfigDict")
    config.lock()
    return config


def flat_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """All dotted keys of a config, nested ones included.

    Args:
      config: the config.
      prefix: prepended to every key (used for the nested ones).

    Returns:
      The keys (ConfigDict iterates its keys sorted).

    >>> flat_keys(ml_collections.ConfigDict({"lr": 0.1, "data": {"name": "digits"}}))
    ['data', 'data.name', 'lr']
    """
    keys = []
    for key, value in config.items():
        keys.append(prefix + key)
        if isinstance(value, ml_collections.ConfigDict):
            keys.extend(flat_keys(value, prefix + key + "."))
    return keys


def _parse_value(text: str, current: Any, key: str) -> Any:
    if isinstance(current, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ConfigError(f"--config.{key}={text}: expected true or false")
        return text.lower() in ("true", "1")
    if isinstance(current, str):
        return text
    if current is None:
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError) as e:
        raise ConfigError(f"--config.{key}={text}: not a {type(current).__name__} literal") from e
    if isinstance(current, float) and isinstance(value, int):
        value = float(value)
    if isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    if type(value) is not type(current):
        raise ConfigError(f"--config.{key}={text}: expected a {type(current).__name__}, got {type(value).__name__}")
    return value


def apply_override(config: ml_collections.ConfigDict, key: str, text: str) -> None:
    """Sets ``config.<key>`` (dotted) from command-line text, typed like the current value.

    Args:
      config: the (locked) config.
      key: the dotted key, e.g. ``optimizer.learning_rate``.
      text: the value as typed.

    Returns:
      None.

    Raises:
      ConfigError: for an unknown key (naming the closest keys) or a value of the wrong type.

    >>> c = ml_collections.ConfigDict({"optim": {"lr": 0.1}}); _ = c.lock()
    >>> apply_override(c, "optim.lr", "3e-4"); c.optim.lr
    0.0003
    """
    node = config
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            close = difflib.get_close_matches(key, flat_keys(config), n=3, cutoff=0.5)
            hint = f"; closest: {', '.join(close)}" if close else ""
            raise ConfigError(f"unknown config key {key!r}{hint}")
        if i == len(parts) - 1:
            node[part] = _parse_value(text, node[part], key)
        else:
            node = node[part]


def config_from_args(spec: str, overrides: list[str]) -> ml_collections.ConfigDict:
    """Loads ``--config spec`` and applies ``--config.key=value`` overrides in order.

    Args:
      spec: ``path/to/config.py[:arg]``.
      overrides: command-line items, each ``--config.key=value``.

    Returns:
      The locked config.

    Raises:
      ConfigError: naming the file, item or key at fault.

    >>> config_from_args("configs/quickstart.py:lora", ["--config.lora.rank=8"]).lora.rank
    8
    """
    return apply_overrides(load_config(spec), overrides)


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]) -> ml_collections.ConfigDict:
    """Applies ``--config.key=value`` command-line items in order.

    Args:
      config: the (locked) config, changed in place.
      overrides: the items, each ``--config.key=value``.

    Returns:
      The config.

    Raises:
      ConfigError: naming the item or key at fault.

    >>> apply_overrides(base_config().lock(), ["--config.lora.rank=8"]).lora.rank
    8
    """
    for item in overrides:
        key, sep, value = item.removeprefix("--config.").partition("=")
        if not sep:
            raise ConfigError(f"{item}: expected --config.key=value")
        apply_override(config, key, value)
    return config


def command_line_parser(
    prog: str, description: str, workdir_help: str, workdir_suffix: str = ""
) -> argparse.ArgumentParser:
    """The parser of a jtl command: ``--config path/to/config.py[:arg]`` and ``--workdir``; the command adds its
    own options and reads everything with :func:`parse_command_line`.

    Args:
      prog: the command, e.g. ``python -m jtl.train``.
      description: one line for ``--help``.
      workdir_help: what the workdir holds.
      workdir_suffix: appended to the default workdir, ``workdirs/<config file name>``.

    Returns:
      The parser.

    >>> command_line_parser("python -m jtl.train", "Trains.", "checkpoints").prog
    'python -m jtl.train'
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", required=True, help="path/to/config.py[:arg]")
    parser.add_argument(
        "--workdir", default=None, help=f"{workdir_help} (default: workdirs/<config name>{workdir_suffix})"
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (or JTL_DEBUG=1)")
    parser.set_defaults(workdir_suffix=workdir_suffix)
    return parser


def parse_command_line(
    parser: argparse.ArgumentParser, argv: list[str]
) -> tuple[argparse.Namespace, ml_collections.ConfigDict, str]:
    """Parses a command line of ``parser``'s options and any ``--config.key=value`` overrides; an unknown
    option, or a config that does not load, exits with status 2 and a message naming it.

    Args:
      parser: from :func:`command_line_parser`, with the command's own options added.
      argv: the arguments.

    Returns:
      ``(args, config, workdir)``.

    >>> parser = command_line_parser("python -m jtl.train", "Trains.", "checkpoints")
    >>> args, config, workdir = parse_command_line(
    ...     parser, ["--config", "configs/quickstart.py:lora", "--config.lora.rank=8"]
    ... )
    >>> config.lora.rank, workdir
    (8, 'workdirs/quickstart')
    """
    args, rest = parser.parse_known_args([a for a in argv if not a.startswith("--config.")])
    if rest:
        parser.error(f"unrecognised arguments: {rest}")
    try:
        config = config_from_args(args.config, [a for a in argv if a.startswith("--config.")])
    except ConfigError as e:
        parser.exit(2, f"error: {e}\n")
    workdir = args.workdir or os.path.join("workdirs", Path(args.config.partition(":")[0]).stem + args.workdir_suffix)
    return args, config, workdir


def data_config() -> ml_collections.ConfigDict:
    """The keys of one dataset (``config.data``, ``config.target``, each task's ``data``), with defaults.

    Returns:
      An unlocked ``ConfigDict``.

    >>> data_config().source
    'digits'
    """
    d = ml_collections.ConfigDict()
    d.source = "digits"  # or "tfds", or "folder" (root/<class>/*.jpg|png; audio models: *.wav|flac)
    d.classes = tuple(range(10))  # digits: the classes to keep
    d.shots = 0  # digits: labelled examples per class; 0: a seeded 80/20 split
    d.split_seed = 0
    d.name = ""  # tfds: the dataset, e.g. "cifar10"
    d.train_split = "train"
    d.test_split = "test"
    d.data_dir = ""  # tfds: where prepared datasets live ("": TFDS's default)
    d.train_dir = ""  # folder: the training images, one sub-directory per class
    d.test_dir = ""  # folder: the test images, with the same class sub-directories
    d.mean = (0.5, 0.5, 0.5)  # normalisation, unless the pretrained model's preprocessor config says
    d.std = (0.5, 0.5, 0.5)
    d.text_key = "sentence"  # text models: the example's text field
    d.max_length = 128  # text models: tokens per example (padded, truncated)
    d.tokenizer = ""  # text models: tokenizer source ("": the pretrained model's)
    d.crop = True  # train: random resized crop (else resize)
    d.flip = True  # train: random horizontal flip
    d.label_noise = 0.0  # digits: the share of training labels shuffled (a deliberately bad source)
    d.ood_shift = ""  # digits: also evaluate on a shifted test split (rotate, noise, invert)
    d.shift = ""  # digits: shifts applied to every split, in order, e.g. "invert,rotate" (a shifted domain)
    d.half = -1  # digits: 0 or 1 keeps that half of each digit's images (domains that share no image)
    d.labels = "class"  # digits: "class", "parity" or "value" (a regression target; multi-task)
    # Object detection (jtl.data.detection_splits): on while max_boxes > 0, with source "coco" (a COCO instances
    # JSON per split and its image folder: train_annotations + train_dir, test_annotations + test_dir), "tfds"
    # (name coco/2017, whose test split has no boxes: test_split "validation"; voc/2007; voc/2012) or "canvases"
    # (digits pasted onto canvases, offline; classes and split_seed apply). Training also reads flip, and crop: a
    # random 50-100% region of each side first, as DETR's random-size crop (set it False for plain resizing).
    d.max_boxes = 0  # boxes per example (padded; more are cut)
    d.image_size = 0  # the longer side after the resize, padded to a square; 0: the model's image size
    d.scale_jitter = (1.0, 1.0)  # train: the resize times a random factor in this range (larger: a random crop)
    d.train_annotations = ""
    d.test_annotations = ""
    d.canvases = ml_collections.ConfigDict()
    d.canvases.train = 512  # canvases per split
    d.canvases.test = 128
    d.canvases.canvas_size = 64
    d.canvases.max_digits = 4
    d.canvases.half = -1  # 0 or 1: that half of each digit's images (as data.half), apart from a digits pretraining

    return d


def task_config(kind: str = "classification", num_classes: int = 10, weight: float = 1.0) -> ml_collections.ConfigDict:
    """One task of a multi-task run: its data (:func:`data_config`), kind, output size and static loss weight.

    Args:
      kind: ``"classification"`` (cross-entropy, accuracy) or ``"regression"`` (squared error, MSE).
      num_classes: the classes (classification); a regression head has one output.
      weight: the task's loss weight under ``multitask.weighting="equal"`` (static weights).

    Returns:
      An unlocked ``ConfigDict``; set ``.data`` fields as for ``config.data``.

    >>> task_config("regression").kind
    'regression'
    """
    t = ml_collections.ConfigDict()
    t.kind = kind
    t.num_classes = num_classes
    t.weight = weight
    t.data = data_config()
    return t


def base_config() -> ml_collections.ConfigDict:
    """Every key the trainer reads, with defaults; config files start from it and change what they need.

    Returns:
      An unlocked ``ConfigDict``.

    >>> base_config().parallel
    'jit'
    """
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.num_classes = 10
    # What is optimised: a name from jtl.objectives.available(); "" picks it from the config (multitask with
    # config.tasks, adaptation with config.target.source, else classification).
    c.objective = ""

    c.model = ml_collections.ConfigDict()
    c.model.name = "vit-testing"  # a jtl.models registry name, for training from scratch
    c.model.pretrained = ""  # a hub id, directory or file for jtl.weights.load_pretrained (overrides name)
    c.model.overrides = ml_collections.ConfigDict()  # other model fields, e.g. image_size, dtype
    c.model.drop_pre_logits = False  # pretrained ViT: drop the pre-logits layer, as vit_jax does to fine-tune
    c.model.reinit = False  # the pretrained architecture, initialised from scratch (the baseline)
    # Memory controls of the transformer families (same parameter names and checkpoints either way): each encoder
    # block's rematerialisation in training ("none", "full": keep only each block's input, "dots_saveable": keep
    # the matrix products' outputs) and the blocks as one jax.lax.scan (one block traced, not num_layers; on the
    # CPU remat saves memory only with it). What each costs and saves: BENCHMARKS.md, "Memory: remat and scan".
    c.model.remat = "none"
    c.model.scan_layers = False
    # Zero-shot start (CLIP/SigLIP checkpoints): the vision tower with a head from the text tower's embeddings of
    # the class names (in label order) filled into the templates (jtl.models.zero_shot_model).
    c.model.zero_shot = ml_collections.ConfigDict()
    c.model.zero_shot.classes = ()
    c.model.zero_shot.templates = ("a photo of a {}.",)

    c.data = data_config()

    # Domain adaptation: a labelled source (config.data) and an unlabelled target domain read side by side, one
    # batch of each per step; evaluation is on the target's test split. Off while target.source is "".
    c.target = data_config()
    c.target.source = ""
    c.adaptation = ml_collections.ConfigDict()
    c.adaptation.method = "none"  # none (source only), dann, cdan, mmd, coral, mcc
    c.adaptation.weight = 1.0  # the transfer loss's weight
    c.adaptation.gamma = 10.0  # DANN/CDAN: how fast the gradient-reversal coefficient warms up to 1
    c.adaptation.temperature = 2.5  # MCC
    c.adaptation.entropy_conditioning = True  # CDAN+E
    c.adaptation.discriminator_width = 256
    c.adaptation.dev = True  # deep embedded validation at each evaluation (model selection without target labels)
    c.adaptation.dev_examples = 2000  # DEV: at most this many examples of each set (seeded sample)

    # Multi-task learning: name -> task_config(); the model is a shared backbone with one head per task
    # (the objective's params: heads/<name>), each task with its own data, loss and metrics. Off while empty.
    c.tasks = ml_collections.ConfigDict()
    c.multitask = ml_collections.ConfigDict()
    c.multitask.weighting = "equal"  # equal (the tasks' static weights), uncertainty, dwa, gradnorm, pcgrad
    c.multitask.dwa_temperature = 2.0
    c.multitask.dwa_period = 50  # DWA: steps per "epoch" whose mean losses set the next weights
    c.multitask.gradnorm_alpha = 1.5
    c.multitask.gradnorm_learning_rate = 0.025

    # Object detection (config.objective = "detection"): a detector on the backbone's feature maps (config.model,
    # num_classes=0 there), trained on detection data (config.data.max_boxes > 0) and evaluated by COCO AP.
    c.detection = ml_collections.ConfigDict()
    c.detection.detector = "faster_rcnn"  # or "detr"
    c.detection.weights = ""  # a torchvision Faster R-CNN state dict or a Hugging Face DETR directory ("": scratch)
    c.detection.fields = ml_collections.ConfigDict()  # the detector's fields, e.g. fpn_channels, num_queries
    c.detection.layers = ()  # backbone stages the detector reads (empty: every stage; DETR: the last)

    # Negative transfer: measure before (transferability scores of the pretrained features on the training
    # data) and after (the same run from scratch; the final report flags transfer that loses to it).
    c.transferability = False
    c.baseline = ml_collections.ConfigDict()
    c.baseline.scratch = False
    c.baseline.learning_rate = 0.0  # 0: the run's own
    # WiSE-FT: after training, the starting weights (pretrained, or a zero-shot head's) and the fine-tuned ones
    # interpolated at each alpha here (0: start, 1: fine-tuned) and evaluated, as wise_ft/<alpha>/<metric>.
    c.wise_ft = ()

    # What trains (through jtl.masking; frozen parameters get no gradient computed). At most one of:
    c.trainable = ()  # regexes of trainable parameters (the rest is frozen)
    c.frozen = ()  # regexes of frozen parameters (the rest trains)
    c.train_last_n = -1  # >= 0: only the last N blocks plus norm/pooler/head train
    # Gradual unfreezing (ULMFiT): stage k trains the top k+1 layers (head and final norm first, then blocks
    # downward) from step starts[k]; the last stage trains everything. (0, K) is LP-FT: a linear probe for K
    # steps, then full fine-tuning.
    c.unfreeze_starts = ()
    c.lr_mults = ()  # ((regex, multiplier), ...)
    c.layer_decay = 0.0  # > 0: layer-wise learning-rate decay factor (discriminative learning rates)
    # "train": statistics update (only if every BatchNorm layer trains); "frozen": the source's statistics;
    # "reestimate": frozen in training, recomputed on the target training data before training and each eval.
    c.batch_norm = "train"
    # Adapters (jtl.adapters.from_config): when any is on, only the adapters (and the head) train.
    c.lora = ml_collections.ConfigDict()  # rank > 0: LoRA adapters
    c.lora.rank = 0
    c.lora.alpha = 16.0
    c.lora.dropout = 0.0
    c.lora.rslora = False
    c.lora.dora = False  # DoRA: LoRA's direction update plus a learned magnitude per output feature
    c.lora.quantize = ""  # QLoRA: "nf4" or "int8" holds the adapted layers' frozen kernels quantized
    c.lora.targets = (r"encoder/block_\d+/attn/(query|value)",)  # Dense/Conv layers to adapt (regexes on names)
    c.ia3 = ml_collections.ConfigDict()  # targets set: (IA)^3 scaling vectors
    c.ia3.targets = ()  # e.g. (r"encoder/block_\d+/attn/(key|value)", r"encoder/block_\d+/mlp/fc2")
    c.ia3.feedforward = ()  # the targets whose input is scaled, e.g. (r"encoder/block_\d+/mlp/fc2",)
    c.vpt = ml_collections.ConfigDict()  # num_tokens > 0: Visual Prompt Tuning (ViT-style encoders)
    c.vpt.num_tokens = 0
    c.vpt.deep = False  # fresh prompts before every block (deep) or before the first only (shallow)
    c.bottleneck = ml_collections.ConfigDict()  # size > 0: bottleneck adapters
    c.bottleneck.size = 0
    c.bottleneck.style = "houlsby"  # "houlsby": after attention and MLP; "pfeiffer": after the MLP only
    c.bottleneck.activation = "relu"
    c.l2sp_alpha = 0.0  # L2-SP: pull toward the pretrained weights (set weight_decay to 0 with it)
    c.l2sp_beta = 0.0  # L2-SP: plain L2 on the new head

    c.optimizer = "adamw"
    c.learning_rate = 1e-3
    c.momentum = 0.9
    c.weight_decay = 1e-4
    c.grad_clip = 1.0
    c.schedule = "cosine"
    c.warmup_steps = 0
    c.label_smoothing = 0.0
    c.mixup_alpha = 0.0
    c.hyperrule = ""  # "bit": BiT-HyperRule sets steps, schedule, SGD and MixUp from the training set's size

    c.total_steps = 100
    c.batch_size = 32  # global, over all devices and hosts
    c.accum_steps = 1
    c.eval_batch_size = 64
    c.parallel = "jit"  # or "pmap"
    c.num_devices = 0  # 0: all devices
    # Models larger than one device (config.parallel = "jit"): a (data, model) device mesh, and where each
    # parameter and its optimizer state live (jtl.sharding). By default everything is replicated (data parallel).
    c.mesh = ml_collections.ConfigDict()
    c.mesh.model = 1  # devices on the model axis (tensor parallelism); the rest form the data axis
    c.sharding = ml_collections.ConfigDict()
    c.sharding.fsdp = False  # FSDP: parameters and optimizer state split over the data axis
    # ((regex, strategy), ...) on parameter names, first match wins, replacing the defaults (FSDP as above, and
    # tensor-parallel attention/MLP splits when mesh.model > 1). Strategies: "replicate", "fsdp", "model:<dim>",
    # joined with "+", e.g. ((r".*/mlp/fc1/kernel", "model:-1+fsdp"), (".*", "fsdp")).
    c.sharding.rules = ()
    c.sharding.unmatched = "replicate"  # a parameter no rule matches: "replicate" or "error"
    c.sharding.min_size = 2**14  # leaves with fewer elements stay replicated (gathering them costs more)

    # python -m jtl.extract: the feature cache and the linear classifier trained on it.
    c.extract = ml_collections.ConfigDict()
    c.extract.shard_size = 1024  # examples per cached shard
    c.extract.l2_grid = (1e-6, 1e-4, 1e-3, 1e-2, 1e-1)  # L2 strengths tried on a held-out 20%
    c.extract.epochs = 100
    c.extract.batch_size = 256
    c.extract.learning_rate = 1e-2

    c.log_every = 10
    c.eval_every = 0
    c.checkpoint_every = 50
    c.keep_checkpoints = 2
    c.compilation_cache = "~/.cache/jtl/xla"  # "" turns JAX's persistent compilation cache off
    return c


# What ``python -m jtl.train`` records in the workdir, and ``python -m jtl.export`` reads back.
CONFIG_FILE = "config.json"


def _tuples(value: Any) -> Any:
    """JSON's lists back as tuples: jtl's configs hold sequences as tuples (``apply_override`` keeps them so)."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {key: _tuples(v) for key, v in value.items()}
    return value


def config_from_json(text: str) -> ml_collections.ConfigDict:
    """A config from the JSON that :func:`save_config` writes; lists become tuples.

    Args:
      text: the JSON text.

    Returns:
      The locked config.

    >>> config_from_json('{"lora": {"targets": ["query"]}, "seed": 0}').lora.targets
    ('query',)
    """
    config = ml_collections.ConfigDict(_tuples(json.loads(text)))
    config.lock()
    return config


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, ml_collections.ConfigDict) and isinstance(b, ml_collections.ConfigDict):
        keys = sorted(set(a.keys()) | set(b.keys()))
        return [d for key in keys for d in _differences(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if type(a) is type(b) and a == b else [prefix.rstrip(".")]


def save_config(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> Path:
    """Writes ``config`` to ``workdir/config.json`` (atomically: a temporary file renamed into place), the record of
    a run that ``python -m jtl.export --workdir`` reads with :func:`config_from_json`.

    Args:
      config: the run's config.
      workdir: the run's workdir (it exists).

    Returns:
      The file written.

    Raises:
      ConfigError: naming the keys whose values would not read back equal (a list, or a value JSON cannot hold).

    >>> import tempfile
    >>> path = save_config(base_config(), tempfile.mkdtemp())
    >>> config_from_json(path.read_text()) == base_config().lock()
    True
    """
    text = config.to_json_best_effort(indent=1, sort_keys=True)
    wrong = _differences(config, config_from_json(text))
    if wrong:
        raise ConfigError(f"{', '.join(wrong)}: would not read back from {CONFIG_FILE} as set (use tuples, not lists)")
    path = Path(workdir) / CONFIG_FILE
    staging = path.with_name(f".{CONFIG_FILE}.{os.getpid()}")
    staging.write_text(text + "\n")
    os.replace(staging, path)
    return path
