"""Video decoding: uniform frame sampling, repeats for short clips, errors that name the file."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from mmtransfer.video import load_video

av = pytest.importorskip("av")

from tests.media_files import write_test_video  # noqa: E402  (needs av)


def _reds(frames: list[Image.Image]) -> list[float]:
    return [float(np.asarray(frame)[..., 0].mean()) for frame in frames]


def _assert_indices(frames: list[Image.Image], indices: list[int]) -> None:
    """Frame i of write_test_video has red 20 * i; allow for codec loss."""
    for red, index in zip(_reds(frames), indices, strict=True):
        assert abs(red - 20 * index) <= 12, (_reds(frames), indices)


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])  # .mkv has no frame count in its metadata: counting pass
def test_samples_uniformly(tmp_path, suffix):
    path = tmp_path / f"clip{suffix}"
    write_test_video(path, num_frames=8, size=(48, 32))
    frames = load_video(path, 4)
    assert len(frames) == 4
    assert all(isinstance(f, Image.Image) and f.mode == "RGB" and f.size == (48, 32) for f in frames)
    _assert_indices(frames, [0, 2, 5, 7])  # round(i * 7 / 3)
    _assert_indices(load_video(str(path), 8), list(range(8)))
    _assert_indices(load_video(path, 1), [4])  # the middle frame


def test_short_clip_repeats_frames(tmp_path):
    path = tmp_path / "short.mp4"
    write_test_video(path, num_frames=3)
    frames = load_video(path, 8)
    assert len(frames) == 8
    _assert_indices(frames, [0, 0, 1, 1, 1, 1, 2, 2])  # round(i * 2 / 7)


def test_missing_file(tmp_path):
    path = tmp_path / "absent.mp4"
    with pytest.raises(FileNotFoundError, match=re.escape(f"video file not found: {path}")):
        load_video(path, 4)


def test_garbage_file(tmp_path):
    path = tmp_path / "x.mp4"
    path.write_bytes(np.random.default_rng(0).bytes(2048))
    with pytest.raises(ValueError, match=re.escape(f"could not read video file {path}")):
        load_video(path, 4)


def test_no_video_stream(tmp_path):
    path = tmp_path / "audio.wav"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), dtype=np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with pytest.raises(ValueError, match=re.escape(f"could not read video file {path}: no video stream")):
        load_video(path, 2)


def test_bad_num_frames(tmp_path):
    path = tmp_path / "clip.mp4"
    write_test_video(path)
    with pytest.raises(ValueError, match="num_frames"):
        load_video(path, 0)


def test_list_of_images_resampled():
    images = [Image.new("L" if i == 2 else "RGB", (8, 6), 20 * i) for i in range(5)]
    frames = load_video(images, 3)
    assert [f.mode for f in frames] == ["RGB"] * 3
    assert _reds(frames) == [0.0, 40.0, 80.0]
    assert _reds(load_video(images, 7)) == [20.0 * i for i in [0, 1, 1, 2, 3, 3, 4]]  # round(i * 4 / 6), halves up
    with pytest.raises(ValueError):
        load_video([], 2)
