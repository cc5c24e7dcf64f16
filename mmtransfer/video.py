"""Decoding videos into a fixed number of uniformly sampled RGB frames (decoded with PyAV)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from mmtransfer.errors import InputError, MissingFileError

if TYPE_CHECKING:
    import av

PathLike = str | os.PathLike


def _sample_indices(n: int, num_frames: int) -> list[int]:
    """round(i * (n - 1) / (num_frames - 1)), i < num_frames, halves up: first and last frame always taken,
    indices repeat when n < num_frames; num_frames == 1 takes the middle frame."""
    if num_frames == 1:
        return [n // 2]
    return [(2 * i * (n - 1) + num_frames - 1) // (2 * (num_frames - 1)) for i in range(num_frames)]


def _frames(container: av.container.InputContainer) -> Iterator[av.VideoFrame]:
    if not container.streams.video:
        raise InputError("no video stream")
    return container.decode(container.streams.video[0])


def _pick(path: Path, n: int, num_frames: int) -> list[Image.Image] | None:
    """One sequential decoding pass keeping only the sampled frames; None if the clip has fewer than n frames."""
    import av

    wanted = _sample_indices(n, num_frames)
    kept: dict[int, Image.Image] = {}
    with av.open(str(path)) as container:
        for index, frame in enumerate(_frames(container)):
            if index in wanted:
                kept[index] = frame.to_image().convert("RGB")
            if index >= wanted[-1]:
                break
    return [kept[i] for i in wanted] if len(kept) == len(set(wanted)) else None


def load_video(item: PathLike | list[Image.Image], num_frames: int) -> list[Image.Image]:
    """Return num_frames RGB frames sampled uniformly (see _sample_indices) from a video file or a list of images.

    Frames are decoded in order and only the sampled ones kept. The frame count comes from the stream metadata
    when present (a pass that counts otherwise, or when the metadata overstates it).
    """
    if num_frames < 1:
        raise InputError(f"num_frames must be >= 1, got {num_frames}")
    if isinstance(item, (list, tuple)):
        if not item:
            raise InputError("empty list of video frames")
        return [item[i].convert("RGB") for i in _sample_indices(len(item), num_frames)]
    try:
        import av
    except ImportError as err:
        raise ImportError("reading video needs PyAV: pip install av") from err
    path = Path(item).expanduser()
    if not path.is_file():
        raise MissingFileError(f"video file not found: {path}")
    try:
        with av.open(str(path)) as container:
            n = container.streams.video[0].frames if container.streams.video else 0
        frames = _pick(path, n, num_frames) if n > 0 else None
        if frames is None:  # no (or an overstated) count in the metadata: count, then sample
            with av.open(str(path)) as container:
                n = sum(1 for _ in _frames(container))
            if n == 0:
                raise InputError("no frames")
            frames = _pick(path, n, num_frames)
            if frames is None:
                raise InputError("frame count changed between passes")
    except (av.FFmpegError, OSError, ValueError) as err:
        raise InputError(f"could not read video file {path}: {err}") from err
    return frames
