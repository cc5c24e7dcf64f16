"""Write a JSONL manifest (or conversation file) as WebDataset shards, Parquet files or a ``save_to_disk`` directory,
for the streaming sources (README, "Streaming data"). Media bytes are copied in (or, ``paths=True``, kept as
paths relative to the output). Keys are ``<line>`` numbers zero-padded, so ``shard:key`` points back at the line.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mmtransfer.data.manifest import read_manifest
from mmtransfer.tasks import get_task


def _samples(manifest: str | os.PathLike, task: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for sample in read_manifest(manifest, task, on_error="raise"):
        yield f"{sample['source'][1]:08d}", sample


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def write_shards(manifest: str | os.PathLike, task: str, out_dir: str | os.PathLike, per_shard: int = 100,
                 prefix: str = "train") -> list[Path]:
    """``out_dir/<prefix>-000000.tar``, ...: per sample ``key.<ext>`` media, ``key.txt`` (caption / transcript /
    text), ``key.cls`` (label), ``key.json`` (other fields; for conversations ``messages`` whose media parts name
    the members ``0.<ext>``, ``1.<ext>``...). Returns the shard paths."""
    kind = get_task(task).modality
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shards: list[Path] = []
    tar = None
    for n, (key, sample) in enumerate(_samples(manifest, task)):
        if n % per_shard == 0:
            if tar is not None:
                tar.close()
            shards.append(out / f"{prefix}-{len(shards):06d}.tar")
            tar = tarfile.open(shards[-1], "w")  # noqa: SIM115 (closed above / below)
        meta = {k: v for k, v in sample.items() if k not in ("source", "duration", kind, "text", "label")}
        if "messages" in sample:
            meta["messages"], members = _member_messages(sample["messages"])
            for name, path in members.items():
                _add(tar, f"{key}.{name}", Path(path).read_bytes())
        if kind is not None:
            _add(tar, f"{key}.{Path(sample[kind]).suffix.lstrip('.').lower()}", Path(sample[kind]).read_bytes())
        if "text" in sample:
            text = sample["text"]
            if isinstance(text, list) and len(text) > 1:
                meta["captions"] = text
            else:
                _add(tar, f"{key}.txt", (text[0] if isinstance(text, list) else text).encode())
        if "label" in sample:
            _add(tar, f"{key}.cls", sample["label"].encode())
        if meta:
            _add(tar, f"{key}.json", json.dumps(meta).encode())
    if tar is not None:
        tar.close()
    return shards


def _member_messages(messages: list[dict]) -> tuple[list[dict], dict[str, str]]:
    members: dict[str, str] = {}
    out = []
    for message in messages:
        content = []
        for part in message["content"]:
            kind = part["type"]
            if kind != "text":
                name = f"{len(members)}{Path(part[kind]).suffix.lower()}"
                members[name] = part[kind]
                part = {"type": kind, kind: name}
            content.append(part)
        out.append({"role": message["role"], "content": content})
    return out, members


def _rows(manifest: str | os.PathLike, task: str, root: Path, paths: bool) -> Iterator[dict[str, Any]]:
    kind = get_task(task).modality
    for key, sample in _samples(manifest, task):
        row = {k: v for k, v in sample.items() if k not in ("source", "duration")}
        if kind is not None:
            media = Path(sample[kind])
            row[kind] = _copy(media, root, key) if paths else media.read_bytes()
        if "messages" in row:
            row["messages"] = json.loads(json.dumps(row["messages"]))
            for message in row["messages"]:
                for part in message["content"]:
                    if part["type"] != "text":
                        part[part["type"]] = _copy(Path(part[part["type"]]), root, key)
        row["key"] = key
        yield row


def _copy(media: Path, root: Path, key: str) -> str:
    """Copy a media file under ``root/media`` (paths in a dataset stay inside its directory); its relative path."""
    target = root / "media" / f"{key}-{media.name}"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(media.read_bytes())
    return os.path.relpath(target, root)


def write_parquet(manifest: str | os.PathLike, task: str, out_dir: str | os.PathLike, per_file: int = 100,
                  paths: bool = False) -> list[Path]:
    """``out_dir/train-000000.parquet``, ...: one row per sample, media as bytes (or relative paths)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    chunk: list[dict[str, Any]] = []
    for row in itertools.chain(_rows(manifest, task, out.resolve(), paths), [None]):  # None: the last chunk
        if row is not None:
            chunk.append(row)
        if chunk and (row is None or len(chunk) == per_file):
            files.append(out / f"train-{len(files):06d}.parquet")
            pq.write_table(pa.Table.from_pylist(chunk), files[-1])
            chunk = []
    return files


def write_hf_dir(manifest: str | os.PathLike, task: str, out_dir: str | os.PathLike, paths: bool = True) -> Path:
    """A ``datasets`` ``save_to_disk`` directory (media as bytes, or copied under it and named by relative path)."""
    import datasets

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = list(_rows(manifest, task, out.resolve(), paths))
    datasets.Dataset.from_list(rows).save_to_disk(str(out))
    return out
