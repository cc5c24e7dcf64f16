"""Resumable checkpoints, written atomically: the directory on disk is always the old one or the new one.

Layout: ``model/`` (a full ``save_pretrained``), ``optimizer.pt`` and ``scheduler.pt`` (plain state dicts,
read back with ``torch.load(weights_only=True)``: no unpickling of arbitrary objects) and ``state.pt``
(step counters, RNG states, data position: tensors, numbers and lists only).
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

import torch

from mmtransfer.atomic import atomic_dir, recover
from mmtransfer.model import MultimodalGPT
from mmtransfer.model.saving import load, save_pretrained
from mmtransfer.train import sharding


def save_checkpoint(
    directory: Path,
    model: MultimodalGPT,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    tensors: dict[str, torch.Tensor] | None = None,
    optimizer_state: dict[str, Any] | None = None,
) -> None:
    """Write a resumable checkpoint to ``directory`` atomically. A sharded (FSDP) run passes its gathered
    ``tensors`` and ``optimizer_state`` (``mmtransfer.train.sharding.full_state``): the checkpoint is then the same
    full model, with the optimiser state keyed by parameter name."""
    with atomic_dir(directory) as tmp:
        save_pretrained(model, tmp / "model", tensors=tensors)
        torch.save(optimizer.state_dict() if optimizer_state is None else optimizer_state, tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(state | {"rng": rng_state()}, tmp / "state.pt")


def exists(directory: Path) -> bool:
    """Whether ``directory`` holds a checkpoint, after putting back the previous one if a write was killed
    between its two renames (see ``mmtransfer.atomic``)."""
    return (recover(directory) / "state.pt").exists()


def load_model(directory: Path) -> MultimodalGPT:
    return load(directory / "model")


def load_training_state(
    directory: Path, optimizer: torch.optim.Optimizer, scheduler: Any, model: torch.nn.Module | None = None
) -> dict[str, Any]:
    """Restore optimiser, scheduler and RNG states; return the saved trainer state. ``model``: a sharded model,
    whose optimiser state was saved gathered (see ``save_checkpoint``)."""
    if model is not None and sharding.is_sharded(model):
        sharding.load_optimizer_state(model, optimizer, _load(directory / "optimizer.pt"))
    else:
        optimizer.load_state_dict(_load(directory / "optimizer.pt"))
    scheduler.load_state_dict(_load(directory / "scheduler.pt"))
    state = _load(directory / "state.pt")
    set_rng_state(state.pop("rng"))
    return state


def read_state(directory: Path) -> dict[str, Any]:
    return _load(directory / "state.pt")


def _load(path: Path) -> Any:
    """``torch.load(weights_only=True)``: tensors, numbers, strings and containers only, never code."""
    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [x for x in str(err).splitlines() if "GLOBAL" in x or "global" in x]  # what it tried to load
        raise ValueError(
            f"{path}: refused to load: it holds objects other than tensors and plain data, which a checkpoint "
            f"written by mmtransfer never does. {' '.join(lines)}".strip()
        ) from None
    except (RuntimeError, EOFError, OSError) as err:  # missing, not a torch file, or truncated
        raise ValueError(f"{path}: not a readable checkpoint file: {err}") from None


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
