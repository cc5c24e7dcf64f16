"""Load any causal LM and its tokenizer, and add the modality placeholder tokens.

The rest of the package touches the decoder only through ``get_input_embeddings()``, its
``forward(inputs_embeds=..., attention_mask=..., position_ids=..., past_key_values=...)``,
``generate`` and its tokenizer, so any ``AutoModelForCausalLM`` works.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from mmtransfer import weights
from mmtransfer.config import DecoderConfig
from mmtransfer.errors import ConfigError
from mmtransfer.modalities import PLACEHOLDERS
from mmtransfer.model.precision import bnb_config


def load_decoder(cfg: DecoderConfig, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """Build the LM from ``cfg.config`` (random init, offline) or load pretrained weights for ``cfg.model``,
    directly in ``dtype`` (a bf16 checkpoint loaded as bf16 makes no fp32 copy), with ``cfg``'s attention
    implementation; ``device_map`` goes to ``from_pretrained``."""
    kwargs: dict[str, Any] = {"dtype": dtype}
    if cfg.attn_implementation is not None:
        kwargs["attn_implementation"] = cfg.attn_implementation
    if cfg.config is not None:
        hf_config = dict(cfg.config)
        model_type = hf_config.pop("model_type", None)
        if model_type is None:
            raise ConfigError("decoder.config: needs a 'model_type' (e.g. 'gpt2', 'llama')")
        return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **hf_config), **kwargs)
    if not cfg.pretrained:
        hf_config = AutoConfig.from_pretrained(weights.resolve(cfg.model))
        return AutoModelForCausalLM.from_config(hf_config, **kwargs)
    if cfg.device_map is not None:
        kwargs["device_map"] = cfg.device_map
    if cfg.quantization is not None:  # checked by mmtransfer.model.precision.check_quantization
        kwargs["quantization_config"] = bnb_config(cfg.quantization)
    return AutoModelForCausalLM.from_pretrained(weights.resolve(cfg.model), **kwargs)


def load_tokenizer(cfg: DecoderConfig, directory: str | None = None) -> PreTrainedTokenizerBase:
    """The decoder's tokenizer (from ``directory`` when given, e.g. a saved model), left-padding, with
    a pad token and the placeholder tokens. Fails loudly on an empty tokenizer."""
    source = directory or weights.resolve_tokenizer(cfg.tokenizer or cfg.model)
    tok = AutoTokenizer.from_pretrained(source)
    if len(tok) == 0 or tok.eos_token_id is None:
        raise ConfigError(f"tokenizer from '{source}' is empty or has no EOS token; check the files there")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    missing = [p for p in PLACEHOLDERS.values() if p not in tok.get_vocab()]
    if missing:
        tok.add_special_tokens({"additional_special_tokens": missing})
    return tok


def placeholder_ids(tok: PreTrainedTokenizerBase) -> dict[str, int]:
    """Token id of each modality's placeholder. These ids may lie past the embedding matrix: the
    model replaces them with projected features before any embedding lookup, so no resize is needed."""
    return {m: tok.convert_tokens_to_ids(t) for m, t in PLACEHOLDERS.items()}


def hidden_size(decoder: PreTrainedModel) -> int:
    """Width of the decoder's input embeddings, whatever the config calls it."""
    return decoder.get_input_embeddings().embedding_dim


def decoder_config_dict(decoder: PreTrainedModel) -> dict[str, Any]:
    """The HF config as a dict that ``load_decoder`` can rebuild the architecture from offline."""
    return decoder.config.to_diff_dict() | {"model_type": decoder.config.model_type}


def context_length(decoder: PreTrainedModel) -> int | None:
    """The most positions the decoder was built for (``max_position_embeddings``; GPT-2 maps its
    ``n_positions`` to it), or None when its config names no limit."""
    value = getattr(decoder.config, "max_position_embeddings", None)
    return value if isinstance(value, int) and value > 0 else None
