"""Shared steps of the training tests."""

from __future__ import annotations

from typing import Any

import pytest

from mmtransfer.train import data as train_data
from mmtransfer.train import train


def interrupt_then_resume(cfg: Any, monkeypatch: pytest.MonkeyPatch, at_batch: int) -> None:
    """Run ``cfg``, interrupted (KeyboardInterrupt) when it asks for batch ``at_batch``, then resume it."""
    real_next, calls = train_data.TrainData.next_batch, {"n": 0}

    def interrupted(self: train_data.TrainData) -> Any:
        calls["n"] += 1
        if calls["n"] == at_batch:
            raise KeyboardInterrupt
        return real_next(self)

    monkeypatch.setattr(train_data.TrainData, "next_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.setattr(train_data.TrainData, "next_batch", real_next)
    train(cfg, resume=True)
