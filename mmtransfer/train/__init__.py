"""Training: ``train(load_train_config("recipe.yaml"))`` or ``mmtransfer train recipe.yaml key=value``.

The loop (torch, Accelerate) is imported on first use, so reading and checking a recipe stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from mmtransfer.train.config import TrainConfig, load_train_config, train_config_from_dict

__all__ = ["NonFiniteLossError", "TrainConfig", "load_train_config", "train", "train_config_from_dict"]


def __getattr__(name: str) -> Any:
    if name in ("NonFiniteLossError", "train"):
        return getattr(importlib.import_module("mmtransfer.train.loop"), name)
    raise AttributeError(f"module 'mmtransfer.train' has no attribute '{name}'")
