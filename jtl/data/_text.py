"""Text classification inputs through a ``transformers`` tokenizer: token ids, attention mask, label."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np


class TextPreprocessing(NamedTuple):
    """Tokenises ``example[text_key]`` to ``max_length`` (padded, truncated) for BERT-family models."""

    tokenizer: Any
    max_length: int = 128
    text_key: str = "sentence"

    def eval(self, example: dict[str, Any]) -> dict[str, np.ndarray]:
        """The transform (tokenisation is deterministic, so train and eval share it)."""
        text = example[self.text_key]
        if isinstance(text, bytes | np.bytes_):
            text = text.decode("utf-8")
        encoded = self.tokenizer(
            str(text), max_length=self.max_length, padding="max_length", truncation=True, return_tensors="np"
        )
        out = {
            "input_ids": encoded["input_ids"][0].astype(np.int32),
            "attention_mask": encoded["attention_mask"][0].astype(np.int32),
        }
        # An unlabelled example (a domain-adaptation target) stays without a label.
        return {**out, "label": np.int32(example["label"])} if "label" in example else out

    def train(self, example: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
        """The training transform (for grain's ``random_map``; no augmentation)."""
        del rng
        return self.eval(example)
