"""Precision policy from one string: ``auto`` = bf16 on GPUs that have it, fp16 + GradScaler on those
that don't, fp32 on CPU (CPUs here have no fast bf16)."""

from __future__ import annotations

import torch

from mmtransfer.errors import ConfigError


def resolve_precision(precision: str, device_type: str) -> str:
    """The Accelerate ``mixed_precision`` value ("no", "bf16", "fp16") for a policy string."""
    if device_type != "cuda":
        if precision in ("bf16", "fp16"):
            raise ConfigError(f"precision '{precision}' needs a CUDA GPU; use 'auto' or 'fp32' on {device_type}")
        return "no"
    if precision == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return {"fp32": "no"}.get(precision, precision)


def half_dtype(mixed_precision: str) -> torch.dtype | None:
    """The dtype frozen encoders may run in, or None in fp32."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision)
