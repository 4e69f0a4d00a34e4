"""Data for jtl: in-memory arrays and scikit-learn's digits, TFDS through ``tfds.data_source``, image
folders, image preprocessing, and grain pipelines with checkpointable state."""

from jtl.data._arrays import ArraySource, digits_task, eval_batches, train_batches
from jtl.data._folder import ImageFolderSource
from jtl.data._images import ImagePreprocessing, random_resized_crop, resize_bilinear
from jtl.data._text import TextPreprocessing
from jtl.data._tfds import DataError, tfds_source

__all__ = [
    "ArraySource",
    "DataError",
    "ImageFolderSource",
    "ImagePreprocessing",
    "TextPreprocessing",
    "digits_task",
    "eval_batches",
    "random_resized_crop",
    "resize_bilinear",
    "tfds_source",
    "train_batches",
]
