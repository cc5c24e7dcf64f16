"""DataLoaders over a resumable sampler, and a weighted multi-task Mixture of them that can resume."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from mmtransfer.data.collate import Collator
from mmtransfer.data.datasets import TaskDataset
from mmtransfer.data.sampler import BucketBatchSampler


def make_loader(
    dataset: TaskDataset,
    collator: Collator,
    batch_size: int,
    shuffle: bool = True,
    seed: int = 0,
    bucket: bool = False,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """A DataLoader whose ``batch_sampler`` is a ``BucketBatchSampler`` (length-bucketed with ``bucket``;
    call its ``set_epoch`` each epoch, or let a ``Mixture`` do it)."""
    sampler = BucketBatchSampler(
        len(dataset), batch_size, lengths=dataset.lengths() if bucket else None, shuffle=shuffle, seed=seed,
        rank=rank, world_size=world_size,
    )
    # A private generator: creating an iterator draws a worker base seed from it, not from the global
    # RNG, so a run resumed mid-epoch sees the same global random stream (dropout) as an uninterrupted one.
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collator, num_workers=num_workers,
                      generator=generator)


class Mixture:
    """An endless stream of ``(task name, batch)`` over several loaders.

    Each step draws a task with probability proportional to its weight, from the Mixture's own
    ``torch.Generator`` (so nothing else that uses the global RNG changes the draws), and takes that
    loader's next batch; when a loader's epoch ends its next epoch starts (``set_epoch``). With one loader
    it simply cycles through epochs.

    ``state_dict()`` holds the generator state and each loader's ``[epoch, batches consumed]`` (and for a
    streaming loader, ``make_stream_loader``, the entries each of its worker slots has consumed);
    ``load_state_dict`` on a Mixture of the same loaders continues with exactly the batches that would
    have come next.
    """

    def __init__(self, loaders: dict[str, DataLoader], weights: dict[str, float], seed: int = 0) -> None:
        if set(weights) != set(loaders) or not loaders:
            raise ValueError(f"weights for {sorted(weights)} but loaders for {sorted(loaders)}")
        if any(w <= 0 for w in weights.values()):
            raise ValueError(f"weights must be > 0, got {weights}")
        for name, loader in loaders.items():
            if not isinstance(loader.batch_sampler, BucketBatchSampler) and not is_streaming(loader):
                raise TypeError(f"loader '{name}' needs a BucketBatchSampler (build it with make_loader) or a "
                                "StreamingDataset (make_stream_loader)")
        self.names = sorted(loaders)
        self.loaders = loaders
        self.probs = torch.tensor([float(weights[n]) for n in self.names], dtype=torch.float64)
        self.generator = torch.Generator().manual_seed(seed)
        self.positions = {n: [0, 0] for n in self.names}  # [epoch, batches consumed in it]
        self.streams: dict[str, Any] = {n: None for n in self.names}  # streaming loaders: position in the epoch
        self._iters: dict[str, Iterator[dict[str, Any]]] = {}

    def __iter__(self) -> Mixture:
        return self

    def __next__(self) -> tuple[str, dict[str, Any]]:
        name = self.names[int(torch.multinomial(self.probs, 1, generator=self.generator))]
        return name, self._next_batch(name)

    def _next_batch(self, name: str) -> dict[str, Any]:
        position = self.positions[name]
        for _ in range(2):  # the current epoch, then (if it has ended) the next one
            loader = self.loaders[name]
            if name not in self._iters:
                if is_streaming(loader):
                    loader.dataset.set_position(position[0], self.streams[name])
                else:
                    loader.batch_sampler.set_epoch(*position)
                self._iters[name] = iter(loader)
            try:
                batch = next(self._iters[name])
            except StopIteration:
                del self._iters[name]
                position[:] = [position[0] + 1, 0]
                self.streams[name] = None
                continue
            position[1] += 1
            if "stream" in batch:
                self.streams[name] = loader.dataset.advance(self.streams[name], batch.pop("stream"))
            return batch
        raise RuntimeError(f"loader '{name}' gives no batches")

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.generator.get_state(), "positions": {n: list(p) for n, p in self.positions.items()},
                "streams": dict(self.streams)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state["positions"]) != set(self.names):
            raise ValueError(f"state for tasks {sorted(state['positions'])}, but this Mixture has {self.names}")
        self.generator.set_state(state["rng"])
        self.positions = {n: list(p) for n, p in state["positions"].items()}
        self.streams = {n: state.get("streams", {}).get(n) for n in self.names}
        self._iters.clear()


def is_streaming(loader: DataLoader) -> bool:
    """A loader over a ``StreamingDataset`` (positioned with ``set_position``)."""
    return hasattr(loader.dataset, "set_position") and hasattr(loader.dataset, "advance")
