"""How a model's weights are stored.

Storage dtype per component: ``decoder.dtype`` and an encoder's ``dtype``, each ``auto | bf16 | fp16 | fp32``.
A frozen component (or the frozen base under a LoRA decoder) is stored in its dtype; whatever trains keeps fp32
master weights (autocast runs it in half precision under ``precision: bf16 | fp16``). A component
that trains in part (``last:N``) stays fp32. ``auto`` is fp32 (a GPU run may still put frozen encoders in
half precision: ``half_frozen_encoders``).

Quantised decoder base (QLoRA): ``decoder.quantization: {bits: 4 | 8, quant_type: nf4 | fp4, double_quant: bool,
compute_dtype: fp32 | bf16 | fp16}`` loads the pretrained decoder through bitsandbytes (transformers'
``BitsAndBytesConfig``); LoRA adapters train on top in fp32. Needs the ``quantization`` extra (bitsandbytes,
which runs 4- and 8-bit on the CPU as well as on CUDA) and pretrained weights (``decoder.model``).
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import BitsAndBytesConfig

from mmtransfer.config import DecoderConfig, ModelConfig
from mmtransfer.errors import ConfigError
from mmtransfer.extras import require
from mmtransfer.modalities import ENCODER_KINDS

if TYPE_CHECKING:
    from mmtransfer.model.core import MultimodalGPT

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
        enc = config.encoder(modality)
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
        name = (cfg.encoder(modality) or {}).get("dtype", "auto")
        _store(encoder, parse_dtype(name, f"{modality}_encoder.dtype"), cfg.trainable.encoder(modality))


def _store(module: nn.Module, dtype: torch.dtype | None, policy: str) -> None:
    if is_quantized(module):
        return  # bitsandbytes weights: their storage is theirs
    if dtype is not None:
        module.to(dtype if policy in STORED_HALF else torch.float32)
    for param in module.parameters():
        if param.requires_grad and param.dtype != torch.float32 and param.is_floating_point():
            param.data = param.data.float()


# -- quantised decoder base ---------------------------------------------------------------------------
BITS = (4, 8)
QUANT_TYPES = ("nf4", "fp4")
KEYS = ("bits", "quant_type", "double_quant", "compute_dtype")


def check_quantization(cfg: DecoderConfig) -> None:
    """Check ``cfg.quantization`` (and that bitsandbytes is installed) before any weight loads."""
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
