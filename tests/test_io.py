"""mmtransfer.io: images to RGB, audio to float32 mono at the target rate, errors that name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from mmtransfer.bundled import ASSETS
from mmtransfer.io import load_audio, load_image


def test_load_image_from_path_and_pil() -> None:
    image = load_image(ASSETS / "sample.png")
    assert image.mode == "RGB" and image.size == (224, 224)
    assert image.getpixel((0, 0)) == (255, 255, 255)
    assert load_image(image) is image


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "I;16"])
def test_load_image_converts_any_mode_to_rgb(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "image.tiff"
    Image.new(mode, (8, 6)).save(path)
    image = load_image(str(path))
    assert image.mode == "RGB" and image.size == (8, 6)


def test_load_image_puts_transparency_on_white() -> None:
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    image.putpixel((0, 0), (255, 0, 0, 255))
    rgb = load_image(image)
    assert rgb.getpixel((0, 0)) == (255, 0, 0) and rgb.getpixel((1, 1)) == (255, 255, 255)


def test_load_image_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(tmp_path / "missing.png")
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(ValueError, match="corrupt.png"):
        load_image(corrupt)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes((ASSETS / "sample.png").read_bytes()[:200])
    with pytest.raises(ValueError, match="truncated.png"):
        load_image(truncated)


def test_load_audio_sample() -> None:
    wave = load_audio(ASSETS / "sample.wav", 16000)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert 0.5 < len(wave) / 16000 < 3.0
    assert 0.05 < np.abs(wave).max() <= 1.0  # int16 PCM read as floats in [-1, 1]


def test_load_audio_stereo_8k_file_to_mono_16k(tmp_path: Path) -> None:
    t = np.arange(8000) / 8000
    left, right = 0.5 * np.sin(2 * np.pi * 440 * t), 0.1 * np.sin(2 * np.pi * 440 * t)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 8000, subtype="PCM_16")
    wave = load_audio(path, 16000)
    assert wave.dtype == np.float32 and wave.shape == (16000,)
    # mono = channel mean: a 0.3-amplitude 440 Hz tone, still at 440 Hz after resampling
    assert np.abs(wave[1000:-1000]).max() == pytest.approx(0.3, abs=0.01)
    spectrum = np.abs(np.fft.rfft(wave))
    assert np.argmax(spectrum) == pytest.approx(440, abs=2)  # 1 s of audio: bin = Hz


def test_load_audio_arrays_and_tensors() -> None:
    wave = np.random.default_rng(0).standard_normal(1600).astype(np.float32)
    assert np.array_equal(load_audio(wave, 16000), wave)  # no rate given: already at the target
    assert np.array_equal(load_audio(torch.from_numpy(wave), 16000, sample_rate=16000), wave)
    assert load_audio(wave.astype(np.float64), 16000, sample_rate=8000).shape == (3200,)
    stereo = torch.stack([torch.from_numpy(wave), torch.zeros(1600)])  # [C, T], torchaudio layout
    np.testing.assert_allclose(load_audio(stereo, 16000), wave / 2)
    np.testing.assert_allclose(load_audio(stereo.T.numpy(), 16000), wave / 2)  # [T, C], soundfile layout


def test_load_audio_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        load_audio(tmp_path / "missing.wav", 16000)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot audio at all")
    with pytest.raises(ValueError, match="corrupt.wav"):
        load_audio(str(corrupt), 16000)
    with pytest.raises(ValueError, match="empty"):
        load_audio(np.zeros(0, dtype=np.float32), 16000)
