"""Data for jtl: in-memory arrays and scikit-learn's digits, TFDS through ``tfds.data_source``, image
folders, audio folders (and synthesised speech-like and music-like ones to write them), object detection data
(COCO JSON, TFDS COCO and VOC, canvases of digits), image, audio and box-aware preprocessing, and grain pipelines
with checkpointable state."""

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
from jtl.data._canvases import CanvasSource, digit_canvases, write_coco_folder
from jtl.data._config import load_splits
from jtl.data._detection import (
    CocoSource,
    DetectionPreprocessing,
    TfdsDetectionSource,
    coco_ground_truth,
    detection_splits,
    tfds_detection_source,
)
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
    "CanvasSource",
    "CocoSource",
    "DataError",
    "DetectionPreprocessing",
    "ImageFolderSource",
    "ImagePreprocessing",
    "TextPreprocessing",
    "TfdsDetectionSource",
    "Unlabelled",
    "ZippedBatches",
    "coco_ground_truth",
    "detection_splits",
    "digit_canvases",
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
    "tfds_detection_source",
    "tfds_source",
    "train_batches",
    "write_audio_task",
    "write_coco_folder",
]
