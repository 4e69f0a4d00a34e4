"""``python -m jtl.extract --config configs/X.py[:arg] [--config.key=value ...] [--workdir DIR]``.

Feature-based transfer: the pretrained backbone (``config.model.pretrained``, head removed) runs once over the
train and test splits; its features are cached on disk in shards (with labels), and a linear classifier is then
trained on the cached features with a small search over its L2 strength. The cache is resumable (finished
shards are kept and skipped) and shardable over processes (``--process_index``/``--process_count``: each
extracts every count-th shard; the classifier is fitted when every shard is there).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from jtl import data as jdata
from jtl.cli import run_command
from jtl.config import ConfigError, command_line_parser, parse_command_line
from jtl.features import extract_features, feature_fn, fit_linear_search

SHARD = "shard_{:05d}.npz"


def cache_features(
    model: Any,
    variables: dict,
    source: Any,
    directory: str | Path,
    *,
    batch_size: int = 64,
    shard_size: int = 1024,
    transform: Any = None,
    process_index: int = 0,
    process_count: int = 1,
) -> list[Path]:
    """Writes the backbone's features of ``source`` to ``directory/shard_XXXXX.npz`` (``features``, ``labels``).

    Shard ``i`` holds examples ``[i * shard_size, (i + 1) * shard_size)``. A shard is written under a temporary
    name and renamed when complete, so an interrupted run leaves only whole shards, and a rerun skips them.

    Args:
      model: a jtl model (its head is not run).
      variables: its variables.
      source: a random-access source of examples.
      directory: the cache directory of this split.
      batch_size: examples per forward pass.
      shard_size: examples per shard.
      transform: ``example -> example`` preprocessing (as for evaluation).
      process_index: this process's index; it writes shards ``process_index, process_index + count, ...``.
      process_count: the number of processes sharing the work.

    Returns:
      The shard files this process wrote or found.

    >>> import tempfile
    >>> from jtl import models
    >>> model = models.create("vit-testing", num_classes=0, image_size=8, patch_size=4, num_channels=1)
    >>> task = jdata.digits_task([0, 1], shots=5)
    >>> files = cache_features(model, models.init(model), task["train"], tempfile.mkdtemp(), shard_size=4)
    >>> [np.load(f)["features"].shape for f in files]
    [(4, 16), (4, 16), (2, 16)]
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    total = len(source)
    num_shards = max(-(-total // shard_size), 1)
    fn = feature_fn(model)  # one compiled forward pass for every shard
    done = []
    for shard in range(process_index, num_shards, process_count):
        path = directory / SHARD.format(shard)
        if not path.exists():
            start, stop = shard * shard_size, min((shard + 1) * shard_size, total)
            part = _Slice(source, start, stop)
            features, labels = extract_features(model, variables, jdata.eval_batches(part, batch_size, transform), fn)
            tmp = path.with_suffix(".tmp")
            with tmp.open("wb") as f:
                np.savez(f, features=features, labels=labels)
            tmp.replace(path)
        done.append(path)
    return done


class _Slice:
    """Examples ``[start, stop)`` of a random-access source."""

    def __init__(self, source: Any, start: int, stop: int) -> None:
        self.source, self.start, self.stop = source, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, index: int) -> Any:
        return self.source[self.start + index]


def load_features(directory: str | Path, expected: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Concatenates a split's cached shards in order.

    Args:
      directory: the split's cache directory.
      expected: the number of examples the split has; a gap or a missing shard is then an error.

    Returns:
      ``(features, labels)``.

    >>> import tempfile
    >>> directory = tempfile.mkdtemp()
    >>> np.savez(f"{directory}/shard_00000.npz", features=np.ones((2, 3)), labels=np.array([0, 1]))
    >>> [x.shape for x in load_features(directory, expected=2)]
    [(2, 3), (2,)]
    """
    files = sorted(Path(directory).glob("shard_*.npz"))
    if not files:
        raise FileNotFoundError(f"{directory}: no cached feature shards (shard_*.npz)")
    indices = [int(f.stem.split("_")[1]) for f in files]
    if indices != list(range(len(files))):
        missing = sorted(set(range(max(indices) + 1)) - set(indices))
        raise FileNotFoundError(f"{directory}: shards {missing} are missing (another process may still run)")
    parts = [np.load(f) for f in files]
    features = np.concatenate([p["features"] for p in parts])
    labels = np.concatenate([p["labels"] for p in parts])
    if expected is not None and len(labels) != expected:
        raise FileNotFoundError(f"{directory}: {len(labels)} cached examples, the split has {expected}")
    return features, labels


def extract_and_fit(
    config: ml_collections.ConfigDict, workdir: str | Path, process_index: int = 0, process_count: int = 1
) -> dict[str, Any]:
    """Caches the train/test features of the config's pretrained backbone and fits the linear classifier.

    Args:
      config: an experiment config (``model``, ``data``, ``num_classes``, ``extract``).
      workdir: the cache (``features/{train,test}/``) and ``linear_probe.json`` go here.
      process_index: this process's share of the shards.
      process_count: the number of processes extracting.

    Returns:
      The results: test accuracy, the chosen L2 strength and the validation accuracy of each.

    >>> import contextlib, io, tempfile
    >>> from jtl import models
    >>> from jtl.config import base_config
    >>> from jtl.weights import save_pretrained
    >>> root = tempfile.mkdtemp()
    >>> vit = models.create("vit-testing", num_classes=2, image_size=8, patch_size=4, num_channels=1)
    >>> _ = save_pretrained(f"{root}/backbone", vit, models.init(vit))
    >>> config = base_config()
    >>> config.num_classes, config.data.classes, config.data.shots = 2, (0, 1), 5
    >>> config.model.pretrained, config.extract.epochs = f"{root}/backbone", 5
    >>> with contextlib.redirect_stdout(io.StringIO()):
    ...     result = extract_and_fit(config, f"{root}/run")
    >>> result["train_examples"], result["feature_dim"]
    (10, 16)
    """
    from jtl.train import build_model, data_loader

    if not config.model.pretrained:
        raise ConfigError("jtl.extract needs config.model.pretrained: the backbone whose features are cached")
    workdir = Path(workdir)
    model, variables, _ = build_model(config, config.num_classes)
    splits = data_loader(model, config.model.pretrained)(config.data)
    sizes = {}
    for split in ("train", "test"):
        sizes[split] = len(splits[split])
        cache_features(
            model,
            variables,
            splits[split],
            workdir / "features" / split,
            batch_size=config.eval_batch_size,
            shard_size=config.extract.shard_size,
            transform=splits["eval_transform"],
            process_index=process_index,
            process_count=process_count,
        )
    train_features, train_labels = load_features(workdir / "features" / "train", sizes["train"])
    test_features, test_labels = load_features(workdir / "features" / "test", sizes["test"])
    classifier, scores = fit_linear_search(
        train_features,
        train_labels,
        config.num_classes,
        l2_grid=tuple(config.extract.l2_grid),
        epochs=config.extract.epochs,
        batch_size=config.extract.batch_size,
        learning_rate=config.extract.learning_rate,
        seed=config.seed,
    )
    result = {
        "test/accuracy": classifier.accuracy(test_features, test_labels),
        "l2": classifier.l2,
        "validation_accuracy_by_l2": {str(k): v for k, v in scores.items()},
        "feature_dim": int(train_features.shape[1]),
        "train_examples": len(train_labels),
    }
    if process_index == 0:
        (workdir / "linear_probe.json").write_text(json.dumps(result, indent=1))
        print(
            f"features {train_features.shape[1]}-d of {len(train_labels)} train / {len(test_labels)} test examples "
            f"cached in {workdir / 'features'}; linear classifier (L2 {classifier.l2:g}): test accuracy "
            f"{result['test/accuracy']:.4f}"
        )
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``python -m jtl.extract``: parses the command line, loads the config and runs.

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
    parser = command_line_parser(
        "python -m jtl.extract", __doc__.splitlines()[0], "feature cache and results", workdir_suffix="_extract"
    )
    parser.add_argument("--process_index", type=int, default=0, help="this process's share of the shards")
    parser.add_argument("--process_count", type=int, default=1, help="processes sharing the extraction")
    args, config, workdir = parse_command_line(parser, argv)
    return run_command(
        parser, args.debug, lambda: extract_and_fit(config, workdir, args.process_index, args.process_count)
    )


if __name__ == "__main__":
    main()
