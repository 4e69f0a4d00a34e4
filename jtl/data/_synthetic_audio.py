"""Synthesised audio tasks for offline audio transfer experiments: a speech-like source (ten English vowels, a
formant synthesiser with speaker variation) and a music-like target (six musical figures, held notes to scales and
trills, with random instruments, keys and tempos), written as ``root/{train,test}/<class>/*.wav`` folders that
:class:`jtl.data.AudioFolderSource` (``config.data.source = "folder"``) reads.

Neither is real speech or music; they keep what matters for the transfer question: the speech-like classes are
told apart by the spectral envelope (formants) whatever the pitch, the music-like classes by how pitches move in
time whatever the key, the tempo and the timbre.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

RATE = 16000

# Formants (F1, F2, F3 in Hz) of the ten American English vowels of Peterson & Barney (1952), men's averages,
# named by the words they were recorded in (h_d).
VOWELS: dict[str, tuple[float, float, float]] = {
    "heed": (270, 2290, 3010),
    "hid": (390, 1990, 2550),
    "head": (530, 1840, 2480),
    "had": (660, 1720, 2410),
    "hud": (640, 1190, 2390),
    "hod": (730, 1090, 2440),
    "hawed": (570, 840, 2410),
    "hood": (440, 1020, 2240),
    "whod": (300, 870, 2240),
    "heard": (490, 1350, 1690),
}
# Musical figures: what is played, whatever the instrument, the key and the tempo.
FIGURES = ("held", "repeated", "chord", "arpeggio", "scale", "trill")
_TRIADS = ((0, 4, 7), (0, 3, 7))  # major, minor
_MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11, 12)
TASKS = ("speech", "music")


def _resonator(x: np.ndarray, hertz: float, bandwidth: float, rate: int) -> np.ndarray:
    """A two-pole resonance at ``hertz`` with unit gain at DC (Klatt's formant filter)."""
    from scipy import signal

    r = np.exp(-np.pi * bandwidth / rate)
    a1, a2 = -2 * r * np.cos(2 * np.pi * hertz / rate), r * r
    return signal.lfilter([1 + a1 + a2], [1, a1, a2], x)


def speech_like(vowel: str, rng: np.random.Generator, seconds: float = 1.0, rate: int = RATE) -> np.ndarray:
    """One speech-like clip: a vowel from a glottal pulse train through a cascade of three formant resonators.

    The speaker varies: the vocal tract length scales every formant by 0.85-1.25 (men to children), the pitch
    (about 60-235 Hz, higher for shorter tracts) falls slowly with a small vibrato and jitter, each formant is
    off its average by up to 6%, and the vowel starts at a random time and lasts 0.35-0.7 s, over a little
    breath noise.

    Args:
      vowel: a key of :data:`VOWELS`.
      rng: the random generator (the speaker, the timing, the noise).
      seconds: the clip's length.
      rate: the sampling rate.

    Returns:
      The float32 waveform (``rate * seconds`` samples), peak 0.5.

    >>> clip = speech_like("hod", np.random.default_rng(0))
    >>> clip.shape, clip.dtype, float(np.abs(clip).max())
    ((16000,), dtype('float32'), 0.5)
    """
    from scipy import signal

    n = int(rate * seconds)
    t = np.arange(n) / rate
    scale = rng.uniform(0.85, 1.25)  # shorter vocal tracts: higher formants and higher voices
    f0 = rng.uniform(85, 150) * scale**2 * (1 - 0.1 * t / seconds)
    f0 = f0 * (1 + 0.02 * np.sin(2 * np.pi * rng.uniform(4, 6) * t)) * (1 + 0.005 * rng.standard_normal(n))
    # The glottal source: a falling sawtooth (harmonics at -6 dB/octave), smoothed to about -12 dB/octave.
    buzz = signal.sawtooth(2 * np.pi * np.cumsum(f0) / rate + rng.uniform(0, 2 * np.pi), width=0.0)
    buzz = signal.lfilter([1 - 0.9], [1, -0.9], buzz) * 10
    out = buzz + 0.3 * rng.standard_normal(n)  # aspiration
    for hertz, bandwidth in zip(VOWELS[vowel], (60, 90, 150), strict=True):
        out = _resonator(out, hertz * scale * rng.uniform(0.94, 1.06), bandwidth, rate)
    start = rng.uniform(0.0, max(seconds - 0.75, 0.0) + 0.05)
    length = rng.uniform(0.35, 0.7)
    envelope = np.clip(np.minimum((t - start) / 0.04, (start + length - t) / 0.06), 0, 1)
    out = out * envelope
    out = out / (np.abs(out).max() + 1e-9) + 0.01 * rng.standard_normal(n)
    return (0.5 * out / np.abs(out).max()).astype(np.float32)


def _notes(figure: str, rng: np.random.Generator, seconds: float) -> list[tuple[float, float, tuple[float, ...]]]:
    """The figure's notes: (onset, length, semitones above the root) triples."""
    start = rng.uniform(0.0, 0.15 * seconds)
    if figure == "held":
        return [(start, rng.uniform(0.6, 0.85) * seconds, (0,))]
    if figure in ("repeated", "chord"):
        beat = rng.uniform(0.12, 0.3) if figure == "repeated" else rng.uniform(0.2, 0.4)
        pitches = (0,) if figure == "repeated" else _TRIADS[rng.integers(0, 2)]
        return [(onset, 0.8 * beat, pitches) for onset in np.arange(start, seconds, beat)]
    step = rng.uniform(0.05, 0.08) if figure == "trill" else rng.uniform(0.08, 0.14)
    if figure == "trill":
        sequence = (0, int(rng.integers(1, 3)))
    elif figure == "arpeggio":
        sequence = _TRIADS[rng.integers(0, 2)] + (12,)
    else:
        sequence = _MAJOR_SCALE
    if figure != "trill" and rng.random() < 0.5:
        sequence = sequence[::-1]  # descending
    onsets = np.arange(start, seconds, step)
    return [(onset, step, (sequence[i % len(sequence)],)) for i, onset in enumerate(onsets)]


def music_like(figure: str, rng: np.random.Generator, seconds: float = 1.0, rate: int = RATE) -> np.ndarray:
    """One music-like clip: a musical figure (:data:`FIGURES`) played by a random instrument in a random key
    and tempo.

    The figures: ``held`` (one long note), ``repeated`` (one note struck in a rhythm), ``chord`` (a major or
    minor triad struck in a rhythm), ``arpeggio`` (a triad's notes one after another, up or down), ``scale``
    (a major scale, up or down), ``trill`` (two notes a semitone or a tone apart, alternating fast). The root
    is any semitone from A2 to G#4 (110-415 Hz); the instrument is 2-8 harmonics with a random roll-off, a
    random attack and a random decay (plucked to sustained); tempos vary by about two.

    Args:
      figure: one of :data:`FIGURES`.
      rng: the random generator (key, tempo, instrument, noise).
      seconds: the clip's length.
      rate: the sampling rate.

    Returns:
      The float32 waveform (``rate * seconds`` samples), peak 0.5.

    >>> clip = music_like("arpeggio", np.random.default_rng(0))
    >>> clip.shape, clip.dtype, float(np.abs(clip).max())
    ((16000,), dtype('float32'), 0.5)
    """
    if figure not in FIGURES:
        raise ValueError(f"figure={figure!r}: expected one of {FIGURES}")
    n = int(rate * seconds)
    t = np.arange(n) / rate
    root = 110 * 2 ** (rng.integers(0, 24) / 12)
    harmonics = rng.uniform(0.2, 0.8) ** np.arange(rng.integers(2, 9))  # the instrument's brightness
    attack, decay = rng.uniform(0.003, 0.03), rng.uniform(0.5, 12.0)  # its onset and how fast notes fade
    out = np.zeros(n)
    for onset, length, pitches in _notes(figure, rng, seconds):
        since = t - onset
        envelope = np.clip(since / attack, 0, 1) * np.exp(-decay * np.maximum(since, 0))
        envelope *= np.clip((length - since) / 0.02 + 1, 0, 1)  # a 20 ms release after the note's length
        live = envelope > 1e-4
        for semitones in pitches:
            hertz = root * 2 ** (semitones / 12) * (1 + 0.002 * rng.standard_normal())  # slightly out of tune
            tone = sum(
                a * np.sin(2 * np.pi * hertz * k * since[live])
                for k, a in enumerate(harmonics, 1)
                if hertz * k < rate / 2
            )
            out[live] += tone * envelope[live]
    out = out / (np.abs(out).max() + 1e-9) + 0.01 * rng.standard_normal(n)
    return (0.5 * out / np.abs(out).max()).astype(np.float32)


def _task(task: str) -> tuple[dict, Callable[..., np.ndarray]]:
    if task == "speech":
        return VOWELS, speech_like
    if task == "music":
        return dict.fromkeys(FIGURES), music_like
    raise ValueError(f"task={task!r}: expected one of {TASKS}")


def write_audio_task(
    root: str | Path,
    task: str,
    per_class: tuple[int, int] = (20, 10),
    seed: int = 0,
    seconds: float = 1.0,
    rate: int = RATE,
) -> Path:
    """Writes a synthesised task as ``root/{train,test}/<class>/<i>.wav`` (16-bit PCM).

    Args:
      root: the directory to write (existing clips of the same names are overwritten).
      task: ``speech`` (the ten :data:`VOWELS`, :func:`speech_like`) or ``music`` (the six :data:`FIGURES`,
        :func:`music_like`).
      per_class: clips per class in the train and the test split.
      seed: the random seed; the same seed writes the same clips.
      seconds: each clip's length.
      rate: the sampling rate.

    Returns:
      ``root``, as a Path.

    >>> import tempfile
    >>> from jtl.data import AudioFolderSource
    >>> root = write_audio_task(tempfile.mkdtemp(), "music", per_class=(2, 1), seconds=0.25)
    >>> train = AudioFolderSource(root / "train")
    >>> train.classes, len(train), train[0]["waveform"].shape
    (['arpeggio', 'chord', 'held', 'repeated', 'scale', 'trill'], 12, (4000,))
    """
    import scipy.io.wavfile

    classes, make = _task(task)
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, count in zip(("train", "test"), per_class, strict=True):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                clip = make(name, rng, seconds=seconds, rate=rate)
                scipy.io.wavfile.write(folder / f"{i}.wav", rate, np.round(clip * 32767).astype(np.int16))
    return root
