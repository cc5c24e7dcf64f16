"""Hugging Face ``datasets`` as a streaming ``Source``.

``train`` / ``eval`` name one of:

- a directory written by ``Dataset.save_to_disk`` (a ``DatasetDict`` directory: the split ``train_split`` /
  ``eval_split`` of it): its Arrow files streamed (not memory-mapped: memory stays flat), one shard per file
  (``save_to_disk(..., num_shards=64)`` lets many ranks x workers read in parallel);
- Parquet or Arrow files: one file, a glob, or a directory of them (``*.parquet``, else ``*.arrow``), one shard
  per file, streamed (``load_dataset(..., streaming=True)``);
- otherwise a hub dataset name (needs the network and no ``HF_HUB_OFFLINE``), streamed, split as above.

``columns`` maps the task's fields to columns (``{image: img, text: caption}``); a field not named there uses
the column of its own name (captioning also takes ``caption`` / ``captions``). Media cells may hold bytes, an
``Image`` / ``Audio`` feature (not decoded by ``datasets``: we decode), ``{"bytes", "path"}`` structs, decoded
audio ``{"array", "sampling_rate"}`` or a path (relative to the dataset's directory). A ``ClassLabel`` label
becomes its name. A missing column, or one whose type cannot hold the field, is a ``ConfigError`` naming it;
a bad cell (null, undecodable bytes, a missing file) makes its row a skip named ``shard:row``.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mmtransfer.data.records import Blob, media_path
from mmtransfer.data.source import SOURCE_TYPES, Source, map_media_parts
from mmtransfer.errors import ConfigError, DataError, MissingFileError
from mmtransfer.extras import require
from mmtransfer.modalities import MODALITIES

ROWS_PER_READ = 64
TEXT_TYPES = ("string", "large_string")
MEDIA_TYPES = ("binary", "large_binary", "string", "large_string")


def _files(spec: str, split: str, where: str) -> tuple[str, list[str]] | None:
    """(builder, files) when ``spec`` names Parquet / Arrow files (a file, a glob, a directory of them). A
    directory whose file names carry splits the way the hub lays them out (``data/train-00000-of-00004.parquet``,
    ``validation/...``; read by ``datasets``' own rules) into several splits gives the files of ``split`` only."""
    if os.path.isdir(spec):
        from datasets.data_files import DataFilesDict, get_data_patterns

        try:
            patterns = get_data_patterns(spec)
        except FileNotFoundError:  # datasets' EmptyDatasetError: no data files at all
            return None
        for ext in ("parquet", "arrow"):
            try:
                by_split = DataFilesDict.from_patterns(patterns, spec, allowed_extensions=[f".{ext}"])
            except FileNotFoundError:
                continue
            if len(by_split) == 1:  # one split (or names without splits): all of it, whatever ``split`` says
                return ext, sorted(next(iter(by_split.values())))
            if split not in by_split:
                raise ConfigError(f"{where}: {spec} holds the splits {sorted(by_split)}, not '{split}'")
            return ext, sorted(by_split[split])
        return None
    files = sorted(glob.glob(spec)) if any(c in spec for c in "*?[") else [spec] if os.path.isfile(spec) else []
    if not files:
        return None
    ext = files[0].rsplit(".", 1)[-1]
    if ext not in ("parquet", "arrow"):
        raise ConfigError(f"{spec}: source hf reads .parquet or .arrow files or a save_to_disk directory, "
                          f"not .{ext}")
    return ("parquet" if ext == "parquet" else "arrow"), files


def _split_dir(spec: str, split: str, where: str) -> str:
    """The directory of ``split`` in a ``DatasetDict`` directory, or ``spec`` itself."""
    if not os.path.isfile(os.path.join(spec, "dataset_dict.json")):
        return spec
    splits = json.loads(Path(spec, "dataset_dict.json").read_text()).get("splits", [])
    if split not in splits:
        raise ConfigError(f"{where}: {spec} has splits {splits}, not '{split}'")
    return os.path.join(spec, split)


def _is_disk_dataset(spec: str) -> bool:
    return os.path.isdir(spec) and any(os.path.isfile(os.path.join(spec, f))
                                       for f in ("state.json", "dataset_dict.json"))


@SOURCE_TYPES.register("hf")
class HFSource(Source):
    """Rows of a Hugging Face dataset, in shards; ``parse`` maps columns to task fields (see the module doc)."""

    def __init__(self, spec: str, task: Any, columns: dict[str, str] | None = None, split: str = "train",
                 where: str = "train") -> None:
        require(["datasets"], f"{where}: source hf")
        import datasets

        self.where, self.task = spec, task
        self.root: str | None = None
        self.names: list[str] | None = None
        self.files: list[str] = []  # Parquet / Arrow files: their schemas are checked against the first's
        if _is_disk_dataset(spec):
            directory = _split_dir(spec, split, where)
            state = json.loads(Path(directory, "state.json").read_text())
            files = [os.path.join(directory, f["filename"]) for f in state["_data_files"]]
            features = datasets.load_from_disk(directory).features  # its Image / Audio / ClassLabel types
            self.ids = datasets.load_dataset("arrow", data_files=files, split="train", streaming=True,
                                             features=features)
            self.root = os.path.abspath(spec)
            if self.ids.num_shards == len(files):
                self.names = files
        elif (found := _files(spec, split, where)) is not None:
            builder, files = found
            self.files = files
            self.ids = datasets.load_dataset(builder, data_files=files, split="train", streaming=True)
            self.root = os.path.abspath(spec if os.path.isdir(spec) else os.path.dirname(files[0]))
            if self.ids.num_shards == len(files):
                self.names = files
        elif os.path.exists(spec) or spec.startswith((".", "/", "~")):
            raise MissingFileError(f"{where}: {spec}: no Parquet / Arrow files and no save_to_disk dataset there")
        else:
            try:
                self.ids = datasets.load_dataset(spec, split=split, streaming=True)
            except Exception as err:  # noqa: BLE001 (offline, unknown name, no access: say what was tried)
                raise DataError(f"{where}: {spec}: no such local path, and as a hub dataset (split '{split}') it "
                                f"cannot be loaded: {type(err).__name__}: {err}") from None
        self.ids = self.ids.decode(False)  # we decode media ourselves, after skipping what a resume skips
        self.features = self.ids.features
        self.columns = self._map_columns(dict(columns or {}), where)
        if self.files:
            _check_schemas(self.files, self.columns, where)
        self.n = self.ids.num_shards

    def _map_columns(self, columns: dict[str, str], where: str) -> dict[str, str]:
        """field -> column, checked against the dataset's columns and (when known) their types."""
        fields = list(self.task.required_fields)
        for field in columns:
            if field not in fields:
                raise ConfigError(f"{where}: columns.{field}: task '{self.task.name}' has no field '{field}'; its "
                                  f"fields are {fields}")
        names = list(self.features) if self.features is not None else self.ids.column_names
        out = {}
        for field in fields:
            column = columns.get(field, field)
            if field not in columns and column not in (names or []):
                column = next((c for c in (*[a for a, f in self.task.aliases.items() if f == field], "caption")
                               if field == "text" and c in (names or [])), column)
            if names is not None and column not in names:
                raise ConfigError(f"{where}: columns.{field}: no column '{column}' in {self.where} "
                                  f"(columns: {', '.join(names)})")
            if self.features is not None:
                _check_type(field, column, self.features[column], self.task, where)
            out[field] = column
        return out

    def shards(self) -> list[str]:
        if self.names is not None:
            return list(self.names)
        return [f"{self.where}#shard-{i:05d}-of-{self.n:05d}" for i in range(self.n)]

    def records(self, shard: int) -> Iterator[tuple[str, Any]]:
        row = 0
        for batch in self.ids.shard(num_shards=self.n, index=shard, contiguous=True).iter(batch_size=ROWS_PER_READ):
            columns = list(batch)
            for values in zip(*(batch[c] for c in columns)):
                yield str(row), dict(zip(columns, values))
                row += 1

    def parse(self, raw: dict[str, Any], shard: str, key: str) -> dict[str, Any]:
        record: dict[str, Any] = {}
        for field, column in self.columns.items():
            value = raw.get(column)
            feature = self.features.get(column) if self.features is not None else None
            if field in MODALITIES and MODALITIES[field].from_bytes is not None:  # a medium stored as bytes
                value = self._media(value, field, f"{shard}:{key}.{column}")
            elif field == "label" and hasattr(feature, "int2str") and isinstance(value, int):
                value = feature.int2str(value)
            elif field == "messages":
                value = self._messages(value, raw, shard, key)
            record[field] = value
        return record

    def _media(self, value: Any, kind: str, name: str) -> Blob | str:
        if value is None:
            raise ValueError(f"'{kind}' is null ({name})")
        if isinstance(value, (bytes, bytearray, memoryview)):
            return Blob(name, bytes(value))
        if isinstance(value, dict):
            if value.get("bytes") is not None:
                return Blob(name, bytes(value["bytes"]))
            if value.get("array") is not None:
                return Blob(name, array=value["array"], rate=int(value.get("sampling_rate") or 0) or None)
            value = value.get("path")
        if isinstance(value, str) and value:
            if self.root is None:
                if not os.path.isfile(value):
                    raise ValueError(f"{kind} file not found: {value}")
                return os.path.abspath(value)
            return media_path(value, self.root, kind)
        raise ValueError(f"'{kind}' must be bytes, a path or an {kind} struct, got {type(value).__name__} ({name})")

    def _messages(self, messages: Any, raw: dict[str, Any], shard: str, key: str) -> Any:
        """Media parts name another column of the row (its bytes / path) or a path."""
        def convert(kind: str, value: Any) -> Blob | str:
            cell = raw[value] if isinstance(value, str) and value in raw else value
            return self._media(cell, kind, f"{shard}:{key}.{value}")

        return map_media_parts(messages, convert)


def _check_schemas(files: list[str], columns: dict[str, str], where: str) -> None:
    """Every file holds the mapped columns, typed as in the first (``datasets`` reads the first file's schema
    only, and would cast or null the others' cells row by row). ConfigError naming the file and column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def schema(path: str) -> pa.Schema:
        if path.endswith(".parquet"):
            return pq.read_schema(path)
        with pa.memory_map(path) as stream:  # datasets writes Arrow IPC streams; others write IPC files
            try:
                return pa.ipc.open_stream(stream).schema
            except pa.ArrowInvalid:
                return pa.ipc.open_file(stream).schema

    first = schema(files[0])
    for path in files[1:]:
        other = schema(path)
        for field, column in columns.items():
            if column not in other.names:
                raise ConfigError(f"{where}: columns.{field}: {path} has no column '{column}' (columns: "
                                  f"{', '.join(other.names)})")
            if other.field(column).type != first.field(column).type:
                raise ConfigError(f"{where}: columns.{field}: column '{column}' is {other.field(column).type} in "
                                  f"{path} but {first.field(column).type} in {files[0]}")


def _check_type(field: str, column: str, feature: Any, task: Any, where: str) -> None:
    import datasets

    dtype = getattr(feature, "dtype", None)
    if field in MODALITIES:
        ok = (isinstance(feature, (datasets.Image, datasets.Audio)) or dtype in MEDIA_TYPES
              or (isinstance(feature, dict) and ("bytes" in feature or "path" in feature)))
        need = "bytes, paths or an Image / Audio feature"
    elif field == "messages":
        ok = isinstance(feature, (list, datasets.Sequence)) or type(feature).__name__ in ("List", "LargeList")
        need = "a list of messages"
    elif field == "label":
        ok = dtype in TEXT_TYPES or isinstance(feature, datasets.ClassLabel)
        need = "strings or a ClassLabel"
    else:
        inner = getattr(feature, "feature", None)
        ok = dtype in TEXT_TYPES or (field in task.list_fields and getattr(inner, "dtype", None) in TEXT_TYPES)
        need = "strings" + (" or lists of strings" if field in task.list_fields else "")
    if not ok:
        raise ConfigError(f"{where}: columns.{field}: column '{column}' holds {feature}; the {field} field needs "
                          f"{need}")
