"""Build a MultimodalGPT from a ModelConfig: the decoder, then each modality's encoder and projector."""

from __future__ import annotations

from typing import Any

import torch

from mmtransfer.config import ModelConfig, from_dict
from mmtransfer.encoders import build_encoder
from mmtransfer.errors import ConfigError, UnknownNameError
from mmtransfer.modalities import ENCODER_KINDS
from mmtransfer.model.core import MultimodalGPT
from mmtransfer.model.decoder import hidden_size, load_decoder, load_tokenizer
from mmtransfer.model.precision import check_model_config, load_dtype
from mmtransfer.projectors import build_projector


def build_model(config: ModelConfig | dict[str, Any], tokenizer_dir: str | None = None) -> MultimodalGPT:
    """Build a model. ``config`` may be a ``ModelConfig`` or the same as a plain dict (e.g. from YAML).

    Example (image captioning, GPT-2 decoder frozen, MLP projector trained)::

        model = build_model({
            "decoder": {"model": "gpt2"},
            "image_encoder": {"name": "timm", "model_name": "vit_small_patch16_224"},
            "image_projector": {"name": "mlp"},
        })
    """
    if isinstance(config, dict):
        config = from_dict(ModelConfig, config)
    check_model_config(config)  # bad dtypes / attention fail here, before any weight loads
    decoder = load_decoder(config.decoder, load_dtype(config.decoder.dtype, config.trainable.decoder))
    tokenizer = load_tokenizer(config.decoder, tokenizer_dir)
    encoders, projectors = {}, {}
    for modality in ENCODER_KINDS:
        enc_cfg = config.encoder(modality)
        if enc_cfg is None:
            continue
        encoders[modality] = _build_encoder(modality, enc_cfg)
        proj_cfg = config.projector(modality)
        name = proj_cfg.pop("name")
        if proj_cfg.get("norm"):
            proj_cfg["embed_rms"] = embedding_rms(decoder)
        try:
            projectors[modality] = build_projector(name, encoders[modality].out_dim, hidden_size(decoder), **proj_cfg)
        except UnknownNameError as err:
            raise ConfigError(f"{modality}_projector.name: {err}") from None
        except TypeError as err:  # a key the projector does not take
            raise ConfigError(f"{modality}_projector: {err}") from None
    return MultimodalGPT(config, decoder, tokenizer, encoders, projectors)  # stores each part in its dtype


def embedding_rms(decoder: torch.nn.Module) -> float:
    """The RMS of the decoder's token embeddings (over every entry of the table)."""
    weight = decoder.get_input_embeddings().weight.detach().float()
    return float(weight.pow(2).mean().sqrt())


def _build_encoder(modality: str, cfg: dict[str, Any]):
    cfg = dict(cfg)
    if "name" not in cfg:
        raise ConfigError(f"{modality}_encoder: needs a 'name' (see mmtransfer.list_encoders())")
    cfg.pop("dtype", None)  # storage, applied by MultimodalGPT (mmtransfer.model.precision)
    encoder = build_encoder(cfg.pop("name"), **cfg).to(torch.float32)  # fp32, whatever a checkpoint holds
    if encoder.modality != modality:
        raise ConfigError(f"{modality}_encoder: '{type(encoder).__name__}' is a {encoder.modality} encoder")
    return encoder
