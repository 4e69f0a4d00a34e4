"""A dataset config (``config.data``, ``config.target``, a task's ``data``) -> its train and test sources and the
transforms that make their examples model-ready."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ml_collections

from jtl.config import ConfigError
from jtl.data._arrays import digits_task, shifted, shuffle_labels
from jtl.data._audio import AudioFolderSource, AudioPreprocessing
from jtl.data._detection import detection_splits
from jtl.data._folder import ImageFolderSource
from jtl.data._images import ImagePreprocessing
from jtl.data._text import TextPreprocessing
from jtl.data._tfds import tfds_source


def _preprocessing_stats(data: ml_collections.ConfigDict, pretrained: str) -> tuple[tuple, tuple]:
    """Normalisation from the pretrained model's ``preprocessor_config.json`` if it has one, else the config's."""
    processor = Path(pretrained or "-") / "preprocessor_config.json"
    if processor.is_file():
        stats = json.loads(processor.read_text())
        if "image_mean" in stats and "image_std" in stats:
            return tuple(stats["image_mean"]), tuple(stats["image_std"])
    return tuple(data.mean), tuple(data.std)


def _audio_features(pretrained: str, default: Any) -> Any:
    """The pretrained checkpoint's feature extractor at the model's input length, else the model's own."""
    if default is None:
        raise ConfigError("audio data needs the model's feature extractor (jtl.train passes it)")
    if pretrained:
        from jtl.models import load_feature_extractor

        try:
            return load_feature_extractor(pretrained, max_length=default.max_length)
        except FileNotFoundError:
            pass  # a checkpoint without preprocessor_config.json: the model's defaults
    return default


def load_splits(
    data: ml_collections.ConfigDict,
    input_kind: str = "image",
    image_size: int | tuple[int, int] = 224,
    pretrained: str = "",
    audio_features: Any = None,
) -> dict[str, Any]:
    """The train and test sources of one dataset config, and their transforms.

    Args:
      data: a dataset config (:func:`jtl.config.data_config`).
      input_kind: the model's input, ``image``, ``text`` or ``audio`` (:func:`jtl.models.input_kind`).
      image_size: the model's input resolution (images; an int is square).
      pretrained: the pretrained source, whose tokenizer (text), normalisation or audio feature extractor
        (``preprocessor_config.json``) the transforms use.
      audio_features: audio: the model's own feature extractor (its ``default_feature_extractor()``), which
        fixes the input length; a pretrained source's ``preprocessor_config.json`` replaces its other settings.

    Returns:
      ``{"train", "test", ["ood"], "train_transform", "eval_transform"}``; the transforms are None where the
      source is already model-ready (digits). Detection data (``data.max_boxes > 0``):
      :func:`jtl.data.detection_splits`.

    >>> from jtl.config import data_config
    >>> config = data_config()
    >>> config.classes = (0, 1)
    >>> splits = load_splits(config)
    >>> len(splits["train"]) > 0, splits["train_transform"]
    (True, None)
    """
    if data.max_boxes > 0:
        mean, std = _preprocessing_stats(data, pretrained)
        return detection_splits(data, image_size, mean, std)
    digits_only = data.ood_shift or data.label_noise or data.shift or data.half >= 0 or data.labels != "class"
    if digits_only and data.source != "digits":
        raise ConfigError(
            "data.ood_shift, data.label_noise, data.shift, data.half and data.labels apply to data.source='digits' "
            f"only, not {data.source!r}"
        )
    if data.source == "digits":
        splits = digits_task(
            data.classes,
            shots=data.shots or None,
            seed=data.split_seed,
            half=data.half if data.half >= 0 else None,
            labels=data.labels,
        )
        if data.label_noise:
            splits["train"] = shuffle_labels(splits["train"], data.label_noise, data.split_seed)
        for index, kind in enumerate(k.strip() for k in data.shift.split(",") if k.strip()):
            for offset, split in enumerate(("train", "test")):
                splits[split] = shifted(splits[split], kind, seed=data.split_seed + 2 * index + offset)
        if data.ood_shift:
            splits["ood"] = shifted(splits["test"], data.ood_shift, seed=data.split_seed)
        return {**splits, "train_transform": None, "eval_transform": None}
    if input_kind == "text":
        # Reading a pretrained source's tokenizer is the weights package's job (hub ids, local directories).
        from jtl.weights import load_tokenizer

        tokenizer = load_tokenizer(data.tokenizer or pretrained)
        preprocessing = TextPreprocessing(tokenizer, data.max_length, data.text_key)
    elif input_kind == "audio":
        preprocessing = AudioPreprocessing(_audio_features(pretrained, audio_features))
    else:
        mean, std = _preprocessing_stats(data, pretrained)
        preprocessing = ImagePreprocessing(image_size, mean, std, crop=data.crop, flip=data.flip)
    transforms = {"train_transform": preprocessing.train, "eval_transform": preprocessing.eval}
    if data.source == "tfds":
        if input_kind == "audio":
            raise ConfigError("audio models read data.source='folder' (root/<class>/*.wav|*.flac), not 'tfds'")
        data_dir = data.data_dir or None
        return {
            "train": tfds_source(data.name, data.train_split, data_dir),
            "test": tfds_source(data.name, data.test_split, data_dir),
            **transforms,
        }
    if data.source == "folder":
        if not data.train_dir or not data.test_dir:
            raise ConfigError("data.source='folder' needs data.train_dir and data.test_dir")
        folder = AudioFolderSource if input_kind == "audio" else ImageFolderSource
        train = folder(data.train_dir)
        # The test split uses the training classes, in the same order, so labels agree.
        return {"train": train, "test": folder(data.test_dir, train.classes), **transforms}
    raise ConfigError(f"data.source={data.source!r} is not supported; known: digits, tfds, folder")
