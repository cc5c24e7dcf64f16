"""The one place that decides what trains: a policy string per component.

Policies: ``frozen`` (no gradients; feature extraction), ``full`` (everything trains), ``last:N``
(only the last N layers of the component's main layer stack train, e.g. "freeze the lower layers"),
and, for the decoder, ``lora`` (peft LoRA adapters train, the base stays frozen).
"""

from __future__ import annotations

import warnings

from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model
from torch import nn
from transformers.pytorch_utils import Conv1D

from mmtransfer.config import LoraConfig
from mmtransfer.errors import ConfigError

POLICIES = ("frozen", "full", "last:N", "lora")


def check_policy(policy: str, field_name: str, allow_lora: bool = False) -> None:
    """Raise a ValueError naming ``field_name`` when ``policy`` is not a valid policy string."""
    ok = policy in ("frozen", "full") or (policy == "lora" and allow_lora)
    if policy.startswith("last:"):
        ok = policy[5:].isdigit() and int(policy[5:]) > 0
    if not ok:
        valid = [p for p in POLICIES if allow_lora or p != "lora"]
        raise ConfigError(f"trainable.{field_name}: '{policy}' is not one of {valid}")


def layer_stack(module: nn.Module) -> nn.ModuleList:
    """The module's main stack of repeated layers: its longest ``nn.ModuleList`` (transformer blocks in
    timm, HF and torch models alike), found without assuming any model's attribute names."""
    stacks = [m for m in module.modules() if isinstance(m, (nn.ModuleList, nn.Sequential)) and len(m) > 1]
    if not stacks:
        raise ConfigError(f"{type(module).__name__} has no layer stack to apply a last:N policy to")
    return max(stacks, key=len)


def apply_policy(module: nn.Module, policy: str) -> None:
    """Set ``requires_grad`` on ``module``'s parameters according to ``policy`` (not ``lora``)."""
    module.requires_grad_(policy == "full")
    if policy.startswith("last:"):
        n = int(policy[5:])
        for layer in layer_stack(module)[-n:]:
            layer.requires_grad_(True)


def add_lora(decoder: nn.Module, cfg: LoraConfig) -> nn.Module:
    """Wrap the decoder with peft LoRA adapters; only the adapters train. GPT-2-style decoders store
    their projections as transposed ``Conv1D`` weights, which LoRA must know (``fan_in_fan_out``). A bitsandbytes
    base needs nothing more: peft's ``prepare_model_for_kbit_training`` would only cast its unquantised parts to
    fp32 (``decoder.dtype`` decides them) and make inputs require gradients, which gradient checkpointing
    (``MultimodalGPT.enable_gradient_checkpointing``) does not need."""
    peft_cfg = PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        fan_in_fan_out=any(isinstance(m, Conv1D) for m in decoder.modules()),
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():  # peft reads transformers' deprecated is_gradient_checkpointing: not ours to fix
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(decoder, peft_cfg)


def is_frozen(module: nn.Module) -> bool:
    """Whether nothing in ``module`` trains (a frozen encoder: its outputs can be cached, run in half precision,
    left out of FSDP's units)."""
    return not any(p.requires_grad for p in module.parameters())


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(module.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
