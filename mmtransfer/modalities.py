"""The modality table: one ``Modality`` per kind of media part, read by every other module.

A media part ``{"type": name, name: value}`` goes through the encoder and projector of ``encoder`` (the
``<encoder>_encoder`` / ``<encoder>_projector`` config fields) and becomes ``count`` prefixes, each
standing at one ``<encoder>`` placeholder. Adding a modality that an encoder kind serves is one entry: here for
the built-ins (video is the image encoder over ``video_frames`` sampled frames, each frame its own prefix, in
order), or ``register_modality`` from user code (a depth map or a spectrogram image through the image encoder).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from mmtransfer.errors import InputError
from mmtransfer.io import audio_seconds, decode_image, load_audio, load_image, read_audio

# encoder kind -> the placeholder token that stands for one of its prefixes
PLACEHOLDERS = {"image": "<image>", "audio": "<audio>"}
ENCODER_KINDS = tuple(PLACEHOLDERS)


def media_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """A batch's model inputs per encoder kind (``image=..., audio=...``; None where the batch has none)."""
    return {kind: batch.get(kind) for kind in ENCODER_KINDS}


@dataclass(frozen=True)
class Modality:
    """``load(part, sample_rate, frames) -> raw items`` for the encoder (PIL images, float32 audio [T]),
    one per prefix; ``count(frames)`` how many prefixes a part becomes; ``blank(like, sample_rate)`` one neutral
    raw item: a black image, silence, of ``like``'s size or length (a raw item of this kind) or a default one
    without it. Blanks measure the media gain (``mmtransfer.media_gain``) and, for the encoder's own kinds, give
    the pass that keeps every rank running the same modules.

    ``from_bytes(data, name, sample_rate) -> raw item`` decodes encoded bytes held in memory (a shard member, a
    dataset cell); None: this medium comes from files only. ``seconds(path or bytes, name)`` reads a duration from
    the header without decoding, for media with a sample rate (``timed``: audio): readers skip clips over
    ``max_audio_seconds`` and bucket by it, and datasets need the encoder's sample rate to decode them."""

    name: str
    encoder: str
    load: Callable[[dict[str, Any], int | None, int], list[Any]]
    blank: Callable[[Any, int | None], Any]
    count: Callable[[int], int] = lambda frames: 1
    from_bytes: Callable[[bytes, str, int | None], Any] | None = None
    seconds: Callable[[Any, str], float] | None = None

    @property
    def timed(self) -> bool:
        """Whether this medium has a duration and a sample rate (audio)."""
        return self.seconds is not None


def _audio(part: dict[str, Any], sample_rate: int | None, frames: int) -> list[Any]:
    if sample_rate is None:
        raise InputError("an audio part, but no audio encoder (sample rate) to read it for")
    return [load_audio(part["audio"], sample_rate, part.get("sample_rate"))]


def _video(part: dict[str, Any], sample_rate: int | None, frames: int) -> list[Any]:
    from mmtransfer.video import load_video  # PyAV is optional

    return load_video(part["video"], frames)


def _image_bytes(data: bytes, name: str, sample_rate: int | None) -> Image.Image:
    return decode_image(io.BytesIO(data), name)


def _audio_bytes(data: bytes, name: str, sample_rate: int | None) -> np.ndarray:
    wave, rate = read_audio(data, name)
    return load_audio(wave, sample_rate, rate)


def _black(like: Image.Image | None, rate: int | None) -> Image.Image:
    """A black RGB image of ``like``'s size (32 x 32 without it)."""
    return Image.new("RGB", like.size if like is not None else (32, 32))


def _silence(like: np.ndarray | None, rate: int | None) -> np.ndarray:
    """Silence (float32 zeros) as long as ``like``, or one second at ``rate`` without it."""
    return np.zeros(len(like) if like is not None else rate or 16000, dtype=np.float32)


MODALITIES: dict[str, Modality] = {
    "image": Modality("image", "image", lambda part, rate, frames: [load_image(part["image"])], blank=_black,
                      from_bytes=_image_bytes),
    "audio": Modality("audio", "audio", _audio, blank=_silence, from_bytes=_audio_bytes, seconds=audio_seconds),
    "video": Modality("video", "image", _video, count=lambda frames: frames, blank=_black),  # per frame
}


def register_modality(spec: Modality) -> None:
    """Add a part type to the table, from user code: conversation files, ``chat``, the collator and the media gain
    read it from then on. InputError if the name is taken or no encoder kind ``spec.encoder`` exists."""
    if spec.name in MODALITIES or spec.name == "text":
        raise InputError(f"'{spec.name}' is already a modality")
    if spec.encoder not in ENCODER_KINDS:
        raise InputError(f"no encoder kind '{spec.encoder}'; known: {', '.join(ENCODER_KINDS)}")
    MODALITIES[spec.name] = spec


def by_encoder(parts: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Media parts grouped by the encoder kind that serves them (a video's parts go to ``image``), in order."""
    out: dict[str, list[dict[str, Any]]] = {}
    for part in parts:
        out.setdefault(modality(part["type"]).encoder, []).append(part)
    return out


def modality(name: str) -> Modality:
    """The table entry of a part type; ValueError lists the known ones."""
    if name not in MODALITIES:
        raise InputError(f"unknown part type '{name}'; known: text, {', '.join(MODALITIES)}")
    return MODALITIES[name]
