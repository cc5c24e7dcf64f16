"""Records -> task samples: the one place where a record's fields, from any reader (a JSONL manifest line, a
WebDataset member group, a Hugging Face dataset row), become a checked sample of a task."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from mmtransfer.chat import check_conversation, parts
from mmtransfer.data.conversations import check_trainable
from mmtransfer.data.records import Blob
from mmtransfer.modalities import Modality, modality
from mmtransfer.tasks import Sample, Task


class ToSample:
    """A record (a dict of fields) -> a checked sample of ``task``; ValueError says why not.

    The checks every reader shares: the task's required fields (``Task.normalize``), a label in ``labels``, and for
    timed media (audio: ``Modality.seconds``) the duration from the header (``sample["duration"]``, seconds),
    neither zero nor over ``max_audio_seconds``. The task's media field holds a path or a ``Blob`` (encoded bytes in
    memory), decoded later. With ``resolve`` (a JSONL manifest's: relative to its media root, checked to exist
    there) a path goes through it; without it (streaming sources) the source has already placed the path. A
    conversational task's record is ``{"messages": [...]}`` with paths or ``Blob``\\ s in its media parts (JSONL
    conversation files have their own reader, ``read_conversations``, for the LLaVA and ShareGPT layouts)."""

    def __init__(self, task: Task, labels: Collection[str] | None = None, max_audio_seconds: float | None = None,
                 resolve: Callable[[str], str] | None = None) -> None:
        self.task, self.labels, self.max_audio_seconds, self.resolve = task, labels, max_audio_seconds, resolve

    def __call__(self, record: dict[str, Any]) -> Sample:
        task, kind = self.task, self.task.modality
        if task.conversational:
            return {"messages": _messages(record.get("messages"))}
        media = record.get(kind) if kind is not None else None
        if self.resolve is None and media is not None and not isinstance(media, (Blob, str)):
            raise ValueError(f"'{kind}' must be encoded bytes or a path, got {type(media).__name__}")
        if isinstance(media, Blob):  # the fields' checks see a stand-in; the bytes are checked when decoded
            sample = task.normalize({**record, kind: "<media>"})
            sample[kind] = media
        else:
            sample = task.normalize(record)
            if kind is not None and self.resolve is not None:
                sample[kind] = self.resolve(sample[kind])
        if self.labels is not None and "label" in sample and sample["label"] not in self.labels:
            raise ValueError(f"unknown label '{sample['label']}'; labels are {sorted(self.labels)}")
        if kind is not None and modality(kind).timed:
            self._check_duration(sample, modality(kind))
        return sample

    def _check_duration(self, sample: Sample, spec: Modality) -> None:
        media = sample[spec.name]
        sample["duration"] = media.seconds() if isinstance(media, Blob) else spec.seconds(media, str(media))
        if sample["duration"] == 0:
            raise ValueError(f"{spec.name} is empty: {media.name if isinstance(media, Blob) else media}")
        if self.max_audio_seconds is not None and sample["duration"] > self.max_audio_seconds:
            raise ValueError(f"{spec.name} is {sample['duration']:.1f} s, longer than max_audio_seconds="
                             f"{self.max_audio_seconds}")


def _messages(messages: Any) -> list[dict[str, Any]]:
    """Check a conversation whose media parts hold ``Blob``\\ s or paths; whitespace-only text parts dropped."""
    if messages is None:
        raise ValueError("missing field 'messages'")
    check_conversation(messages, generation=None)
    out = []
    for number, message in enumerate(messages, start=1):
        content = []
        for part in parts(message):
            kind = part["type"]
            if kind == "text":
                if part["text"].strip():
                    content.append(part)
            else:
                content.append({"type": kind, kind: part[kind]})
        if not content:
            raise ValueError(f"message {number}: empty content (no text, no media)")
        out.append({"role": message["role"], "content": content})
    check_trainable(out)
    return out
