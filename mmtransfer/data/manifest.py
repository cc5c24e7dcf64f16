"""Read a JSONL manifest into task samples, with cheap per-line checks and errors that name file:line.

One JSON object per line; media paths are relative to the manifest's directory (or absolute, but inside
it). Per task: ``{"image", "text"}`` (captioning; ``text`` a caption or a list, alias ``captions``),
``{"image", "question", "answer"}`` (VQA; ``answer`` a string or the list of human answers, alias
``answers``), ``{"audio", "text"}`` (ASR), ``{"text", "label"}`` (classification). Blank lines are ignored;
other keys are ignored.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection
from pathlib import Path

from mmtransfer.data.conversations import read_conversations
from mmtransfer.data.records import (
    Manifest,
    Skip,
    check_on_error,
    json_object,
    media_path,
    media_root_of,
    report,
)
from mmtransfer.data.samples import ToSample
from mmtransfer.errors import MissingFileError
from mmtransfer.tasks import Task, get_task

log = logging.getLogger(__name__)


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
    if task.conversational:  # conversations have their own reader (messages, LLaVA, ShareGPT)
        return read_conversations(path, on_error=on_error, media_root=media_root)
    path = Path(path)
    root = media_root_of(path, media_root)
    manifest = Manifest(path)
    to_sample = ToSample(task, labels, max_audio_seconds, resolve=lambda value: media_path(value, root, task.modality))
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed by the with below)
    except OSError as err:
        raise MissingFileError(f"{path}: cannot open the manifest: {err.strerror}") from None
    with f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                sample = to_sample(json_object(raw))
            except ValueError as err:
                report(Skip(str(path), lineno, str(err)), on_error, manifest.skipped)
                continue
            sample["source"] = (str(path), lineno)
            manifest.samples.append(sample)
    if manifest.skipped:
        total = len(manifest.samples) + len(manifest.skipped)
        log.warning("%s: skipped %d of %d samples", path, len(manifest.skipped), total)
    return manifest
