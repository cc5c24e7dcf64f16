"""The bottom layer of data reading: a record's checks that every reader shares, what a skipped record says, where
media paths may point, and media held in memory (``Blob``). Light to import: no torch (the CLI checks recipes with
it before torch loads)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from mmtransfer.errors import ConfigError, DataError

log = logging.getLogger(__name__)
MAX_LOGGED_SKIPS = 10  # per data file; the full list is in ``Manifest.skipped``
ON_ERROR = ("skip", "raise")


class Skip(NamedTuple):
    """A bad sample that was left out: where it is (a data file, or a shard), where in it (a file's 1-based line
    or record number, a shard's sample key) and what was wrong."""

    path: str
    line: int | str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


def report(skip: Skip, on_error: str, skipped: list[Skip]) -> None:
    """Raise ``DataError`` (``on_error="raise"``) or record and log the skip."""
    if on_error == "raise":
        raise DataError(str(skip))
    skipped.append(skip)
    if len(skipped) <= MAX_LOGGED_SKIPS:
        log.warning("skipped %s", skip)


def check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise ConfigError(f"on_error: '{on_error}' is not one of {ON_ERROR}")


@dataclass
class Manifest(Sequence[dict[str, Any]]):
    """The good samples read from a data file (a sequence of dicts) and the ``skipped`` records."""

    path: Path
    samples: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: Any) -> Any:  # int -> a sample, slice -> a list of them
        return self.samples[index]


def json_object(raw: bytes | Any) -> dict:
    """A JSONL line (bytes) or an already parsed JSON value -> the object; ValueError says why not."""
    try:
        record = json.loads(raw) if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as err:
        raise ValueError(f"not valid UTF-8: {err}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"malformed JSON: {err}") from None
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")  # noqa: TRY004 (bad data, not a bug)
    try:  # a \ud800-style JSON escape decodes to a lone surrogate, which no tokenizer or file system takes
        json.dumps(record, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"a string holds an unpaired surrogate escape (not valid Unicode): {err}") from None
    return record


def media_root_of(data_file: Path, media_root: str | os.PathLike | None) -> str:
    """The folder a data file's media paths resolve against and must stay inside: ``media_root`` when given (one
    place for the images of many manifests), else the data file's own folder."""
    return os.path.normpath(os.path.abspath(media_root if media_root is not None else data_file.parent))


def media_path(value: str, root: str, modality: str) -> str:
    """Resolve against ``root`` lexically (symlinks inside the root are trusted) and check it stays inside."""
    resolved = os.path.normpath(os.path.join(root, value))  # an absolute ``value`` replaces ``root``
    if os.path.commonpath([root, resolved]) != root:
        raise ValueError(f"{modality} path '{value}' escapes the media root {root} (the data file's folder, or the "
                         "dataset's media_root)")
    if not os.path.isfile(resolved):
        raise ValueError(f"{modality} file not found: {value}")
    return resolved


@dataclass(frozen=True)
class Blob:
    """Encoded media held in memory (a tar member, a dataset cell): ``data`` bytes, or an already-decoded
    audio ``array`` at ``rate``. ``name`` (``shard:key.ext``) is what errors show."""

    name: str
    data: bytes | None = None
    array: Any = None
    rate: int | None = None

    def __repr__(self) -> str:  # never print the bytes
        return f"Blob({self.name!r})"

    def open(self, kind: str, sample_rate: int | None = None) -> Any:
        """Decode through the modality table's ``from_bytes`` of ``kind`` (an image: PIL RGB; audio: float32 mono
        at ``sample_rate``). ValueError on bad bytes, naming the blob, or for a medium that files alone carry."""
        # here, not at the top: the table imports the decoders, and this module stays light for recipe checks
        from mmtransfer.modalities import MODALITIES, modality

        spec = modality(kind)
        if self.array is not None:  # a waveform a dataset decoded already, at ``rate``
            import numpy as np

            from mmtransfer.io import load_audio

            return load_audio(np.asarray(self.array, dtype=np.float32), sample_rate, self._array_rate())
        if spec.from_bytes is None:
            known = ", ".join(name for name, m in MODALITIES.items() if m.from_bytes is not None)
            raise ValueError(f"{self.name}: {kind} media cannot come from a shard or dataset cell (only {known})")
        return spec.from_bytes(self.data, self.name, sample_rate)

    def _array_rate(self) -> int:
        if not self.rate:
            raise ValueError(f"decoded audio {self.name} has no sampling_rate")
        return self.rate

    def seconds(self) -> float:
        """Audio duration from the header (no decoding)."""
        if self.array is not None:
            return len(self.array) / float(self._array_rate())
        from mmtransfer.io import audio_seconds

        return audio_seconds(self.data, self.name)
