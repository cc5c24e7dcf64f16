"""Conversation files (messages JSONL, LLaVA JSON, ShareGPT) -> normalised OpenAI-style samples; bad records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from mmtransfer.data.conversations import check_trainable, normalize_messages, read_conversations
from mmtransfer.errors import DataError


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """``data/`` with img/a.png, img/b.png, wav/a.wav; ``outside.png`` next to it."""
    for name in ("data/img/a.png", "data/img/b.png", "outside.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / name)
    (tmp_path / "data/wav").mkdir()
    sf.write(tmp_path / "data/wav/a.wav", np.zeros(1600, np.float32), 16000)
    return tmp_path / "data"


def write(path: Path, records: list[Any], array: bool = False) -> Path:
    """JSONL (a str or bytes record is written as is) or, with ``array``, a pretty-printed JSON array."""
    if array:
        path.write_text(json.dumps(records, indent=1))
        return path
    lines = [r if isinstance(r, bytes) else (r if isinstance(r, str) else json.dumps(r)).encode() for r in records]
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def text(s: str) -> dict:
    return {"type": "text", "text": s}


def media(root: Path, kind: str, name: str) -> dict:
    return {"type": kind, kind: str(root / name)}


def test_messages_format(root: Path) -> None:
    path = write(root / "m.jsonl", [
        {"id": 7, "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [text("Compare "), {"type": "image", "image": "img/a.png"}, text(" and "),
                                         {"type": "image", "image": str(root / "img/b.png")}, text("   ")]},
            {"role": "assistant", "content": "  Both black.\n"}]},
        "",
        {"messages": [{"role": "user", "content": [{"type": "audio", "audio": "wav/a.wav"},
                                                   {"type": "image", "image": "img/a.png"}, text("What is <image>?")]},
                      {"role": "assistant", "content": [text("Silence.")]}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
    ])
    manifest = read_conversations(path)
    assert manifest.skipped == [] and [s["source"] for s in manifest] == [(str(path), 1), (str(path), 3),
                                                                           (str(path), 4)]
    assert manifest[0]["messages"] == [
        {"role": "system", "content": [text("Be brief.")]},
        {"role": "user", "content": [text("Compare "), media(root, "image", "img/a.png"), text(" and "),
                                     media(root, "image", "img/b.png")]},
        {"role": "assistant", "content": [text("  Both black.\n")]}]
    assert manifest[1]["messages"][0]["content"] == [
        media(root, "audio", "wav/a.wav"), media(root, "image", "img/a.png"), text("What is <image>?")]
    assert manifest[2]["messages"] == [{"role": "user", "content": [text("hi")]},
                                       {"role": "assistant", "content": [text("hello")]}]


LLAVA = [
    {"id": "a", "image": "img/a.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A <image> tag."},
        {"from": "human", "value": "Sure?"}, {"from": "gpt", "value": "Yes."}]},
    {"id": "b", "image": ["img/a.png", "img/b.png"], "conversations": [
        {"from": "human", "value": "First<image>then\n<image>\ndiffer?"}, {"from": "gpt", "value": "No."}]},
    {"id": "c", "image": "img/b.png", "conversations": [
        {"from": "human", "value": "Describe."}, {"from": "gpt", "value": "Dark."}]},
    {"id": "d", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
]


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_llava_format(root: Path, suffix: str) -> None:
    path = write(root / f"llava{suffix}", LLAVA, array=suffix == ".json")
    manifest = read_conversations(path)
    assert manifest.skipped == [] and manifest[3]["source"] == (str(path), 4)
    a, b = media(root, "image", "img/a.png"), media(root, "image", "img/b.png")
    assert manifest[0]["messages"] == [
        {"role": "user", "content": [a, text("What is it?")]},
        {"role": "assistant", "content": [text("A <image> tag.")]},
        {"role": "user", "content": [text("Sure?")]}, {"role": "assistant", "content": [text("Yes.")]}]
    assert manifest[1]["messages"][0]["content"] == [text("First"), a, text("then"), b, text("differ?")]
    assert manifest[2]["messages"][0]["content"] == [b, text("Describe.")]
    assert manifest[3]["messages"] == [{"role": "user", "content": [text("Hi")]},
                                       {"role": "assistant", "content": [text("Hello")]}]
    assert read_conversations(path, "llava").samples == manifest.samples


def test_sharegpt_format(root: Path) -> None:
    records = [
        {"conversations": [{"from": "human", "value": "<audio>Transcribe, then <image>describe."},
                           {"from": "gpt", "value": "Done."}],
         "system": "You listen.", "images": ["img/a.png"], "audios": ["wav/a.wav"]},
        {"conversations": [{"role": "user", "content": "<image><image>Same?"},
                           {"role": "assistant", "content": "Yes."}], "images": ["img/a.png", "img/b.png"]},
        {"conversations": [{"from": "user", "value": "Hi"}, {"from": "assistant", "value": "Hey"}], "system": ""},
    ]
    for path in (write(root / "s.jsonl", records), write(root / "s.json", records, array=True)):
        manifest = read_conversations(path)
        assert manifest.skipped == [] and read_conversations(path, "sharegpt").samples == manifest.samples
        assert manifest[0]["messages"] == [
            {"role": "system", "content": [text("You listen.")]},
            {"role": "user", "content": [media(root, "audio", "wav/a.wav"), text("Transcribe, then "),
                                         media(root, "image", "img/a.png"), text("describe.")]},
            {"role": "assistant", "content": [text("Done.")]}]
        assert manifest[1]["messages"][0]["content"] == [
            media(root, "image", "img/a.png"), media(root, "image", "img/b.png"), text("Same?")]
        assert manifest[2]["messages"] == [{"role": "user", "content": [text("Hi")]},
                                           {"role": "assistant", "content": [text("Hey")]}]


def test_check_trainable_and_inference_prompts(root: Path) -> None:
    prompt = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]}
    path = write(root / "p.jsonl", [prompt])
    assert "no assistant turn" in read_conversations(path).skipped[0].reason
    assert read_conversations(path, check=False)[0]["messages"][1] == {"role": "user", "content": [text("Hi?")]}
    with pytest.raises(ValueError, match="no assistant turn"):
        check_trainable(normalize_messages(prompt["messages"], str(root)))


def msgs(*messages: dict) -> dict:
    return {"messages": list(messages)}


USER, REPLY = {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}
GOOD = {
    "messages": msgs(USER, REPLY),
    "llava": {"image": "img/a.png", "conversations": [{"from": "human", "value": "<image>Q"},
                                                      {"from": "gpt", "value": "A"}]},
    "sharegpt": {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}], "audios": []},
}
BAD = [
    ("messages", msgs(USER, {"role": "bot", "content": "A"}), ["message 2", "unknown role 'bot'"]),
    ("messages", msgs(REPLY, USER), ["the assistant's", "must be the user's"]),
    ("messages", msgs({"role": "user", "content": [{"type": "image", "image": "img/nope.png"}]}, REPLY),
     ["message 1", "image file not found: img/nope.png"]),
    ("messages", msgs(USER, {"role": "assistant", "content": [{"type": "image", "image": "img/a.png"}]}),
     ["message 2", "image part in the assistant turn"]),
    ("messages", msgs({"role": "user", "content": [{"type": "image", "image": "../outside.png"}]}, REPLY),
     ["escapes the media root"]),
    ("messages", msgs({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "img/a.png"}}]},
                      REPLY), ["unknown part type 'image_url'", "text, image, audio, video"]),
    ("messages", msgs({"role": "user", "content": [text("  ")]}, REPLY), ["message 1", "empty content"]),
    ("messages", msgs({"role": "user", "content": "Q"}, {"role": "system", "content": "S"}, REPLY),
     ["message 2", "system message may only come first"]),
    ("messages", {"messages": []}, ["non-empty list"]),
    ("messages", "{not json", ["malformed JSON"]),
    ("messages", "[1, 2]", ["expected a JSON object, got list"]),
    ("messages", b'{"messages": "\xff"}', ["not valid UTF-8"]),
    ("messages", '{"messages": [{"role": "user", "content": "\\ud800"}]}', ["unpaired surrogate"]),
    ("llava", {"image": ["img/a.png"], "conversations": [{"from": "human", "value": "<image><image>"},
                                                         {"from": "gpt", "value": "A"}]},
     ["2 <image> marker(s)", "1 image path(s)"]),
    ("llava", {"conversations": [{"from": "bot", "value": "Q"}]}, ["turn 0", "unknown role 'bot'"]),
    ("sharegpt", {"conversations": [{"from": "human", "value": "<audio>Q"}, {"from": "gpt", "value": "A"}]},
     ["1 <audio> marker(s)", "0 audio path(s)"]),
    ("sharegpt", {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}],
                  "images": ["img/a.png"], "system": "S <image>"}, ["message 1", "image part in the system"]),
]


@pytest.mark.parametrize(("fmt", "record", "words"), BAD)
def test_bad_records_are_skipped_or_raise(root: Path, fmt: str, record: Any, words: list[str]) -> None:
    path = write(root / "bad.jsonl", [GOOD[fmt], record, GOOD[fmt]])
    manifest = read_conversations(path, fmt)
    assert [s["source"] for s in manifest] == [(str(path), 1), (str(path), 3)]
    [skip] = manifest.skipped
    assert (skip.path, skip.line) == (str(path), 2) and all(word in skip.reason for word in words), skip.reason
    with pytest.raises(DataError) as err:
        read_conversations(path, fmt, on_error="raise")
    assert str(err.value).startswith(f"{path}:2: ") and all(word in str(err.value) for word in words)


def test_bad_array_records_are_numbered_and_a_broken_array_is_one_skip(root: Path) -> None:
    path = write(root / "a.json", [GOOD["llava"], {"conversations": []}, 3, GOOD["llava"]], array=True)
    manifest = read_conversations(path)
    assert len(manifest) == 2 and [(s.line, s.reason[:13]) for s in manifest.skipped] == [
        (2, "'conversation"), (3, "expected a JS")]
    path.write_text('[\n {"conversations": []},\n oops\n]')
    [skip] = read_conversations(path).skipped
    assert skip.line == 3 and "malformed JSON array" in skip.reason


def test_normalize_messages_rejects_non_lists_and_missing_files_raise(root: Path) -> None:
    with pytest.raises(ValueError, match="non-empty list"):
        normalize_messages({"role": "user"}, str(root))
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        read_conversations(root / "missing.jsonl")
    with pytest.raises(ValueError, match="fmt"):
        read_conversations(root / "missing.jsonl", "openai")
