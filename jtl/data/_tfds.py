"""TFDS datasets through ``tfds.data_source`` (ArrayRecord random access): no TensorFlow at train time."""

from __future__ import annotations

from typing import Any


class DataError(ValueError):
    """A dataset that cannot be read; the message says which and how to fix it."""


def tfds_source(name: str, split: str, data_dir: str | None = None) -> Any:
    """A random-access TFDS split (``source[i]`` is a dict of numpy values); it must already be prepared.

    Args:
      name: the TFDS name, e.g. ``cifar10`` or ``oxford_iiit_pet:4.*``.
      split: e.g. ``train`` or ``test[:10%]``.
      data_dir: where prepared datasets live (TFDS's default when None).

    Returns:
      The data source.

    Raises:
      DataError: when the split is not prepared in the ArrayRecord format, saying how to prepare it.

    >>> import tempfile
    >>> tfds_source("mnist", "train", data_dir=tempfile.mkdtemp())
    Traceback (most recent call last):
    ...
    jtl.data._tfds.DataError: TFDS dataset 'mnist' split 'train' is not prepared for random access in ...
    """
    import tensorflow_datasets as tfds

    try:
        return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # TFDS raises several types for a missing or TFRecord-only dataset
        where = data_dir or "TFDS's default data_dir (~/tensorflow_datasets)"
        raise DataError(
            f"TFDS dataset {name!r} split {split!r} is not prepared for random access in {where} ({e}). "
            f"Prepare it once on a machine with network and TensorFlow: "
            f"`tfds build {name.split(':')[0]} --file_format=array_record"
            + (f" --data_dir={data_dir}" if data_dir else "")
            + "`, then copy the data_dir here."
        ) from e
