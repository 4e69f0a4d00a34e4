"""In-memory datasets, scikit-learn's bundled digits, and the grain pipelines over them."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import grain
import numpy as np


class ArraySource(NamedTuple):
    """A random-access source over in-memory arrays: ``source[i]`` is ``{"image": ..., "label": ...}``."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {"image": self.images[index], "label": self.labels[index]}


LABELS = ("class", "parity", "value")


def digits_task(
    classes: Sequence[int],
    *,
    shots: int | None = None,
    seed: int = 0,
    half: int | None = None,
    labels: str = "class",
) -> dict[str, ArraySource]:
    """scikit-learn's bundled digits (offline): the given classes, relabelled ``0..len(classes)-1``.

    Args:
      classes: the digits to keep, e.g. ``range(5, 10)``.
      shots: labelled training examples per class; the rest of those classes is the test split. ``None``: a
        seeded 80/20 split.
      seed: the seed of the split.
      half: 0 or 1: only that half of each digit's images (split by a fixed seed, whatever ``seed`` is), so
        that two domains built from the digits share no image; None: all of them.
      labels: ``"class"`` (the position in ``classes``), ``"parity"`` (the digit modulo 2) or ``"value"``
        (the digit as a float32 regression target).

    Returns:
      ``{"train": ArraySource, "test": ArraySource}`` with images (N, 8, 8, 1) in [0, 1].

    >>> task = digits_task(range(5, 10), shots=10)
    >>> len(task["train"]), task["train"].images.shape[1:], sorted(set(task["train"].labels.tolist()))
    (50, (8, 8, 1), [0, 1, 2, 3, 4])
    >>> sorted(set(digits_task([2, 3], shots=4, half=1, labels="parity")["train"].labels.tolist()))
    [0, 1]
    """
    from sklearn.datasets import load_digits

    if labels not in LABELS:
        raise ValueError(f"labels={labels!r}; known: {', '.join(LABELS)}")
    if half not in (None, 0, 1):
        raise ValueError(f"half={half!r}; expected 0, 1 or None")
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]
    rng = np.random.default_rng(seed)
    train, test = [], []
    for position, digit in enumerate(classes):
        index = np.flatnonzero(digits.target == digit)
        if half is not None:
            halves = np.random.default_rng(digit).permutation(index)
            index = np.sort(halves[: len(index) // 2] if half == 0 else halves[len(index) // 2 :])
        index = rng.permutation(index)
        new_label = {"class": position, "parity": digit % 2, "value": float(digit)}[labels]
        cut = shots if shots is not None else int(0.8 * len(index))
        train.extend((i, new_label) for i in index[:cut])
        test.extend((i, new_label) for i in index[cut:])

    def source(pairs: list[tuple[int, float]]) -> ArraySource:
        order = rng.permutation(len(pairs))
        index = np.array([pairs[i][0] for i in order], dtype=np.int64)
        targets = np.array([pairs[i][1] for i in order], dtype=np.float32 if labels == "value" else np.int32)
        return ArraySource(images[index], targets)

    return {"train": source(train), "test": source(test)}


ENDLESS = 2**62  # positions in the stream: more than any run reads


class _EpochShuffle:
    """Stream position -> example: epoch ``e`` visits the source in ``rng([seed, e]).permutation(n)`` order.

    grain's ``shuffle`` computes each position with ``index_shuffle``, which costs 0.6 ms per example on a
    source of 50 examples (4.5 us on 50,000): the quickstart's 10-shot task then could not feed its train step
    (``benchmarks/input_pipeline.py``). A NumPy permutation per epoch, cached, costs microseconds for any size.
    """

    def __init__(self, source: Any, seed: int) -> None:
        self.source = source
        self.seed = seed
        self.size = len(source)
        if not self.size:
            raise ValueError("train_batches: the source is empty")
        self.permutation = functools.lru_cache(maxsize=4)(self._permutation)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.size)

    def __call__(self, position: int) -> Any:
        epoch, index = divmod(position, self.size)
        return self.source[int(self.permutation(epoch)[index])]


def train_batches(
    source: Any,
    batch_size: int,
    *,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    transform: Callable[[Any, np.random.Generator], dict[str, np.ndarray]] | None = None,
) -> grain.DatasetIterator:
    """An endless, shuffled stream of this host's batches; its ``get_state()`` checkpoints exactly.

    Each host reads only its rows of each global batch and yields ``batch_size`` examples per step: the global
    batch is ``batch_size * process_count``, identical for any number of hosts.

    Args:
      source: a random-access source (``len`` and ``__getitem__``).
      batch_size: examples per step on this host.
      seed: the shuffle seed (a different order every epoch).
      process_index: this host's index.
      process_count: the number of hosts.
      transform: ``(example, rng) -> example``, e.g. augmentation; seeded per example, so a resumed run
        transforms exactly as an uninterrupted one.

    Returns:
      A grain iterator of ``{"image": (B, ...), "label": (B,)}`` numpy batches.

    >>> it = train_batches(digits_task([0, 1], shots=4)["train"], 3, seed=0)
    >>> batch = next(it); batch["image"].shape, batch["label"].shape
    ((3, 8, 8, 1), (3,))
    """
    # One global stream (a new permutation every epoch), cut into host-sized batches that the hosts take in
    # turn: global batch t is the same examples in the same order whatever the number of hosts.
    dataset = grain.MapDataset.range(ENDLESS).map(_EpochShuffle(source, seed))
    if transform is not None:
        dataset = dataset.random_map(transform, seed=seed + 1)
    dataset = dataset.batch(batch_size, drop_remainder=True)[process_index::process_count]
    return iter(dataset.to_iter_dataset(read_options=_read_options()))


def _read_options() -> grain.ReadOptions:
    """A few batches read ahead by one thread per core. grain's default (16 threads, 500 elements ahead, here
    whole batches) holds gigabytes of decoded images at the shipped configs' batch sizes and, on 2 cores, halved
    the speed of the ViT-S step it fed while it filled (``benchmarks/input_pipeline.py``)."""
    threads = max(1, min(8, os.cpu_count() or 1))
    return grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * threads)


