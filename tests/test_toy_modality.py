"""A new modality is one table entry: a toy "depth" modality (a 2-D float array in a ``.npy`` file, read through the
image encoder) registered in this file alone is read from conversation files, trains, answers through ``chat``,
and gets its own media gain. Nothing outside this file names it."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import mmtransfer
from mmtransfer import media_gain
from mmtransfer.bundled import RECIPES
from mmtransfer.chat import check_conversation
from mmtransfer.data.conversations import read_conversations
from mmtransfer.data.records import Blob
from mmtransfer.errors import InputError
from mmtransfer.modalities import MODALITIES, Modality, modality, register_modality
from mmtransfer.train import load_train_config, train


def _grey(depth: np.ndarray) -> Image.Image:
    """A depth map [H, W] in metres -> a grey RGB image, near bright, far dark (0-10 m)."""
    return Image.fromarray((255 * (1 - np.clip(depth, 0, 10) / 10)).astype(np.uint8)).convert("RGB")


def _load_depth(part: dict[str, Any], sample_rate: int | None, frames: int) -> list[Image.Image]:
    return [_grey(np.load(part["depth"]))]


def _depth_bytes(data: bytes, name: str, sample_rate: int | None) -> Image.Image:
    return _grey(np.load(io.BytesIO(data)))


def _blank_depth(like: Image.Image | None, sample_rate: int | None) -> Image.Image:
    return Image.new("RGB", like.size if like is not None else (32, 32))


DEPTH = Modality("depth", "image", _load_depth, blank=_blank_depth, from_bytes=_depth_bytes)


@pytest.fixture
def depth() -> Iterator[Modality]:
    register_modality(DEPTH)
    yield DEPTH
    MODALITIES.pop("depth", None)


def _write_depth_chats(root: Path, n: int, seed: int) -> Path:
    """``n`` conversations: a depth map of a wall at 1 m ("near") or 8 m ("far"), and the question how far it is."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        near = i % 2 == 0
        depth = np.full((48, 48), 1.0 if near else 8.0) + rng.normal(0, 0.3, (48, 48))
        np.save(root / f"d{seed}_{i}.npy", depth.astype(np.float32))
        lines.append(json.dumps({"messages": [
            {"role": "user", "content": [{"type": "depth", "depth": f"d{seed}_{i}.npy"},
                                         {"type": "text", "text": "How far is the wall?"}]},
            {"role": "assistant", "content": "near" if near else "far"},
        ]}))
    path = root / f"depth_{seed}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_registering_a_modality_checks_its_name_and_encoder() -> None:
    with pytest.raises(InputError, match="'image' is already a modality"):
        register_modality(Modality("image", "image", _load_depth, blank=_blank_depth))
    with pytest.raises(InputError, match="no encoder kind 'lidar'; known: image, audio"):
        register_modality(Modality("point_cloud", "lidar", _load_depth, blank=_blank_depth))
    with pytest.raises(InputError, match="unknown part type 'depth'"):
        modality("depth")


def test_a_toy_modality_registered_in_one_place_trains_answers_and_reports_its_gain(
        depth: Modality, tmp_path: Path) -> None:
    train_file, eval_file = _write_depth_chats(tmp_path, 32, 0), _write_depth_chats(tmp_path, 8, 1)
    [sample, *_] = read_conversations(eval_file)
    assert sample["messages"][0]["content"][0] == {"type": "depth", "depth": str(tmp_path / "d1_0.npy")}
    sharegpt = tmp_path / "sharegpt.json"  # LLaMA-Factory's format: a `depths` list and `<depth>` markers
    sharegpt.write_text(json.dumps([{"conversations": [{"from": "human", "value": "<depth>How far is the wall?"},
                                                       {"from": "gpt", "value": "near"}], "depths": ["d1_0.npy"]}]))
    [record] = read_conversations(sharegpt)
    assert record["messages"][0]["content"] == sample["messages"][0]["content"]
    cfg = load_train_config(RECIPES / "chat-tiny.yaml", [
        f"data=[{{task: chat, name: depth, train: {train_file}, eval: {eval_file}}}]",
        f"output_dir={tmp_path / 'run'}", "stages.0.steps=60", "eval_every=0", "batch_size=8", "max_new_tokens=3"])
    metrics = train(cfg)
    assert metrics["depth/gain/depth/loss"] > media_gain.MIN_GAIN  # the answer depends on the depth map alone
    model = mmtransfer.load(tmp_path / "run" / "final")
    conv = [{"role": "user", "content": [{"type": "depth", "depth": str(tmp_path / "d1_0.npy")},
                                         {"type": "text", "text": "How far is the wall?"}]}]
    check_conversation(conv, generation=True)
    answers = model.chat([conv, [{**conv[0], "content": [{"type": "depth", "depth": str(tmp_path / "d1_1.npy")},
                                                         conv[0]["content"][1]]}]])
    assert answers == ["near", "far"]


def test_a_registered_modality_decodes_from_bytes_held_in_memory(depth: Modality) -> None:
    """Shards and dataset cells hold media as bytes (``Blob``); the table's ``from_bytes`` decodes them."""
    buffer = io.BytesIO()
    np.save(buffer, np.full((8, 6), 1.0, dtype=np.float32))
    image = Blob("shard-0.tar:k0.npy", data=buffer.getvalue()).open("depth")
    assert image.size == (6, 8) and np.asarray(image).min() == 229  # 1 m of 10: 90% bright
    with pytest.raises(ValueError, match="video media cannot come from a shard or dataset cell "
                                         r"\(only image, audio, depth\)"):
        Blob("shard-0.tar:k0.mp4", data=b"x").open("video")
