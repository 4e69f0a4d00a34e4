"""Audio folders: WAV decoding (PCM types, channels), resampling, FLAC, and the transform that gives a model's
fixed-shape input and mask."""

import numpy as np
import pytest
import scipy.io.wavfile

from jtl.data import AudioFolderSource, AudioPreprocessing, DataError, read_audio, resample
from jtl.models.ast import ASTFeatureExtractor
from jtl.models.wav2vec2 import Wav2Vec2FeatureExtractor


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        (np.array([-32768, 16384], np.int16), [-1.0, 0.5]),
        (np.array([-(2**31), 2**30], np.int32), [-1.0, 0.5]),
        (np.array([0, 192], np.uint8), [-1.0, 0.5]),
        (np.array([-1.0, 0.5], np.float32), [-1.0, 0.5]),
        (np.array([[-1.0, 1.0], [0.5, 0.5]], np.float32), [0.0, 0.5]),  # stereo: channels averaged
    ],
)
def test_wav_files_decode_to_mono_float(tmp_path, samples, expected):
    scipy.io.wavfile.write(tmp_path / "clip.wav", 22050, samples)
    waveform, rate = read_audio(tmp_path / "clip.wav")
    assert rate == 22050 and waveform.dtype == np.float32
    np.testing.assert_allclose(waveform, expected)


def test_resampling_keeps_a_tone_and_the_duration():
    t = np.arange(8000) / 8000
    up = resample(np.sin(2 * np.pi * 440 * t).astype(np.float32), 8000, 16000)
    assert up.shape == (16000,)
    spectrum = np.abs(np.fft.rfft(up))
    assert np.argmax(spectrum) == 440  # 1 s at 16 kHz: bins are 1 Hz apart


def test_flac_is_read_with_soundfile_or_refused_clearly(tmp_path):
    path = tmp_path / "clip.flac"
    try:
        import soundfile
    except ImportError:
        path.write_bytes(b"fLaC")
        with pytest.raises(DataError, match="soundfile"):
            read_audio(path)
        return
    soundfile.write(str(path), np.array([0.0, 0.5, -0.5], np.float32), 16000)
    waveform, rate = read_audio(path)
    assert rate == 16000
    np.testing.assert_allclose(waveform, [0.0, 0.5, -0.5], atol=1e-4)


def test_folder_clips_become_fixed_size_model_inputs(tmp_path):
    rng = np.random.default_rng(0)
    for name, count in (("yes", 2), ("no", 1)):
        (tmp_path / name).mkdir()
        for i in range(count):
            clip = (rng.standard_normal(4000 + 1000 * i) * 8000).astype(np.int16)
            scipy.io.wavfile.write(tmp_path / name / f"{i}.wav", 8000, clip)
    (tmp_path / "no" / "notes.txt").write_text("not a clip")
    source = AudioFolderSource(tmp_path)
    assert source.classes == ["no", "yes"] and len(source) == 3
    assert source[2]["waveform"].shape == (5000,) and int(source[2]["sampling_rate"]) == 8000

    # Wav2Vec2 with a mask: 5000 samples at 8 kHz -> 10000 at 16 kHz, cropped to 9000; 4000 -> 8000, padded.
    wav2vec2 = AudioPreprocessing(Wav2Vec2FeatureExtractor(return_attention_mask=True, max_length=9000))
    short, long = wav2vec2.eval(source[1]), wav2vec2.train(source[2], np.random.default_rng(0))
    assert short["audio"].shape == long["audio"].shape == (9000,) and int(short["label"]) == 1
    assert short["attention_mask"].sum() == 8000 and long["attention_mask"].sum() == 9000
    assert abs(short["audio"][:8000].mean()) < 1e-5 and np.all(short["audio"][8000:] == 0)

    ast = AudioPreprocessing(ASTFeatureExtractor(num_mel_bins=16, max_length=50))
    example = ast.eval(source[0])
    assert example["audio"].shape == (50, 16) and "attention_mask" not in example

    with pytest.raises(DataError, match="not found"):
        AudioFolderSource(tmp_path, ["yes", "maybe"])
