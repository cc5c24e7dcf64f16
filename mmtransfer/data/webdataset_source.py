"""WebDataset shards (tar files) as a streaming ``Source``, read with the ``webdataset`` library.

Shards: a brace pattern (``data/train-{000000..000009}.tar``), several joined by ``::``, a glob, or a directory
(its ``*.tar``). A sample is the members sharing a key (``key.jpg``, ``key.txt``...); by extension:

- ``txt``: the ``text`` field; ``cls``: the ``label``; ``json``: an object whose keys are fields (img2dataset's
  metadata, a VQA ``question``/``answer``, a conversation's ``messages``; its ``caption`` is the text when no
  ``txt``);
- an image (``jpg``, ``png``, ``webp``...) or audio (``flac``, ``wav``, ``mp3``...) member: the ``image`` /
  ``audio`` field. In a conversation a media part names a member of its own sample by extension
  (``{"type": "image", "image": "png"}``; ``0.png`` / ``1.png`` for several).

``columns`` maps a field to another member extension or JSON key (``{text: caption.txt}``). A member with an
unknown extension, bad JSON or UTF-8, or a missing field makes its sample a skip named ``shard:key``; a
truncated or corrupt tar skips the rest of that shard (``shard:<rest of shard>``) — or raises with
``on_error: raise``.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator
from typing import Any

from mmtransfer.data.records import Blob
from mmtransfer.data.source import SOURCE_TYPES, Source, map_media_parts
from mmtransfer.data.sources import AUDIO_EXTS, IMAGE_EXTS
from mmtransfer.errors import MissingFileError
from mmtransfer.extras import require

TEXT_EXTS = ("txt", "json", "cls")
KNOWN_EXTS = IMAGE_EXTS + AUDIO_EXTS + TEXT_EXTS
REMOTE = ("pipe:", "http://", "https://", "s3://", "gs://")


def expand_shards(spec: str, where: str = "train") -> list[str]:
    """The shard list of a pattern / directory / glob (local shards must exist: MissingFileError names one)."""
    require(["webdataset"], f"{where}: source webdataset")
    import webdataset as wds

    if os.path.isdir(spec):
        shards = sorted(glob.glob(os.path.join(spec, "*.tar")))
        if not shards:
            raise MissingFileError(f"{where}: {spec}: no .tar shards in this directory")
        return shards
    shards = []
    for url in wds.shardlists.expand_urls(spec):
        if url.startswith(REMOTE):
            shards.append(url)
        elif any(c in url for c in "*?["):
            shards += sorted(glob.glob(url)) or [url]
        else:
            shards.append(url)
    for shard in shards:
        if not shard.startswith(REMOTE) and not os.path.isfile(shard):
            raise MissingFileError(f"{where}: shard not found: {shard}")
    return shards


class WebDatasetSource(Source):
    """Samples of tar shards; ``parse`` maps members to task fields (see the module doc)."""

    def __init__(self, spec: str, columns: dict[str, str] | None = None, where: str = "train") -> None:
        self.where = spec
        self.columns = dict(columns or {})
        self._shards = expand_shards(spec, where)

    @staticmethod
    @SOURCE_TYPES.register("webdataset")
    def open(spec: str, task: Any, columns: dict[str, str] | None, split: str, where: str) -> WebDatasetSource:
        """The shards of ``spec``; ``task`` and ``split`` are not needed (members map to fields by extension, and a
        spec names one split's shards)."""
        return WebDatasetSource(spec, columns, where=where)

    def shards(self) -> list[str]:
        return list(self._shards)

    def records(self, shard: int) -> Iterator[tuple[str, Any]]:
        import webdataset as wds

        url = self._shards[shard]
        if url.startswith(REMOTE):
            source = {"url": url, "stream": wds.gopen(url)}
        else:
            source = {"url": url, "stream": open(url, "rb")}  # noqa: SIM115 (closed below)
        try:
            files = wds.tariterators.tar_file_expander([source], handler=wds.reraise_exception)
            for sample in wds.tariterators.group_by_keys(files, handler=wds.reraise_exception):
                members = {k: v for k, v in sample.items() if not k.startswith("__")}
                yield sample["__key__"], members
        finally:
            source["stream"].close()
        if not url.startswith(REMOTE) and url.endswith(".tar"):  # a compressed tar's stream checks its own end
            _check_complete(url)

    def parse(self, raw: dict[str, bytes], shard: str, key: str) -> dict[str, Any]:
        unknown = sorted(e for e in raw if e.rsplit(".", 1)[-1] not in KNOWN_EXTS)
        if unknown:
            raise ValueError(f"member(s) with unknown extension {', '.join('.' + e for e in unknown)}; "
                             f"known: {', '.join(KNOWN_EXTS)}")
        record: dict[str, Any] = {}
        meta: dict[str, Any] = {}
        if "json" in raw:
            meta = _json(raw["json"], "json")
            record.update(meta)
        if "txt" in raw:
            record["text"] = _utf8(raw["txt"], "txt")
        elif "caption" in record and "text" not in record:
            record["text"] = record.pop("caption")
        if "cls" in raw:
            record["label"] = _utf8(raw["cls"], "cls").strip()
        for ext, data in raw.items():
            if "." in ext:
                continue
            kind = "image" if ext in IMAGE_EXTS else "audio" if ext in AUDIO_EXTS else None
            if kind is not None:
                if kind in record and isinstance(record[kind], Blob):
                    raise ValueError(f"two {kind} members")
                record[kind] = Blob(f"{shard}:{key}.{ext}", data)
        for field, name in self.columns.items():
            if name in raw:
                ext = name.rsplit(".", 1)[-1]
                record[field] = Blob(f"{shard}:{key}.{name}", raw[name]) if ext in IMAGE_EXTS + AUDIO_EXTS else (
                    _utf8(raw[name], name).strip() if ext in ("txt", "cls") else _json(raw[name], name))
            elif name in meta:
                record[field] = meta[name]
            else:
                raise ValueError(f"columns.{field}: no member '.{name}' and no JSON key '{name}' "
                                 f"(members: {', '.join(sorted(raw))})")
        if "messages" in record:
            record["messages"] = _with_members(record["messages"], raw, shard, key)
        return record


def _check_complete(path: str) -> None:
    """Python's tarfile takes a tar cut at a member header for a complete one: check for the end-of-archive
    blocks (two zero blocks of 512 bytes, at a multiple of 512) that every tar writer ends with."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        f.seek(max(0, size - 1024))
        tail = f.read()
    if size % 512 or size < 1024 or tail.strip(b"\0"):
        raise ValueError(f"the shard is truncated: {size} bytes, without the end-of-archive blocks")


def _utf8(data: bytes, ext: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f".{ext} is not valid UTF-8: {err}") from None


def _json(data: bytes, ext: str) -> Any:
    try:
        value = json.loads(_utf8(data, ext))
    except json.JSONDecodeError as err:
        raise ValueError(f".{ext}: malformed JSON: {err}") from None
    if ext == "json" and not isinstance(value, dict):
        raise ValueError(f".json: expected a JSON object, got {type(value).__name__}")
    return value


def _with_members(messages: Any, raw: dict[str, bytes], shard: str, key: str) -> Any:
    """A conversation whose media parts name members of the sample (``png``, ``.png``, ``key.png``) -> the same
    with those parts holding the members' bytes as ``Blob``\\ s."""
    def convert(kind: str, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        name = value.removeprefix(f"{key}.").lstrip(".")
        if name not in raw:
            raise ValueError(f"a {kind} part names '{value}', which is not a member of this sample "
                             f"(members: {', '.join(sorted(raw))})")
        return Blob(f"{shard}:{key}.{name}", raw[name])

    return map_media_parts(messages, convert)