def eval_batches(
    source: Any, batch_size: int, transform: Callable[[Any], dict[str, np.ndarray]] | None = None
) -> Iterator[dict[str, np.ndarray]]:
    """Every example exactly once, in order; the last batch is padded and ``mask`` marks the real examples.

    Args:
      source: a random-access source.
      batch_size: examples per batch.
      transform: ``example -> example`` (preprocessing), applied to every example.

    Returns:
      An iterator of batches with a boolean ``mask``.

    >>> [int(batch["mask"].sum()) for batch in eval_batches(ArraySource(np.zeros((10, 2)), np.arange(10)), 4)]
    [4, 4, 2]
    """
    total = len(source)
    for start in range(0, total, batch_size):
        items = [source[i] for i in range(start, min(start + batch_size, total))]
        if transform is not None:
            items = [transform(item) for item in items]
        real = len(items)
        items += [items[-1]] * (batch_size - real)
        batch = {key: np.stack([item[key] for item in items]) for key in items[0]}
        batch["mask"] = np.arange(batch_size) < real
        yield batch


SHIFTS = ("rotate", "noise", "invert")


def shifted(source: ArraySource, kind: str, seed: int = 0) -> ArraySource:
    """An out-of-distribution copy of an image set in [0, 1]: ``rotate`` (by 25 degrees), ``noise``
    (Gaussian, std 0.25, clipped) or ``invert`` (1 - x).

    Args:
      source: images (N, H, W, C) in [0, 1] and labels.
      kind: one of ``SHIFTS``.
      seed: for the noise.

    Returns:
      The shifted set, same labels.

    >>> task = digits_task([0, 1], shots=2)
    >>> float(shifted(task["train"], "invert").images.max()) <= 1.0
    True
    """
    images = source.images
    if kind == "rotate":
        from scipy.ndimage import rotate

        images = np.clip(rotate(images, 25.0, axes=(1, 2), reshape=False, order=1), 0.0, 1.0)
    elif kind == "noise":
        noise = np.random.default_rng(seed).normal(0.0, 0.25, images.shape)
        images = np.clip(images + noise, 0.0, 1.0)
    elif kind == "invert":
        images = 1.0 - images
    else:
        raise ValueError(f"unknown shift {kind!r}; known: {', '.join(SHIFTS)}")
    return ArraySource(images.astype(source.images.dtype), source.labels)


def shuffle_labels(source: ArraySource, fraction: float, seed: int = 0) -> ArraySource:
    """A copy with ``fraction`` of the examples' labels permuted among themselves (label noise that keeps the
    class balance): 1.0 breaks every link between image and label.

    Args:
      source: images and labels.
      fraction: the share of examples whose labels are shuffled.
      seed: which examples, and their permutation.

    Returns:
      The noisy copy.

    >>> noisy = shuffle_labels(ArraySource(np.zeros((4, 1)), np.arange(4)), 1.0, seed=1)
    >>> sorted(noisy.labels.tolist())
    [0, 1, 2, 3]
    """
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(len(source))[: round(fraction * len(source))]
    labels = source.labels.copy()
    labels[chosen] = labels[rng.permutation(chosen)]
    return ArraySource(source.images, labels)


class Unlabelled(NamedTuple):
    """A view of a source without its labels: what a domain-adaptation run may read of its target domain.

    >>> sorted(Unlabelled(ArraySource(np.zeros((3, 2)), np.arange(3)))[0])
    ['image']
    """

    source: Any

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {key: value for key, value in self.source[index].items() if key != "label"}


class ZippedBatches:
    """One batch from each of several named streams per step, merged into one dict with keys ``name/key``
    (the ``unprefixed`` stream keeps its own keys); its state is every stream's state, so it checkpoints
    exactly like one stream.

    Args:
      streams: name -> an iterator with ``get_state``/``set_state`` (e.g. from :func:`train_batches`).
      unprefixed: the stream whose keys stay as they are (the labelled source of domain adaptation).

    >>> task = digits_task([0, 1], shots=4)
    >>> zipped = ZippedBatches({"source": train_batches(task["train"], 2, seed=0),
    ...                         "target": train_batches(Unlabelled(task["test"]), 2, seed=1)}, unprefixed="source")
    >>> sorted(next(zipped))
    ['image', 'label', 'target/image']
    """

    def __init__(self, streams: dict[str, Any], unprefixed: str | None = None):
        self.streams = streams
        self.unprefixed = unprefixed

    def __iter__(self) -> ZippedBatches:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = {}
        for name, stream in self.streams.items():
            prefix = "" if name == self.unprefixed else f"{name}/"
            batch.update({prefix + key: value for key, value in next(stream).items()})
        return batch

    def get_state(self) -> dict[str, Any]:
        return {name: stream.get_state() for name, stream in self.streams.items()}

    def set_state(self, state: dict[str, Any]) -> None:
        for name, stream in self.streams.items():
            stream.set_state(state[name])
