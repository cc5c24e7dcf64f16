"""Resumable checkpoints, written atomically: the directory on disk is always the old one or the new one.

Layout: ``model/`` (a full ``save_pretrained``), ``optimizer.pt`` and ``scheduler.pt`` (plain state dicts,
read back with ``torch.load(weights_only=True)``: no unpickling of arbitrary objects) and ``state.pt``
(step counters, RNG states, data position: tensors, numbers and lists only).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from mmtransfer.atomic import atomic_dir
from mmtransfer.model import MultimodalGPT
from mmtransfer.saving import load, save_pretrained


def save_checkpoint(
    directory: Path,
    model: MultimodalGPT,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
) -> None:
    """Write a resumable checkpoint to ``directory`` atomically."""
    with atomic_dir(directory) as tmp:
        save_pretrained(model, tmp / "model")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(state | {"rng": rng_state()}, tmp / "state.pt")


def load_model(directory: Path) -> MultimodalGPT:
    return load(directory / "model")


def load_training_state(
    directory: Path, optimizer: torch.optim.Optimizer, scheduler: Any
) -> dict[str, Any]:
    """Restore optimiser, scheduler and RNG states; return the saved trainer state."""
    optimizer.load_state_dict(torch.load(directory / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(directory / "scheduler.pt", weights_only=True))
    state = torch.load(directory / "state.pt", weights_only=True)
    set_rng_state(state.pop("rng"))
    return state


def read_state(directory: Path) -> dict[str, Any]:
    return torch.load(directory / "state.pt", weights_only=True)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
