"""Data for jtl: in-memory arrays and scikit-learn's digits, grain pipelines with checkpointable state."""

from jtl.data._arrays import ArraySource, digits_task, eval_batches, train_batches

__all__ = ["ArraySource", "digits_task", "eval_batches", "train_batches"]
