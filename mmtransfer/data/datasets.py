"""TaskDataset: task samples -> raw items with decoded media; files that fail to decode are skipped or raise."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch.utils.data import Dataset

from mmtransfer.chat import parts
from mmtransfer.data.records import Blob, Skip, check_on_error, report
from mmtransfer.modalities import modality as modality_of
from mmtransfer.tasks import Sample, Task, get_task

Item = dict[str, Any]


class TaskDataset(Dataset):
    """Raw items for the ``Collator`` and ``Task.evaluate``.

    An item is the sample's fields with the media decoded in place (``image``: PIL RGB; ``audio``: float32
    mono [T] at ``sample_rate``, any input rate / channels / WAV or FLAC sub-format) plus ``target`` (str,
    the LM target), ``references`` (list[str]) and, for media tasks, ``file`` (the media path, which the
    feature cache hashes) and ``sample_rate`` (audio). A conversation sample (``messages``) keeps its messages
    with each media part carrying ``raw`` (its decoded encoder items; a video's ``video_frames`` frames) and
    ``file`` (its path).

    A file that fails to decode gives a ``Skip`` instead of an item (the collator drops it and counts it)
    and is recorded once in ``skipped``, or raises ``DataError`` with ``on_error="raise"``. DataLoader workers
    append to their own copy of ``skipped``: with ``num_workers > 0`` read the batches' ``skipped`` instead.

    ``expand_targets=True`` makes one item per training target (each reference caption of an image);
    leave it off for evaluation, where each sample should count once.

    ``cached(file) -> bool`` (a ``FeatureCache.contains``; or a dict of them per encoder kind): files it accepts
    are not decoded, their item (or part's ``raw``) holds ``None`` (the collator reads their features from the
    cache, or decodes them if they are gone).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        task: str | Task,
        *,
        sample_rate: int | None = None,
        on_error: str = "skip",
        expand_targets: bool = False,
        cached: Callable[[str], bool] | dict[str, Callable[[str], bool]] | None = None,
        video_frames: int = 8,
    ) -> None:
        check_on_error(on_error)
        self.task = get_task(task)
        self.spec = modality_of(self.task.modality) if self.task.modality is not None else None
        if self.spec is not None and self.spec.timed and sample_rate is None:
            raise ValueError(f"an {self.spec.name} task needs sample_rate (the {self.spec.encoder} encoder's, e.g. "
                             f"model.encoders['{self.spec.encoder}'].sample_rate)")
        self.samples = list(samples)
        self.sample_rate = sample_rate
        self.on_error = on_error
        self.entries = [  # (sample index, target) per item
            (i, target)
            for i, sample in enumerate(self.samples)
            for target in (self.task.targets(sample) if expand_targets else [self.task.target(sample)])
        ]
        self.skipped: list[Skip] = []
        if callable(cached):  # one check: for the task's modality
            if self.task.modality is None:
                raise ValueError(f"task '{self.task.name}': pass cached as a dict of checks per encoder kind")
            cached = {self.task.modality: cached}
        self.cached = dict(cached or {})
        self.video_frames = video_frames

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> Item | Skip:
        i, target = self.entries[index]
        return self.item(self.samples[i], target, i)

    def item(self, sample: Sample, target: str, i: int = 0) -> Item | Skip:
        """One sample's item for ``target`` (media decoded), or its ``Skip``; ``i`` names it when it has no
        ``source``. Streaming datasets call this for the samples they read."""
        item = {**sample, "target": target, "references": self.task.references(sample)}
        modality = self.task.modality
        try:
            if "messages" in sample:
                item["messages"] = [self._decoded(m) for m in sample["messages"]]
                return item
            if modality is None:
                return item
            item[modality] = None if self._is_cached(modality, sample[modality]) else decode(
                modality, sample[modality], self.sample_rate)
        except (ValueError, OSError) as err:
            path, line = sample.get("source", ("<samples>", i))
            skip = Skip(path, line, str(err))
            if skip not in self.skipped:  # once, however many epochs read it
                report(skip, self.on_error, self.skipped)
            return skip
        if isinstance(sample[modality], str):  # a path (in-memory media, a ``Blob``, has none)
            item["file"] = sample[modality]
        if self.spec.timed:
            item["sample_rate"] = self.sample_rate
        return item

    def _is_cached(self, kind: str, value: Any) -> bool:
        """Whether ``value`` is a file whose features the ``kind`` cache holds (so it need not be decoded)."""
        return kind in self.cached and isinstance(value, str) and self.cached[kind](value)

    def _decoded(self, message: dict[str, Any]) -> dict[str, Any]:
        """A message whose media parts carry their decoded encoder items (``raw``) and path (``file``)."""
        content = []
        for part in parts(message):
            if part["type"] != "text":
                spec, value = modality_of(part["type"]), part[part["type"]]
                cached = spec.name == spec.encoder and self._is_cached(spec.name, value)
                if not cached and isinstance(value, Blob):  # in-memory media from a shard: decode it first
                    part = {**part, part["type"]: value.open(part["type"], self.sample_rate)}
                part = {**part, "raw": None if cached else spec.load(part, self.sample_rate, self.video_frames)}
                if isinstance(value, str):
                    part["file"] = value
            content.append(part)
        return {**message, "content": content}

    def lengths(self) -> list[float]:
        """Per item, for length bucketing: audio seconds (from the header) or characters of prompt + target."""
        out = []
        for i, target in self.entries:
            sample = self.samples[i]
            if "messages" in sample:
                out.append(sum(len(p["text"]) for m in sample["messages"] for p in parts(m) if p["type"] == "text"))
            elif self.spec is not None and self.spec.timed:
                media = sample[self.spec.name]
                out.append(sample["duration"] if "duration" in sample else self.spec.seconds(media, str(media)))
            else:
                out.append(sum(len(v) for v in self.task.prompt_fields(sample).values()) + len(target))
        return out


def decode(modality: str, media: Any, sample_rate: int | None = None) -> Any:
    """A path (or already-decoded media, or a streaming ``Blob``) -> PIL RGB image, or float32 mono audio [T] at
    ``sample_rate``."""
    if isinstance(media, Blob):
        return media.open(modality, sample_rate)
    [raw] = modality_of(modality).load({"type": modality, modality: media}, sample_rate, 1)
    return raw

