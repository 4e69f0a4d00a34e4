"""Audio folders, ``root/<class name>/*.wav|*.flac``, and the transform that makes a clip an audio model's input:
resampling to the model's rate, then its feature extractor (fixed length, with a mask where the model takes one)."""

from __future__ import annotations

from math import gcd
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from jtl.data._tfds import DataError

AUDIO_EXTENSIONS = (".wav", ".flac")


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """A mono float32 waveform in [-1, 1] and its sampling rate, from a WAV (scipy) or FLAC (soundfile) file.

    Integer PCM is scaled by its type's range (8-bit is unsigned, centred on 128); channels are averaged.

    Args:
      path: the file.

    Returns:
      ``(waveform (samples,), sampling rate)``.

    Raises:
      DataError: for an unreadable file, or a FLAC file without the ``soundfile`` package.

    >>> import tempfile, scipy.io.wavfile
    >>> path = Path(tempfile.mkdtemp()) / "a.wav"
    >>> scipy.io.wavfile.write(path, 8000, np.array([[0, 16384], [-32768, 0]], np.int16))
    >>> waveform, rate = read_audio(path)
    >>> waveform.tolist(), rate
    ([0.25, -0.5], 8000)
    """
    path = Path(path)
    if path.suffix.lower() == ".flac":
        try:
            import soundfile
        except ImportError as e:
            raise DataError(f"{path}: reading FLAC needs the soundfile package (pip install soundfile)") from e
        try:
            data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        except RuntimeError as e:
            raise DataError(f"{path}: not a readable FLAC file ({e})") from e
        return data.mean(axis=1).astype(np.float32), int(rate)
    import scipy.io.wavfile

    try:
        rate, data = scipy.io.wavfile.read(path)
    except (ValueError, OSError) as e:
        raise DataError(f"{path}: not a readable WAV file ({e})") from e
    if data.dtype == np.uint8:
        data = (data.astype(np.float32) - 128.0) / 128.0
    elif np.issubdtype(data.dtype, np.integer):
        data = data.astype(np.float32) / float(-np.iinfo(data.dtype).min)
    data = np.asarray(data, np.float32)
    return (data.mean(axis=1) if data.ndim == 2 else data).astype(np.float32), int(rate)


def resample(waveform: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Resamples with ``scipy.signal.resample_poly`` (a polyphase low-pass filter) by ``target / rate``.

    Args:
      waveform: (samples,).
      rate: its rate.
      target: the rate wanted.

    Returns:
      The float32 waveform at ``target``.

    >>> resample(np.ones(8000, np.float32), 8000, 16000).shape
    (16000,)
    """
    if rate == target:
        return np.asarray(waveform, np.float32)
    from scipy.signal import resample_poly

    divisor = gcd(int(rate), int(target))
    return resample_poly(waveform, target // divisor, rate // divisor).astype(np.float32)


class AudioFolderSource:
    """A random-access source over ``root/<class>/<clip>.wav|.flac``; classes are the sorted sub-directory names.
    Examples are ``{"waveform", "sampling_rate", "label"}``.

    >>> import tempfile, pathlib, scipy.io.wavfile
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for name in ("dog", "cat"):
    ...     (root / name).mkdir()
    ...     scipy.io.wavfile.write(root / name / "a.wav", 8000, np.zeros(80, np.float32))
    >>> source = AudioFolderSource(root)
    >>> source.classes, len(source), source[1]["waveform"].shape, int(source[1]["label"])
    (['cat', 'dog'], 2, (80,), 1)
    """

    def __init__(self, root: str | Path, classes: list[str] | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"audio folder {self.root}: no such directory")
        found = sorted(d.name for d in self.root.iterdir() if d.is_dir())
        self.classes = list(classes) if classes is not None else found
        missing = sorted(set(self.classes) - set(found))
        if missing or not self.classes:
            raise DataError(f"audio folder {self.root}: class directories {missing or '(none)'} not found")
        self.files: list[tuple[Path, int]] = []
        for label, name in enumerate(self.classes):
            clips = sorted(p for p in (self.root / name).iterdir() if p.suffix.lower() in AUDIO_EXTENSIONS)
            if not clips:
                raise DataError(f"audio folder {self.root / name}: no clips ({', '.join(AUDIO_EXTENSIONS)})")
            self.files.extend((path, label) for path in clips)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        path, label = self.files[index]
        waveform, rate = read_audio(path)
        return {"waveform": waveform, "sampling_rate": np.int32(rate), "label": np.int32(label)}


class AudioPreprocessing(NamedTuple):
    """Resamples ``example["waveform"]`` (at ``example["sampling_rate"]``) to the feature extractor's rate and
    applies it: ``{"audio", ["attention_mask"], "label"}`` of a fixed shape.

    ``features`` is a jtl feature extractor (:func:`jtl.models.load_feature_extractor`, or a model's
    ``default_feature_extractor()``) with a fixed length: AST's ``max_length`` frames, Wav2Vec2's ``max_length``
    samples.
    """

    features: Any

    def eval(self, example: dict[str, Any]) -> dict[str, np.ndarray]:
        """The transform (deterministic, so train and eval share it)."""
        rate = int(example.get("sampling_rate", self.features.sampling_rate))
        waveform = resample(np.asarray(example["waveform"], np.float32), rate, self.features.sampling_rate)
        out = {name: x[0] for name, x in self.features([waveform]).items()}
        return {**out, "label": np.int32(example["label"])} if "label" in example else out

    def train(self, example: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
        """The training transform (for grain's ``random_map``; no augmentation)."""
        del rng
        return self.eval(example)
