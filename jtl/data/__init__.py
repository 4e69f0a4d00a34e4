"""Data for jtl: in-memory arrays and scikit-learn's digits, TFDS through ``tfds.data_source``, image
folders, audio folders (and synthesised speech-like and music-like ones to write them), image and audio
preprocessing, and grain pipelines with checkpointable state."""

from jtl.data._arrays import (
    LABELS,
    SHIFTS,
    ArraySource,
    Unlabelled,
    ZippedBatches,
    digits_task,
    eval_batches,
    shifted,
    shuffle_labels,
    train_batches,
)
from jtl.data._audio import AudioFolderSource, AudioPreprocessing, read_audio, resample
from jtl.data._config import load_splits
from jtl.data._folder import ImageFolderSource
from jtl.data._images import ImagePreprocessing, random_resized_crop, resize_bilinear
from jtl.data._synthetic_audio import music_like, speech_like, write_audio_task
from jtl.data._text import TextPreprocessing
from jtl.data._tfds import DataError, tfds_source

__all__ = [
    "LABELS",
    "SHIFTS",
    "ArraySource",
    "AudioFolderSource",
    "AudioPreprocessing",
    "DataError",
    "ImageFolderSource",
    "ImagePreprocessing",
    "TextPreprocessing",
    "Unlabelled",
    "ZippedBatches",
    "digits_task",
    "eval_batches",
    "load_splits",
    "music_like",
    "random_resized_crop",
    "read_audio",
    "resample",
    "resize_bilinear",
    "shifted",
    "shuffle_labels",
    "speech_like",
    "tfds_source",
    "train_batches",
    "write_audio_task",
]
