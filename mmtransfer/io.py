"""Loading raw images and audio with clear errors that name the offending file."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np
import soundfile as sf
from PIL import Image, UnidentifiedImageError

from mmtransfer.errors import InputError, MissingFileError

if TYPE_CHECKING:
    import torch

PathLike = str | os.PathLike


def _existing_file(path: PathLike, kind: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingFileError(f"{kind} file not found: {path}")
    return path


def load_image(item: PathLike | Image.Image) -> Image.Image:
    """Open an image file (or take a PIL image) and return it in RGB mode.

    Transparent pixels are composited onto white rather than dropped to black.
    """
    if isinstance(item, Image.Image):
        return _rgb(item)
    path = _existing_file(item, "image")
    return decode_image(path, str(path))


def decode_image(source: PathLike | IO[bytes], name: str) -> Image.Image:
    """Decode an image file or in-memory file now (so truncated ones fail here, not later in a transform) -> RGB.
    InputError naming ``name``, with a message that does not depend on the Python object (skips compare equal)."""
    try:
        with warnings.catch_warnings():  # over MAX_IMAGE_PIXELS PIL only warns (up to twice that): refuse
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(source)
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise InputError(
            f"image file {name} is too large to decode ({err}); raise PIL.Image.MAX_IMAGE_PIXELS if you trust it"
        ) from None
    except UnidentifiedImageError:  # PIL's message holds the repr of an in-memory file
        raise InputError(f"could not read image file {name}: cannot identify image file") from None
    except (OSError, SyntaxError) as err:
        raise InputError(f"could not read image file {name}: {err}") from err
    return _rgb(image)


def _rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if "A" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _array_to_mono(wave: np.ndarray) -> np.ndarray:
    """[T], [C, T] or [T, C] (channels = the shorter axis) -> [T]."""
    if wave.ndim == 1:
        return wave
    if wave.ndim != 2:
        raise InputError(f"audio array must be 1-D or 2-D, got shape {wave.shape}")
    return wave.mean(axis=0 if wave.shape[0] <= wave.shape[1] else 1)


def _libsndfile_reason(err: Exception) -> str:
    """libsndfile's own reason (soundfile's message names an in-memory file by its repr, an address)."""
    return getattr(err, "error_string", None) or str(err)


def read_audio(source: PathLike | bytes, name: str) -> tuple[np.ndarray, int]:
    """Decode an audio file, or a file's bytes, with libsndfile -> (float32 mono samples [T], their rate).
    The one audio decoder of files, shards, dataset cells and the server. InputError naming ``name`` with
    libsndfile's reason."""
    try:
        frames, rate = sf.read(io.BytesIO(source) if isinstance(source, bytes) else source, dtype="float32",
                               always_2d=True)  # [T, C]
    except (RuntimeError, TypeError, ValueError) as err:  # soundfile's LibsndfileError is a RuntimeError
        raise InputError(f"could not read audio file {name}: {_libsndfile_reason(err)}") from None
    return frames.mean(axis=1), rate


def audio_seconds(source: PathLike | bytes, name: str) -> float:
    """An audio file's (or its bytes') duration from its header, without decoding; InputError naming ``name``."""
    try:
        info = sf.info(io.BytesIO(source) if isinstance(source, bytes) else source)
    except (RuntimeError, TypeError, ValueError) as err:
        raise InputError(f"cannot read audio file {name}: {_libsndfile_reason(err)}") from None
    return info.frames / info.samplerate


def load_audio(
    item: PathLike | np.ndarray | torch.Tensor, target_rate: int, sample_rate: int | None = None
) -> np.ndarray:
    """Read a file or take an array/tensor and return float32 mono audio [T] at ``target_rate``.

    Files carry their own rate (``sample_rate`` is ignored for them); integer PCM is read as floats
    in [-1, 1]. An array or tensor is assumed to be at ``target_rate`` when ``sample_rate`` is None.
    """
    if not isinstance(item, (str, os.PathLike)):  # an array, or a tensor (torch itself is imported where needed)
        array = item.detach().cpu().float().numpy() if hasattr(item, "detach") else item
        wave = _array_to_mono(np.asarray(array, dtype=np.float32))
        rate = target_rate if sample_rate is None else sample_rate
        name = f"array of shape {tuple(array.shape)}"
    else:
        path = _existing_file(item, "audio")
        (wave, rate), name = read_audio(path, str(path)), str(path)
    if wave.size == 0:
        raise InputError(f"audio is empty: {name}")
    if not np.isfinite(wave).all():  # float WAV/FLAC can hold NaN or inf; they would poison a whole batch
        raise InputError(f"audio has NaN or infinite samples: {name}")
    if rate != target_rate:
        import torch
        import torchaudio.functional as AF

        wave = AF.resample(torch.from_numpy(np.ascontiguousarray(wave)), rate, target_rate).numpy()
    return np.ascontiguousarray(wave, dtype=np.float32)
