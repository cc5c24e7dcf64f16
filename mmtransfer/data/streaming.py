"""Streaming data sources (WebDataset shards, Hugging Face datasets) as resumable DataLoaders.

A *source* (``mmtransfer.data.webdataset_source``, ``mmtransfer.data.hf_source``) lists its shards and reads a
shard's raw records one at a time; ``StreamingDataset`` turns them into the same batches a JSONL manifest gives:

1. Split. Every rank runs ``num_workers`` DataLoader workers (one when 0): ``N = world_size * workers`` slots.
   Each epoch the shard order is a seeded permutation (the same on every rank); slot ``s`` reads shards
   ``s, s + N, ...`` of it. With fewer shards than slots, every slot reads every shard and keeps the records
   ``i`` with ``i % N == s``. Either way no record is read by two slots in an epoch; an epoch ends when every
   slot's stream has ended (epochs of different ranks may differ in length by up to one shard's worth).
2. Shuffle (``shuffle_buffer`` > 0): a seeded buffer of raw (still encoded) records per slot and epoch.
3. Parse (cheap, no media decoding): a record -> a task sample (media as ``Blob``\\ s or paths), or a ``Skip``
   named ``shard:key`` when it is unusable; captioning with several captions gives one entry per caption.
4. Batch: ``batch_size`` entries are decoded (``TaskDataset.item``) and collated (``Collator``) in the worker.

Exact resume: each batch says which slot made it and how many entries that slot has consumed; the ``Mixture``
keeps the latest count per slot and restarts each slot's stream skipping that many entries (they are read and
parsed, never decoded), rotating the workers so the round-robin order of the DataLoader continues where it
stopped. This needs the same ``world_size`` and ``num_workers`` as the interrupted run; with others the
interrupted epoch starts over (with a warning).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

import mmtransfer.data.hf_source  # noqa: F401 (registers the source)
import mmtransfer.data.webdataset_source  # noqa: F401 (registers the source)
from mmtransfer.data.records import Skip, report
from mmtransfer.data.source import SOURCE_TYPES, Source, parse_record, shard_records
from mmtransfer.errors import DataError

log = logging.getLogger(__name__)


Entry = tuple[dict[str, Any], str] | Skip  # (sample, target) or a skip


class StreamingDataset(IterableDataset):
    """Collated batches from a ``Source`` for one rank (see the module doc). ``items`` is a
    ``TaskDataset`` (no samples needed) whose ``item`` decodes an entry; ``to_sample`` turns a parsed record
    into a checked task sample (ValueError when it is unusable)."""

    def __init__(
        self,
        source: Source,
        to_sample: Callable[[dict[str, Any]], dict[str, Any]],
        items: Any,
        collator: Callable[[list[Any]], dict[str, Any]],
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        shuffle_buffer: int = 1000,
        expand_targets: bool = True,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        on_error: str = "skip",
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.source, self.to_sample, self.items, self.collator = source, to_sample, items, collator
        self.batch_size, self.seed, self.shuffle, self.shuffle_buffer = batch_size, seed, shuffle, shuffle_buffer
        self.expand_targets, self.on_error = expand_targets, on_error
        self.rank, self.world_size, self.workers = rank, world_size, max(1, num_workers)
        self.shard_names = source.shards()
        if not self.shard_names:
            raise DataError(f"{source.where}: no shards")
        self.epoch, self.consumed, self.offset = 0, {}, 0

    # -- position ------------------------------------------------------------------------------------
    def layout(self) -> list[int]:
        return [self.world_size, self.workers]

    def set_position(self, epoch: int, state: dict[str, Any] | None = None) -> None:
        """Start ``epoch``; ``state`` (from ``advance``) continues it where it stopped."""
        self.epoch, self.consumed, self.offset = epoch, {}, 0
        if not state:
            return
        if list(state["layout"]) != self.layout():
            log.warning("%s: the data position was saved with [world_size, num_workers] = %s, this run has %s: "
                        "epoch %d starts over", self.source.where, state["layout"], self.layout(), epoch)
            return
        self.consumed = {int(k): int(v) for k, v in state["consumed"].items()}
        self.offset = int(state["offset"])

    def advance(self, state: dict[str, Any] | None, stream: tuple[int, int]) -> dict[str, Any]:
        """The position after a batch whose ``stream`` is (slot's worker, entries it has consumed)."""
        worker, count = stream
        consumed = dict((state or {}).get("consumed", {}))
        consumed[str(worker)] = count
        return {"layout": self.layout(), "consumed": consumed, "offset": (worker + 1) % self.workers}

    # -- reading -------------------------------------------------------------------------------------
    def _slot(self) -> tuple[int, int]:
        info = get_worker_info()
        physical = info.id if info is not None else 0
        if info is not None and info.num_workers != self.workers:
            raise RuntimeError(f"built for {self.workers} workers, iterated by {info.num_workers}")
        worker = (physical + self.offset) % self.workers
        return worker, self.rank * self.workers + worker

    def _raw(self, slot: int) -> Iterator[tuple[str, str, Any] | Skip]:
        """(shard name, key, raw record) of this slot's share of the epoch, in order; Skip for a broken shard."""
        n, slots = len(self.shard_names), self.world_size * self.workers
        order = np.random.default_rng([self.seed, self.epoch]).permutation(n) if self.shuffle else np.arange(n)
        by_shard = n >= slots
        mine = order[slot::slots] if by_shard else order
        index = 0
        for shard in mine.tolist():
            name = self.shard_names[shard]
            for record in shard_records(self.source, shard, name):
                index += 1
                if by_shard or (index - 1) % slots == slot:
                    yield record if isinstance(record, Skip) else (name, *record)

    def _shuffled(self, stream: Iterator[Any], slot: int) -> Iterator[Any]:
        if not self.shuffle or self.shuffle_buffer <= 1:
            yield from stream
            return
        rng = np.random.default_rng([self.seed, self.epoch, slot, 1])
        buffer: list[Any] = []
        for record in stream:
            if len(buffer) < self.shuffle_buffer:
                buffer.append(record)
                continue
            j = int(rng.integers(len(buffer)))
            buffer[j], record = record, buffer[j]
            yield record
        rng.shuffle(buffer)
        yield from buffer

    def _entries(self, record: tuple[str, str, Any] | Skip) -> list[Entry]:
        if isinstance(record, Skip):
            return [record]
        sample = parse_record(self.source, self.to_sample, *record)
        if isinstance(sample, Skip):
            return [sample]
        task = self.items.task
        targets = task.targets(sample) if self.expand_targets else [task.target(sample)]
        return [(sample, t) for t in targets]

    def entries(self, slot: int, worker: int = 0) -> Iterator[Entry]:
        """This slot's entries of the epoch, past the consumed ones (read and parsed, not decoded)."""
        count, start = 0, self.consumed.get(worker, 0)
        for record in self._shuffled(self._raw(slot), slot):
            for entry in self._entries(record):
                count += 1
                if count > start:
                    yield entry

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, slot = self._slot()
        count = self.consumed.get(worker, 0)
        batch: list[Entry] = []
        for entry in self.entries(slot, worker):
            batch.append(entry)
            if len(batch) == self.batch_size:
                count += len(batch)
                yield self._collate(batch, worker, count)
                batch = []
        if batch:
            count += len(batch)
            yield self._collate(batch, worker, count)

    def _collate(self, entries: list[Entry], worker: int, count: int) -> dict[str, Any]:
        items = []
        for entry in entries:
            if isinstance(entry, Skip):
                if entry not in self.items.skipped:
                    report(entry, self.on_error, self.items.skipped)
                items.append(entry)
            else:
                items.append(self.items.item(*entry))
        batch = self.collator(items)
        batch["stream"] = (worker, count)
        return batch


def _identity(batch: Any) -> Any:
    return batch


def make_stream_loader(dataset: StreamingDataset, num_workers: int = 0, seed: int = 0) -> DataLoader:
    """A DataLoader over the dataset's own batches; a ``Mixture`` positions it (``set_position``)."""
    generator = torch.Generator().manual_seed(seed)  # not the global RNG: see ``make_loader``
    return DataLoader(dataset, batch_size=None, collate_fn=_identity, num_workers=num_workers,
                      generator=generator)


def open_source(kind: str, spec: str, task: Any, columns: dict[str, str] | None = None, split: str = "train",
                where: str = "train") -> Source:
    """The ``kind`` source of ``spec`` (``webdataset``, ``hf``: see those modules; ``SOURCE_TYPES`` lists them)."""
    return SOURCE_TYPES.build(kind, spec=spec, task=task, columns=columns, split=split, where=where)
