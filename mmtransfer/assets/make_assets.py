"""Regenerate the sample assets: ``python mmtransfer/assets/make_assets.py`` (needs espeak-ng on PATH).

sample.png: a red circle and a blue square on white, 224x224, drawn with PIL.
sample.wav: espeak-ng saying "three five seven", resampled to 16 kHz mono 16-bit PCM.
Both are deterministic for a given Pillow / espeak-ng version.
"""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
from PIL import Image, ImageDraw

ASSETS = Path(__file__).resolve().parent
TEXT = "three five seven"
RATE = 16000


def make_image(path: Path) -> None:
    image = Image.new("RGB", (224, 224), "white")
    draw = ImageDraw.Draw(image)
    draw.ellipse((24, 40, 104, 120), fill=(220, 30, 30))
    draw.rectangle((124, 104, 204, 184), fill=(30, 60, 220))
    image.save(path, optimize=True)


def make_speech(path: Path) -> None:
    wav = subprocess.run(
        ["espeak-ng", "-v", "en-us", "-s", "150", "--stdout", TEXT], check=True, capture_output=True
    ).stdout
    wave, rate = sf.read(io.BytesIO(wav), dtype="float32")
    wave = AF.resample(torch.from_numpy(wave), rate, RATE).numpy()
    sf.write(path, np.clip(wave, -1.0, 1.0), RATE, subtype="PCM_16")


if __name__ == "__main__":
    make_image(ASSETS / "sample.png")
    make_speech(ASSETS / "sample.wav")
