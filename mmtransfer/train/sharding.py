"""FSDP2 on the CPU: the one place the loop shards a model itself.

Accelerate turns FSDP on only for accelerator process groups (``AcceleratorState`` sets ``DistributedType.FSDP``
for MULTI_GPU / NPU / XPU / ...; a gloo group on the CPU is MULTI_CPU, where it ignores ``ACCELERATE_USE_FSDP`` and
the FSDP plugin and wraps the model in DDP). FSDP2 itself (``torch.distributed.fsdp.fully_shard``) runs over gloo,
so under ``ACCELERATE_USE_FSDP=true`` on the CPU the loop applies it here, with the policy Accelerate's FSDP2 path
uses on GPUs: each transformer block (the decoder's ``_no_split_modules`` classes) its own unit, then the root.
Each block of a *trainable* encoder (timm / HF classes named ``*Block`` or ``*Layer``) is a unit too; frozen
encoders, projectors, embeddings and heads stay in the root unit (FSDP2 shards per parameter, so frozen and
trainable parameters may share a unit). On GPUs Accelerate's
own plugin does all this and this module is not used.

Evaluation runs on every rank in lockstep (the same samples in the same order: each forward all-gathers the same
units), with the root unit unsharded, since the inference API reaches the decoder outside the root's forward.
Saves (``final/``, ``best/``, ``checkpoint/``) are gathered: ``full_state`` gives rank 0 the full, unsharded
tensors (the usual ``save_pretrained`` layout, loadable on one process) and the optimiser state keyed by parameter
name, which ``load_optimizer_state`` scatters back on resume.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from mmtransfer.trainable import is_frozen

ENV = "ACCELERATE_USE_FSDP"


def requested(device: torch.device) -> bool:
    """Whether this process should shard with FSDP2 itself: FSDP asked for, on the CPU, in a process group."""
    from accelerate.utils import parse_flag_from_env

    return device.type == "cpu" and parse_flag_from_env(ENV) and dist.is_initialized() and dist.get_world_size() > 1


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def units(model: Any) -> list[nn.Module]:
    """The modules that become their own FSDP unit, innermost first: decoder blocks, then trainable encoder blocks."""
    base = model.decoder.get_base_model() if hasattr(model.decoder, "get_base_model") else model.decoder
    names = set(getattr(base, "_no_split_modules", None) or [])
    out = [m for m in model.decoder.modules() if type(m).__name__ in names]
    for encoder in model.encoders.values():
        if not is_frozen(encoder):
            out += _blocks(encoder)
    return out


def _blocks(module: nn.Module) -> list[nn.Module]:
    """The outermost submodules whose class is a block or layer (timm ``Block`` / ``BasicBlock``, HF
    ``WhisperEncoderLayer``, ...): an encoder's repeated units, which carry no ``_no_split_modules`` list."""
    found = []
    for child in module.children():
        found += [child] if type(child).__name__.endswith(("Block", "Layer")) else _blocks(child)
    return found


def shard(model: Any) -> None:
    """``fully_shard`` every unit, then the whole model (the root unit), in place."""
    from torch.distributed.fsdp import fully_shard

    for unit in units(model):
        fully_shard(unit)
    fully_shard(model)


@contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """The root unit's parameters unsharded (and kept so across forwards) while the inference API runs."""
    if not is_sharded(model):
        yield
        return
    model.set_reshard_after_forward(False, recurse=False)
    model.unshard()
    try:
        yield
    finally:
        model.reshard()
        model.set_reshard_after_forward(True, recurse=False)


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer | None = None
               ) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any] | None]:
    """(model tensors, optimiser state), full and on the CPU on rank 0 (empty elsewhere); a collective: every rank
    calls it. (None, None) for a model that is not sharded."""
    if not is_sharded(model):
        return None, None
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    tensors = get_model_state_dict(model, options=options)
    optim = get_optimizer_state_dict(model, _inner(optimizer), options=options) if optimizer is not None else None
    return tensors, optim


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Scatter a full optimiser state (``full_state``'s) onto this rank's shards."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, _inner(optimizer), state, options=StateDictOptions(full_state_dict=True))


def plain(value: torch.Tensor) -> torch.Tensor:
    """A DTensor (e.g. the gradient norm of sharded parameters) as an ordinary full tensor."""
    return value.full_tensor() if hasattr(value, "full_tensor") else value


def _inner(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimiser inside Accelerate's wrapper."""
    return getattr(optimizer, "optimizer", optimizer)
