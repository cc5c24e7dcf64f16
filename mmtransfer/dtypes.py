"""Storage dtype per component: ``decoder.dtype`` and an encoder's ``dtype``, each ``auto | bf16 | fp16 |
fp32``. A frozen component (or the frozen base under a LoRA decoder) is stored in its dtype; whatever trains
keeps fp32 master weights (autocast runs it in half precision under ``precision: bf16 | fp16``). A component
that trains in part (``last:N``) stays fp32. ``auto`` is fp32 (a GPU run may still put frozen encoders in
half precision: ``half_frozen_encoders``).
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mmtransfer.config import ModelConfig
from mmtransfer.errors import ConfigError
from mmtransfer.modalities import ENCODER_KINDS
from mmtransfer.quantization import check_quantization, is_quantized

if TYPE_CHECKING:
    from mmtransfer.model import MultimodalGPT

DTYPES: dict[str, torch.dtype | None] = {"auto": None, "fp32": torch.float32, "bf16": torch.bfloat16,
                                         "fp16": torch.float16}
ATTENTION = ("sdpa", "flash_attention_2", "eager")
STORED_HALF = ("frozen", "lora")  # policies under which a component's weights stay in its dtype


def parse_dtype(value: Any, field: str) -> torch.dtype | None:
    """The torch dtype a config string names (None for ``auto``); ConfigError naming ``field`` otherwise."""
    if not isinstance(value, str) or value not in DTYPES:
        raise ConfigError(f"{field}: {value!r} is not a dtype; supported: {', '.join(DTYPES)}")
    return DTYPES[value]


def check_model_config(config: ModelConfig) -> None:
    """Check dtypes, quantization and the attention implementation before any weight loads."""
    dec = config.decoder
    parse_dtype(dec.dtype, "decoder.dtype")
    check_quantization(dec)
    for modality in ENCODER_KINDS:
        enc = getattr(config, f"{modality}_encoder")
        if enc is not None:
            parse_dtype(enc.get("dtype", "auto"), f"{modality}_encoder.dtype")
    if dec.attn_implementation is not None and dec.attn_implementation not in ATTENTION:
        raise ConfigError(f"decoder.attn_implementation: {dec.attn_implementation!r} is not supported; "
                          f"supported: {', '.join(ATTENTION)}")
    if dec.attn_implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise ConfigError("decoder.attn_implementation: 'flash_attention_2' needs the flash_attn package "
                          "(pip install flash-attn, CUDA only), which is not installed; supported without it: "
                          "sdpa, eager")


def load_dtype(name: str, policy: str) -> torch.dtype:
    """The dtype to load a component's weights in: its half precision when it will be stored so (no fp32
    copy of a bf16 checkpoint), else fp32 (the master weights of what trains)."""
    dtype = parse_dtype(name, "dtype")
    return dtype if dtype is not None and policy in STORED_HALF else torch.float32


def apply_dtypes(model: MultimodalGPT) -> None:
    """Store each component in its configured dtype for the current trainable policies (called by
    ``set_trainable``); trained parameters are fp32 whatever the component's dtype."""
    cfg = model.config
    _store(model.decoder, parse_dtype(cfg.decoder.dtype, "decoder.dtype"), cfg.trainable.decoder)
    for modality, encoder in model.encoders.items():
        name = (getattr(cfg, f"{modality}_encoder") or {}).get("dtype", "auto")
        _store(encoder, parse_dtype(name, f"{modality}_encoder.dtype"), getattr(cfg.trainable, f"{modality}_encoder"))


def _store(module: nn.Module, dtype: torch.dtype | None, policy: str) -> None:
    if is_quantized(module):
        return  # bitsandbytes weights: their storage is theirs
    if dtype is not None:
        module.to(dtype if policy in STORED_HALF else torch.float32)
    for param in module.parameters():
        if param.requires_grad and param.dtype != torch.float32 and param.is_floating_point():
            param.data = param.data.float()
