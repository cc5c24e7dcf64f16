"""Shared steps of the training tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from mmtransfer.train import data as train_data
from mmtransfer.train import loop, train


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


def record_weight_changes(monkeypatch: pytest.MonkeyPatch) -> dict[int, bool]:
    """Step -> whether that training step changed any parameter (filled as the run goes)."""
    real_step, changed = loop._train_step, {}

    def step(model_p: torch.nn.Module, batch: dict, opt: Any, sched: Any, cfg: Any, acc: Any, state: Any,
             *rest: Any) -> float:
        before = [p.detach().clone() for p in model_p.parameters()]
        loss = real_step(model_p, batch, opt, sched, cfg, acc, state, *rest)
        changed[state.step + 1] = any(not torch.equal(a, p) for a, p in zip(before, model_p.parameters()))
        return loss

    monkeypatch.setattr(loop, "_train_step", step)
    return changed


def write_mixed_pair(synthetic: Path) -> Path:
    """``chat_pair.jsonl`` in ``synthetic``: a text-only conversation, then one with an image and a clip (with two
    ranks and batches of one, each step gives one rank each)."""
    pair = [{"messages": [{"role": "user", "content": "just text, positive or negative?"},
                          {"role": "assistant", "content": "positive"}]},
            {"messages": [{"role": "user", "content": [{"type": "image", "image": "shapes/images/train_00000.png"},
                                                       {"type": "audio", "audio": "tones/audio/train_00000.wav"},
                                                       {"type": "text", "text": "colour, then digits?"}]},
                          {"role": "assistant", "content": "red; one"}]}]
    path = synthetic / "chat_pair.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in pair))
    return path
