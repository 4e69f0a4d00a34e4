"""What the audio families' feature extractors share: reading a checkpoint's ``preprocessor_config.json``, and
choosing the extractor it names."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def read_preprocessor_config(source: str | os.PathLike, revision: str | None = None) -> dict[str, Any]:
    """A Hugging Face checkpoint's ``preprocessor_config.json``, from a local directory or the hub.

    Args:
      source: a model directory or a hub id.
      revision: the hub revision.

    Returns:
      The parsed JSON.

    Raises:
      FileNotFoundError: when neither the directory nor the hub has the file.

    >>> import tempfile
    >>> path = tempfile.mkdtemp()
    >>> _ = Path(path, "preprocessor_config.json").write_text('{"sampling_rate": 16000}')
    >>> read_preprocessor_config(path)
    {'sampling_rate': 16000}
    """
    path = Path(source)
    if path.is_dir():
        file = path / "preprocessor_config.json"
        if not file.exists():
            raise FileNotFoundError(f"{path}: no preprocessor_config.json")
    else:
        import huggingface_hub

        try:
            file = Path(huggingface_hub.hf_hub_download(str(source), "preprocessor_config.json", revision=revision))
        except Exception as e:  # offline, 404, gated
            raise FileNotFoundError(f"{source}: no such directory, and the hub gave no preprocessor_config.json") from e
    return json.loads(file.read_text())


def load_feature_extractor(source: str | os.PathLike, revision: str | None = None, **overrides: Any) -> Any:
    """The jtl feature extractor a checkpoint's ``preprocessor_config.json`` names (``ASTFeatureExtractor`` or
    ``Wav2Vec2FeatureExtractor``, which HuBERT uses too), with its settings.

    Args:
      source: a model directory or a hub id.
      revision: the hub revision.
      **overrides: fields to change (``max_length=...``).

    Returns:
      :class:`jtl.models.ast.ASTFeatureExtractor` or :class:`jtl.models.wav2vec2.Wav2Vec2FeatureExtractor`.

    >>> import tempfile
    >>> path = tempfile.mkdtemp()
    >>> _ = Path(path, "preprocessor_config.json").write_text(
    ...     '{"feature_extractor_type": "Wav2Vec2FeatureExtractor", "sampling_rate": 8000, "do_normalize": true}')
    >>> load_feature_extractor(path, max_length=800).sampling_rate
    8000
    """
    from jtl.models.ast import ASTFeatureExtractor
    from jtl.models.wav2vec2 import Wav2Vec2FeatureExtractor

    config = read_preprocessor_config(source, revision)
    kinds = {"ASTFeatureExtractor": ASTFeatureExtractor, "Wav2Vec2FeatureExtractor": Wav2Vec2FeatureExtractor}
    kind = config.get("feature_extractor_type")
    if kind not in kinds:
        raise ValueError(f"{source}: feature_extractor_type={kind!r} is not one of {sorted(kinds)}")
    return kinds[kind].from_config(config, **overrides)
