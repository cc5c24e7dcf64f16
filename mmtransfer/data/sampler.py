"""A deterministic, resumable batch sampler, optionally grouping items of similar length."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices for one epoch, a pure function of (seed, epoch).

    - ``lengths`` given, ``shuffle``: indices are shuffled, cut into pools of ``pool`` batches, each pool
      is sorted by length and cut into batches, and the batches are shuffled. Batches hold items of
      similar length (little padding) yet differ from epoch to epoch.
    - ``lengths`` given, no shuffle: sorted by length (evaluation).
    - no ``lengths``: plain shuffled (or in-order) batches.

    Resume mid-epoch with ``set_epoch(epoch, start=k)``: the next iteration skips the first ``k`` batches
    (once; later epochs start at 0). With ``world_size > 1`` each rank takes every ``world_size``-th batch
    and all ranks get the same number of batches (up to ``world_size - 1`` batches are dropped per epoch).
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        *,
        lengths: Sequence[float] | None = None,
        shuffle: bool = True,
        seed: int = 0,
        pool: int = 64,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1 or size < 1:
            raise ValueError(f"need size >= 1 and batch_size >= 1, got {size} and {batch_size}")
        if lengths is not None and len(lengths) != size:
            raise ValueError(f"got {len(lengths)} lengths for {size} items")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.size, self.batch_size, self.shuffle, self.seed, self.pool = size, batch_size, shuffle, seed, pool
        self.lengths = None if lengths is None else np.asarray(lengths, dtype=np.float64)
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Use ``epoch``'s order; iterations begin at its batch ``start`` until the next ``set_epoch``."""
        if not 0 <= start <= self.batches_per_epoch():
            raise ValueError(f"start {start} is not in [0, {self.batches_per_epoch()}]")
        self.epoch, self.start = epoch, start

    def batches_per_epoch(self) -> int:
        return math.ceil(self.size / self.batch_size) // self.world_size

    def batches(self) -> list[list[int]]:
        """This rank's batches of the current epoch, from the beginning."""
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.size) if self.shuffle else np.arange(self.size)
        if self.lengths is None:
            batches = _cut(order, self.batch_size)
        elif not self.shuffle:
            batches = _cut(np.argsort(self.lengths, kind="stable"), self.batch_size)
        else:
            span = self.pool * self.batch_size
            batches = []
            for i in range(0, self.size, span):
                chunk = order[i : i + span]
                batches += _cut(chunk[np.argsort(self.lengths[chunk], kind="stable")], self.batch_size)
            batches = [batches[j] for j in rng.permutation(len(batches))]
        return batches[self.rank :: self.world_size][: self.batches_per_epoch()]

    def __iter__(self) -> Iterator[list[int]]:
        # ``start`` holds until the next ``set_epoch``: a DataLoader with worker processes calls ``iter`` on
        # its sampler twice when it builds one iterator, so resetting it here lost the resume position there.
        return iter(self.batches()[self.start :])

    def __len__(self) -> int:
        return self.batches_per_epoch() - self.start


def _cut(indices: np.ndarray, batch_size: int) -> list[list[int]]:
    return [indices[i : i + batch_size].tolist() for i in range(0, len(indices), batch_size)]
