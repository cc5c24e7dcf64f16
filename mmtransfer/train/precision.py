"""Precision policy from one string: ``auto`` = bf16 on GPUs that have it, fp16 + GradScaler on those
that don't, fp32 on CPU. ``bf16`` and ``fp16`` also run on the CPU (autocast there; fp16 with a GradScaler),
e.g. to test mixed precision in CI; CPUs without bf16 units run them many times slower than fp32."""

from __future__ import annotations

import warnings

import torch
from accelerate import Accelerator


def resolve_precision(precision: str, device_type: str) -> str:
    """The Accelerate ``mixed_precision`` value ("no", "bf16", "fp16") for a policy string."""
    if device_type != "cuda":
        if precision in ("bf16", "fp16"):
            warnings.warn(f"precision {precision} on {device_type}: autocast on the CPU; CPUs without bf16/fp16 "
                          "units (AVX512-BF16, AMX) run it many times slower than fp32", stacklevel=2)
            return precision
        return "no"
    if precision == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return {"fp32": "no"}.get(precision, precision)


def enable_cpu_fp16(acc: Accelerator) -> None:
    """Accelerate (1.x) gives fp16 on the CPU neither autocast nor a GradScaler: the run would silently be
    fp32. Attach what it does on a GPU: ``prepare`` then wraps the forward in ``torch.autocast("cpu",
    float16)``, ``backward`` scales the loss and the optimiser step skips on inf / NaN gradients."""
    if acc.mixed_precision == "fp16" and acc.device.type == "cpu" and acc.scaler is None:
        acc.scaler = torch.amp.GradScaler("cpu")
        acc.native_amp = True


def half_dtype(mixed_precision: str) -> torch.dtype | None:
    """The dtype frozen encoders may run in, or None in fp32."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision)
