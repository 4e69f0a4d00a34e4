"""Feature-based transfer: a pretrained backbone's features (its head removed) extracted once, linear classifiers
trained on them, and transferability scores (LogME, LEEP, NCE, H-score) that rate a source before fine-tuning."""

from jtl.features._extract import extract_features, feature_fn, features_and_logits
from jtl.features._linear import LinearClassifier, fit_linear, fit_linear_search, linear_epochs
from jtl.features._transferability import h_score, leep, logme, nce

__all__ = [
    "LinearClassifier",
    "extract_features",
    "feature_fn",
    "features_and_logits",
    "fit_linear",
    "fit_linear_search",
    "h_score",
    "leep",
    "linear_epochs",
    "logme",
    "nce",
]
