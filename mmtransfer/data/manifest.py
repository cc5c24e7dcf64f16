"""Read a JSONL manifest into task samples, with cheap per-line checks and errors that name file:line.

One JSON object per line; media paths are relative to the manifest's directory (or absolute, but inside
it). Per task: ``{"image", "text"}`` (captioning; ``text`` a caption or a list, alias ``captions``),
``{"image", "question", "answer"}`` (VQA; ``answer`` a string or the list of human answers, alias
``answers``), ``{"audio", "text"}`` (ASR), ``{"text", "label"}`` (classification). Blank lines are ignored;
other keys are ignored.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import soundfile as sf

from mmtransfer.errors import ConfigError, DataError, MissingFileError
from mmtransfer.tasks import Sample, Task, get_task

log = logging.getLogger(__name__)
MAX_LOGGED_SKIPS = 10  # per manifest; the full list is in ``Manifest.skipped``
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
class Manifest(Sequence[Sample]):
    """The good samples of a manifest (a sequence of dicts) and the ``skipped`` lines."""

    path: Path
    samples: list[Sample] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: Any) -> Any:  # int -> Sample, slice -> list[Sample]
        return self.samples[index]


def audio_seconds(path: str | os.PathLike) -> float:
    """Duration from the file header (no decoding). ValueError if the header cannot be read."""
    try:
        info = sf.info(str(path))
    except RuntimeError as err:  # soundfile's LibsndfileError
        raise ValueError(f"cannot read audio file {path}: {err}") from None
    return info.frames / info.samplerate


def read_manifest(
    path: str | os.PathLike,
    task: str | Task,
    *,
    labels: Collection[str] | None = None,
    on_error: str = "skip",
    max_audio_seconds: float | None = None,
    media_root: str | os.PathLike | None = None,
) -> Manifest:
    """Read and check every line. A bad line (malformed JSON, missing or empty field, a media path that
    escapes the media root (``media_root``, default: the manifest's directory) or does not exist, a label not
    in ``labels``, unreadable audio header,
    audio longer than ``max_audio_seconds``) is skipped and recorded in ``Manifest.skipped``, or raises
    ``DataError`` with ``on_error="raise"``. For the ``chat`` task the file is a conversation file, read by
    ``mmtransfer.data.conversations.read_conversations`` (format told apart automatically).

    Each sample gets ``source`` = (manifest path, line); media paths become absolute; audio samples get
    ``duration`` (seconds, from the header) for length bucketing.
    """
    check_on_error(on_error)
    task = get_task(task)
    if task.api == "chat":  # conversations have their own reader (messages, LLaVA, ShareGPT)
        from mmtransfer.data.conversations import read_conversations

        return read_conversations(path, on_error=on_error, media_root=media_root)
    path = Path(path)
    root = media_root_of(path, media_root)
    manifest = Manifest(path)
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed by the with below)
    except OSError as err:
        raise MissingFileError(f"{path}: cannot open the manifest: {err.strerror}") from None
    with f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                sample = _parse(raw, task, root, labels, max_audio_seconds)
            except ValueError as err:
                report(Skip(str(path), lineno, str(err)), on_error, manifest.skipped)
                continue
            sample["source"] = (str(path), lineno)
            manifest.samples.append(sample)
    if manifest.skipped:
        total = len(manifest.samples) + len(manifest.skipped)
        log.warning("%s: skipped %d of %d samples", path, len(manifest.skipped), total)
    return manifest


def _parse(
    raw: bytes, task: Task, root: str, labels: Collection[str] | None, max_audio_seconds: float | None
) -> Sample:
    """One line -> a sample; ValueError says what is wrong."""
    try:
        record: Any = json.loads(raw)
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
    sample = task.normalize(record)
    if task.modality is not None:
        sample[task.modality] = _media_path(sample[task.modality], root, task.modality)
    if labels is not None and "label" in sample and sample["label"] not in labels:
        raise ValueError(f"unknown label '{sample['label']}'; labels are {sorted(labels)}")
    if task.modality == "audio":
        sample["duration"] = audio_seconds(sample["audio"])
        if sample["duration"] == 0:
            raise ValueError(f"audio file {sample['audio']} is empty")
        if max_audio_seconds is not None and sample["duration"] > max_audio_seconds:
            raise ValueError(
                f"audio is {sample['duration']:.1f} s, longer than max_audio_seconds={max_audio_seconds}"
            )
    return sample


def media_root_of(data_file: Path, media_root: str | os.PathLike | None) -> str:
    """The folder a data file's media paths resolve against and must stay inside: ``media_root`` when given (one
    place for the images of many manifests), else the data file's own folder."""
    return os.path.normpath(os.path.abspath(media_root if media_root is not None else data_file.parent))


def _media_path(value: str, root: str, modality: str) -> str:
    """Resolve against ``root`` lexically (symlinks inside the root are trusted) and check it stays inside."""
    resolved = os.path.normpath(os.path.join(root, value))  # an absolute ``value`` replaces ``root``
    if os.path.commonpath([root, resolved]) != root:
        raise ValueError(f"{modality} path '{value}' escapes the media root {root} (the data file's folder, or the "
                         "dataset's media_root)")
    if not os.path.isfile(resolved):
        raise ValueError(f"{modality} file not found: {value}")
    return resolved
