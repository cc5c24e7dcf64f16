"""Quantised decoder base (QLoRA): ``decoder.quantization: {bits: 4 | 8, quant_type: nf4 | fp4, double_quant: bool,
compute_dtype: fp32 | bf16 | fp16}`` loads the pretrained decoder through bitsandbytes (transformers'
``BitsAndBytesConfig``); LoRA adapters train on top in fp32. Needs the ``quantization`` extra (bitsandbytes,
which runs 4- and 8-bit on the CPU as well as on CUDA) and pretrained weights (``decoder.model``).
"""

from __future__ import annotations

from typing import Any

from torch import nn
from transformers import BitsAndBytesConfig

from mmtransfer.config import DecoderConfig
from mmtransfer.errors import ConfigError
from mmtransfer.extras import require

BITS = (4, 8)
QUANT_TYPES = ("nf4", "fp4")
KEYS = ("bits", "quant_type", "double_quant", "compute_dtype")


def check_quantization(cfg: DecoderConfig) -> None:
    """Check ``cfg.quantization`` (and that bitsandbytes is installed) before any weight loads."""
    from mmtransfer.dtypes import parse_dtype

    q = cfg.quantization
    if q is None:
        return
    if not isinstance(q, dict):
        raise ConfigError(f"decoder.quantization: expected a mapping such as {{bits: 4}}, got {q!r}")
    unknown = sorted(set(q) - set(KEYS))
    if unknown:
        raise ConfigError(f"decoder.quantization.{unknown[0]}: unknown key; supported: {', '.join(KEYS)}")
    if q.get("bits") not in BITS:
        raise ConfigError(f"decoder.quantization.bits: {q.get('bits')!r} is not supported; supported: 4, 8")
    if q.get("quant_type", "nf4") not in QUANT_TYPES:
        raise ConfigError(f"decoder.quantization.quant_type: {q['quant_type']!r} is not supported; "
                          f"supported: {', '.join(QUANT_TYPES)}")
    if not isinstance(q.get("double_quant", False), bool):
        raise ConfigError(f"decoder.quantization.double_quant: expected true or false, got {q['double_quant']!r}")
    parse_dtype(q.get("compute_dtype", "fp32"), "decoder.quantization.compute_dtype")
    if cfg.config is not None or not cfg.pretrained:
        raise ConfigError("decoder.quantization: needs pretrained weights (decoder.model with pretrained: true, "
                          "no decoder.config); supported: a hub id or a saved model directory")
    require(["bitsandbytes"], "decoder.quantization")


def bnb_config(q: dict[str, Any]) -> BitsAndBytesConfig:
    """transformers' ``BitsAndBytesConfig`` for a checked ``decoder.quantization`` mapping."""
    from mmtransfer.dtypes import parse_dtype

    if q["bits"] == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=q.get("quant_type", "nf4"),
        bnb_4bit_use_double_quant=q.get("double_quant", False),
        bnb_4bit_compute_dtype=parse_dtype(q.get("compute_dtype", "fp32"), "decoder.quantization.compute_dtype"),
    )


def is_quantized(module: nn.Module) -> bool:
    """Whether ``module`` (an HF model, or one wrapped by peft) holds bitsandbytes weights."""
    return bool(getattr(module, "is_quantized", False)
                or getattr(getattr(module, "base_model", None), "is_quantized", False)
                or getattr(getattr(getattr(module, "base_model", None), "model", None), "is_quantized", False))
