"""Read conversation files (OpenAI-style messages, LLaVA JSON, LLaMA-Factory ShareGPT) into one sample format.

A normalised sample is ``{"messages": [{"role", "content": [part, ...]}, ...], "source": (file, number)}``;
a part is ``{"type": "text", "text": str}`` or ``{"type": kind, kind: absolute path}`` for ``kind`` in
the modality table (``mmtransfer.modalities.MODALITIES``, read at each call). Media paths are relative to the
file's directory (or absolute, but inside it). Errors name the message by its 1-based number in the (converted)
message list, as ``message 2: ...``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from collections.abc import Collection
from pathlib import Path
from typing import Any

from mmtransfer.chat import ROLES, check_conversation, parts
from mmtransfer.data.records import Manifest, Skip, check_on_error, json_object, media_path, media_root_of, report
from mmtransfer.errors import ConfigError, MissingFileError
from mmtransfer.modalities import MODALITIES

log = logging.getLogger(__name__)
FORMATS = ("auto", "messages", "llava", "sharegpt")
SPEAKERS = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant"}


def normalize_messages(messages: Any, root: str) -> list[dict]:
    """Check OpenAI-style ``messages`` (``mmtransfer.chat.check_conversation``) and return them normalised,
    media resolved against ``root``: content becomes a list of parts, whitespace-only text parts are dropped,
    other text is kept as given. ValueError says what is wrong."""
    check_conversation(messages, generation=None)
    out = []
    for number, message in enumerate(messages, start=1):
        try:
            content = [p for raw in parts(message) if (p := _part(raw, root)) is not None]
        except ValueError as err:
            raise ValueError(f"message {number}: {err}") from None
        if not content:
            raise ValueError(f"message {number}: empty content (no text, no media)")
        out.append({"role": message["role"], "content": content})
    return out


def check_trainable(messages: list[dict]) -> None:
    """Raise ValueError unless the (normalised) conversation has an assistant turn to learn."""
    if not any(message["role"] == "assistant" for message in messages):
        raise ValueError("no assistant turn to train on (check=False reads prompts for inference)")


def read_conversations(
    path: str | os.PathLike, fmt: str = "auto", *, on_error: str = "skip", check: bool = True,
    media_root: str | os.PathLike | None = None,
) -> Manifest:
    """Read every record of a conversation file into normalised samples (``source`` = file, number).

    Formats: ``"messages"`` (JSONL of ``{"messages": [...]}``), ``"llava"`` (LLaVA's ``{"image", "conversations":
    [{"from", "value"}]}``, ``<image>`` markers in human turns) and ``"sharegpt"`` (LLaMA-Factory's
    ``{"conversations", "system", "images", "audios", "videos"}``, ``<image>``/``<audio>``/``<video>`` markers).
    A ``.json`` file whose first non-space character is ``[`` is a JSON array (the number is then the 1-based
    record number); any other file is JSONL (the number is the line; blank lines are ignored).

    ``"auto"`` decides by the first record that tells: one with ``messages`` is messages, one with
    ``conversations`` and any of ``images``/``audios``/``videos``/``system`` is sharegpt, one with
    ``conversations`` and ``image`` is llava; text-only ``conversations`` read the same either way (llava).

    A bad record (malformed JSON, not an object, not UTF-8, a lone surrogate, a check that fails, and with
    ``check`` no assistant turn) is left out and recorded in ``Manifest.skipped``, or raises ``DataError``
    under ``on_error="raise"``. A file that cannot be opened raises MissingFileError. Media paths resolve against,
    and must stay inside, ``media_root`` (default: the file's folder).
    """
    check_on_error(on_error)
    if fmt not in FORMATS:
        raise ConfigError(f"fmt: '{fmt}' is not one of {FORMATS}")
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise MissingFileError(f"{path}: cannot open the conversation file: {err.strerror}") from None
    is_array = path.suffix.lower() == ".json" and re.match(rb"\s*\[", data) is not None
    records = _array_records(data) if is_array else _jsonl_records(data)
    fmt = _detect(records) if fmt == "auto" else fmt
    root = media_root_of(path, media_root)
    manifest = Manifest(path)
    for number, record in records:
        try:
            messages = _to_messages(record, fmt, root, check)
        except ValueError as err:
            report(Skip(str(path), number, str(err)), on_error, manifest.skipped)
            continue
        manifest.samples.append({"messages": messages, "source": (str(path), number)})
    if manifest.skipped:
        total = len(manifest.samples) + len(manifest.skipped)
        log.warning("%s: skipped %d of %d conversations", path, len(manifest.skipped), total)
    return manifest


# -- messages -------------------------------------------------------------------------------------
def _part(part: dict, root: str) -> dict | None:
    """One checked content part, normalised; None for a whitespace-only text part."""
    kind = part["type"]
    if kind == "text":
        return part if part["text"].strip() else None
    value = part.get(kind)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{kind} part needs a string path under '{kind}'")
    return {"type": kind, kind: media_path(value, root, kind)}


# -- records --------------------------------------------------------------------------------------
def _jsonl_records(data: bytes) -> list[tuple[int, dict | ValueError]]:
    """(line, object or the error that makes it none) for each non-blank line."""
    return [(line, _record(raw)) for line, raw in enumerate(data.split(b"\n"), start=1) if raw.strip()]


def _array_records(data: bytes) -> list[tuple[int, dict | ValueError]]:
    """(record number, object or error); a file that is no JSON array is one error at its line."""
    try:
        items = json.loads(data)
    except UnicodeDecodeError as err:
        return [(data[: err.start].count(b"\n") + 1, ValueError(f"not valid UTF-8, no record read: {err}"))]
    except json.JSONDecodeError as err:
        return [(err.lineno, ValueError(f"malformed JSON array, no record read: {err}"))]
    return [(number, _record(item)) for number, item in enumerate(items, start=1)]


def _record(raw: Any) -> dict | ValueError:
    """A JSONL line (bytes) or a parsed array element -> the object, or the ValueError saying why not."""
    try:
        return json_object(raw)
    except ValueError as err:
        return err


def _detect(records: list[tuple[int, dict | ValueError]]) -> str:
    """The format named by the first record that tells (see ``read_conversations``); messages if none does."""
    guess = "messages"
    for _, record in records:
        if isinstance(record, ValueError):
            continue
        if "messages" in record:
            return "messages"
        if "conversations" in record:
            if record.keys() & {"system", *(f"{kind}s" for kind in MODALITIES)}:  # ShareGPT's media lists
                return "sharegpt"
            if "image" in record:
                return "llava"
            guess = "llava"
    return guess


def _to_messages(record: dict | ValueError, fmt: str, root: str, check: bool) -> list[dict]:
    if isinstance(record, ValueError):
        raise record
    if fmt == "messages":
        if "messages" not in record:
            raise ValueError("missing 'messages'")
        raw = record["messages"]
    else:
        raw = _from_llava(record) if fmt == "llava" else _from_sharegpt(record)
    messages = normalize_messages(raw, root)
    if check:
        check_trainable(messages)
    return messages


# -- LLaVA and ShareGPT ---------------------------------------------------------------------------
def _from_llava(record: dict) -> list[dict]:
    """LLaVA: ``<image>`` markers in human turns take the images in order; with none, images lead turn 0."""
    turns = _turns(record)
    images = _paths(record.get("image"), "image")
    if not images or _marker_counts(turns, ("image",), {"user"})["image"]:
        return _convert(turns, {"image": images}, {"user"})
    messages = _convert(turns, {"image": []}, {"user"})
    first_user = next((message for message in messages if message["role"] == "user"), None)
    if first_user is None:
        raise ValueError("the record has images but no human turn")
    first_user["content"][:0] = [{"type": "image", "image": image} for image in images]
    return messages


def _from_sharegpt(record: dict) -> list[dict]:
    """ShareGPT: ``<image>``/``<audio>``/``<video>`` markers take ``images``/``audios``/``videos`` in order."""
    turns = _turns(record)
    system = record.get("system")
    if system is not None and not isinstance(system, str):
        raise ValueError("'system' must be a string")
    if system is not None and system.strip():
        turns.insert(0, ("system", system))
    media = {kind: _paths(record.get(f"{kind}s"), f"{kind}s") for kind in MODALITIES}
    return _convert(turns, media, ROLES)


def _turns(record: dict) -> list[tuple[str, str]]:
    """``conversations`` -> (role, text) pairs; ``from``/``value`` or ``role``/``content`` keys."""
    conversations = record.get("conversations")
    if not isinstance(conversations, list) or not conversations:
        raise ValueError("'conversations' must be a non-empty list of turns")
    turns = []
    for index, turn in enumerate(conversations):
        if not isinstance(turn, dict):
            raise ValueError(f"turn {index}: expected an object, got {type(turn).__name__}")
        speaker = turn.get("from", turn.get("role"))
        text = turn.get("value", turn.get("content"))
        if not isinstance(speaker, str) or speaker not in SPEAKERS:
            raise ValueError(f"turn {index}: unknown role {speaker!r}; 'from' is one of {', '.join(SPEAKERS)}")
        if not isinstance(text, str):
            raise ValueError(f"turn {index}: 'value' must be a string")
        turns.append((SPEAKERS[speaker], text))
    return turns


def _paths(value: Any, key: str) -> list[str]:
    """A path or a list of paths (None: none)."""
    if value is None:
        return []
    paths = [value] if isinstance(value, str) else value
    if not isinstance(paths, list) or not all(isinstance(path, str) for path in paths):
        raise ValueError(f"'{key}' must be a path or a list of paths")
    return paths


def _marker_pattern(kinds: Collection[str]) -> re.Pattern[str]:
    """``<kind>`` markers, each with one adjacent newline on either side (LLaVA's ``<image>\\nQuestion``)."""
    return re.compile(r"\n?<(" + "|".join(kinds) + r")>\n?")


def _marker_counts(turns: list[tuple[str, str]], kinds: Collection[str], roles: Collection[str]) -> Counter[str]:
    pattern = _marker_pattern(kinds)
    return Counter(match[1] for role, text in turns if role in roles for match in pattern.finditer(text))


def _convert(turns: list[tuple[str, str]], media: dict[str, list[str]], roles: Collection[str]) -> list[dict]:
    """Turns -> messages, markers in ``roles`` turns replaced in order by ``media``; counts must match."""
    counts = _marker_counts(turns, media, roles)
    for kind, paths in media.items():
        if counts[kind] != len(paths):
            raise ValueError(f"{counts[kind]} <{kind}> marker(s) in the text but {len(paths)} {kind} path(s)")
    pattern = _marker_pattern(media)
    pending = {kind: iter(paths) for kind, paths in media.items()}
    messages = []
    for role, text in turns:
        content, start = [], 0
        for match in pattern.finditer(text) if role in roles else ():
            content.append({"type": "text", "text": text[start : match.start()]})
            content.append({"type": match[1], match[1]: next(pending[match[1]])})
            start = match.end()
        content.append({"type": "text", "text": text[start:]})
        messages.append({"role": role, "content": content})  # normalize_messages drops the empty text
    return messages
