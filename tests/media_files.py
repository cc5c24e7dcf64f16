"""Media files written for tests: a tiny video whose frames can be checked one by one."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np


def write_test_video(path: Path | str, num_frames: int = 8, size: tuple[int, int] = (32, 32), fps: int = 8) -> None:
    """Write a tiny mpeg4 clip whose frame i is solid RGB (min(20 * i, 255), 128, 64).

    size is (width, height), both even (yuv420p).
    """
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"qscale": "1"}
        for i in range(num_frames):
            pixels = np.full((size[1], size[0], 3), (min(20 * i, 255), 128, 64), dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())
