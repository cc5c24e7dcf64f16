"""The modality table: one ``Modality`` per kind of media part, read by every other module.

A media part ``{"type": name, name: value}`` goes through the encoder and projector of ``encoder`` (the
``<encoder>_encoder`` / ``<encoder>_projector`` config fields) and becomes ``count`` prefixes, each
standing at one ``<encoder>`` placeholder. Adding a modality is one entry here: video is the image
encoder over ``video_frames`` sampled frames, each frame its own prefix, in order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from mmtransfer.errors import InputError
from mmtransfer.io import load_audio, load_image

# encoder kind -> the placeholder token that stands for one of its prefixes
PLACEHOLDERS = {"image": "<image>", "audio": "<audio>"}
ENCODER_KINDS = tuple(PLACEHOLDERS)


@dataclass(frozen=True)
class Modality:
    """``load(part, sample_rate, frames) -> raw items`` for the encoder (PIL images, float32 audio [T]),
    one per prefix; ``count(frames)`` how many prefixes a part becomes; ``blank(sample_rate)`` one neutral
    raw item (for the encoder's own kinds: a pass that keeps every rank running the same modules)."""

    name: str
    encoder: str
    load: Callable[[dict[str, Any], int | None, int], list[Any]]
    count: Callable[[int], int] = lambda frames: 1
    blank: Callable[[int | None], Any] | None = None


def _audio(part: dict[str, Any], sample_rate: int | None, frames: int) -> list[Any]:
    if sample_rate is None:
        raise InputError("an audio part, but no audio encoder (sample rate) to read it for")
    return [load_audio(part["audio"], sample_rate, part.get("sample_rate"))]


def _video(part: dict[str, Any], sample_rate: int | None, frames: int) -> list[Any]:
    from mmtransfer.video import load_video  # PyAV is optional

    return load_video(part["video"], frames)


MODALITIES: dict[str, Modality] = {
    "image": Modality("image", "image", lambda part, rate, frames: [load_image(part["image"])],
                      blank=lambda rate: Image.new("RGB", (32, 32))),
    "audio": Modality("audio", "audio", _audio, blank=lambda rate: np.zeros(rate or 16000, dtype=np.float32)),
    "video": Modality("video", "image", _video, count=lambda frames: frames),
}


def modality(name: str) -> Modality:
    """The table entry of a part type; ValueError lists the known ones."""
    if name not in MODALITIES:
        raise InputError(f"unknown part type '{name}'; known: text, {', '.join(MODALITIES)}")
    return MODALITIES[name]
