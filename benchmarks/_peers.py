"""The peers that ``speed.py`` measures ours against, built from configs (random weights, offline).

* ``build_ved`` / ``build_sed``: Hugging Face ``VisionEncoderDecoderModel`` / ``SpeechEncoderDecoderModel``
  used directly from transformers: a ViT (``ViTModel``) or Whisper encoder, and a GPT-2 decoder with
  cross-attention (``add_cross_attention=True``).
* ``ClipCap``: ClipCap's design (Mokady et al. 2021, github.com/rmokady/CLIP_prefix_caption) reimplemented
  here: a CLIP-like pooled image embedding -> MLP mapper -> ``prefix_length`` prefix embeddings in front
  of a causal LM; the training loss and the two generation loops (``generate2`` greedy and
  ``generate_beam``) follow the original code, including re-running the whole sequence every step
  (no KV cache) and, for beam search, one image at a time. Two deliberate changes, both in the peer's
  favour: greedy decoding is batched (the original loops over images one at a time, and its top-p
  filtering indexes the batch incorrectly for more than one row), and the stop token is optional so
  that every system generates the same number of tokens.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    SpeechEncoderDecoderModel,
    VisionEncoderDecoderModel,
    ViTConfig,
    ViTModel,
    WhisperConfig,
)
from transformers.models.whisper.modeling_whisper import WhisperEncoder as HFWhisperEncoder

# --------------------------------------------------------------------------------------------------
# Hugging Face encoder-decoder peers
# --------------------------------------------------------------------------------------------------


def gpt2_cross_config(decoder: dict[str, Any]) -> GPT2Config:
    """A GPT-2 config with cross-attention of the same size as ``decoder`` (an HF config dict with
    ``model_type``). A Llama-style decoder (gated MLP with 3 matrices of ``intermediate_size``) maps to a
    GPT-2 MLP of ``1.5 * intermediate_size`` so that the MLP has the same parameter count; GPT-2 has no
    grouped-query attention, so its attention is full multi-head (slightly more parameters)."""
    cfg = dict(decoder)
    model_type = cfg.pop("model_type")
    if model_type == "gpt2":
        base = {k: v for k, v in cfg.items()}
    elif model_type == "llama":
        base = {
            "n_layer": cfg["num_hidden_layers"], "n_embd": cfg["hidden_size"],
            "n_head": cfg["num_attention_heads"], "n_inner": int(1.5 * cfg["intermediate_size"]),
            "vocab_size": cfg["vocab_size"], "n_positions": cfg.get("max_position_embeddings", 2048),
            "bos_token_id": cfg.get("bos_token_id", 0), "eos_token_id": cfg.get("eos_token_id", 0),
        }
    else:
        raise ValueError(f"no GPT-2 equivalent for decoder model_type '{model_type}'")
    return GPT2Config(**base, add_cross_attention=True, is_decoder=True)


def _finish_ed(model: nn.Module, bos: int, pad: int) -> nn.Module:
    model.config.decoder_start_token_id = bos
    model.config.pad_token_id = pad
    model.generation_config.decoder_start_token_id = bos
    model.generation_config.pad_token_id = pad
    model.encoder.requires_grad_(False)  # frozen encoder, as in ours
    return model


def vit_config(timm_kwargs: dict[str, Any]) -> ViTConfig:
    """``ViTConfig`` of the same size as a timm ViT given as ``model_kwargs`` on top of ViT-tiny/16."""
    width = timm_kwargs.get("embed_dim", 192)
    return ViTConfig(
        hidden_size=width,
        num_hidden_layers=timm_kwargs.get("depth", 12),
        num_attention_heads=timm_kwargs.get("num_heads", 3),
        intermediate_size=int(width * timm_kwargs.get("mlp_ratio", 4.0)),
        image_size=timm_kwargs.get("img_size", 224),
        patch_size=timm_kwargs.get("patch_size", 16),
        layer_norm_eps=1e-6,  # timm's ViT
        qkv_bias=True,
    )


def build_ved(vit: ViTConfig, decoder: dict[str, Any], bos: int = 0, pad: int = 0) -> VisionEncoderDecoderModel:
    """``VisionEncoderDecoderModel``: ViT encoder (no pooler: only its tokens are used) + GPT-2 with
    cross-attention. The encoder is frozen."""
    encoder = ViTModel(vit, add_pooling_layer=False)
    dec = GPT2LMHeadModel(gpt2_cross_config(decoder))
    return _finish_ed(VisionEncoderDecoderModel(encoder=encoder, decoder=dec), bos, pad)


def build_sed(
    whisper: dict[str, Any], decoder: dict[str, Any], bos: int = 0, pad: int = 0
) -> SpeechEncoderDecoderModel:
    """``SpeechEncoderDecoderModel``: the Whisper encoder (``hf_config`` as our whisper encoder takes it)
    + GPT-2 with cross-attention. The encoder is frozen. Like Whisper itself, it sees the whole fixed
    window (``max_source_positions`` frames) and the decoder cross-attends to all of it."""
    encoder = HFWhisperEncoder(WhisperConfig(**whisper))
    dec = GPT2LMHeadModel(gpt2_cross_config(decoder))
    return _finish_ed(SpeechEncoderDecoderModel(encoder=encoder, decoder=dec), bos, pad)


# --------------------------------------------------------------------------------------------------
# ClipCap
# --------------------------------------------------------------------------------------------------


class MLP(nn.Module):
    """ClipCap's ``MLP``: Linear -> Tanh -> Linear."""

    def __init__(self, sizes: tuple[int, ...], bias: bool = True, act: type[nn.Module] = nn.Tanh) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(len(sizes) - 1):
            layers.append(nn.Linear(sizes[i], sizes[i + 1], bias=bias))
            if i < len(sizes) - 2:
                layers.append(act())
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class ClipCap(nn.Module):
    """ClipCap's ``ClipCaptionModel`` (MLP mapping type) with the image encoder attached.

    ``clip``: an image backbone whose pooled embedding stands in for CLIP's ``encode_image`` (the timm
    ViT that ours uses, pooled on its class token as CLIP's visual tower does); it is frozen and run
    under ``no_grad`` exactly as ClipCap's feature extraction script does. ``gpt``: any causal LM.
    """

    def __init__(self, clip: nn.Module, prefix_size: int, gpt: nn.Module, prefix_length: int = 10) -> None:
        super().__init__()
        self.clip = clip.requires_grad_(False).eval()
        self.gpt = gpt
        self.prefix_length = prefix_length
        self.gpt_embedding_size = gpt.get_input_embeddings().embedding_dim
        d = self.gpt_embedding_size
        self.clip_project = MLP((prefix_size, (d * prefix_length) // 2, d * prefix_length))

    def train(self, mode: bool = True) -> ClipCap:
        super().train(mode)
        self.clip.eval()
        return self

    @torch.no_grad()
    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> pooled embedding [B, prefix_size] (``clip_model.encode_image``)."""
        return self.clip(pixel_values)

    def wte(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.gpt.get_input_embeddings()(tokens)  # ``gpt.transformer.wte`` for GPT-2

    def forward(self, tokens: torch.Tensor, prefix: torch.Tensor, mask: torch.Tensor | None = None) -> Any:
        embedding_text = self.wte(tokens)
        prefix_projections = self.clip_project(prefix).view(-1, self.prefix_length, self.gpt_embedding_size)
        embedding_cat = torch.cat((prefix_projections, embedding_text), dim=1)
        return self.gpt(inputs_embeds=embedding_cat, attention_mask=mask)

    def loss(self, tokens: torch.Tensor, prefix: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ClipCap's ``train.py``: logits of the text positions, cross-entropy with ``ignore_index=0``
        (their padding token). ``tokens`` [B, T] right-padded, ``mask`` [B, prefix_length + T]."""
        outputs = self(tokens, prefix, mask)
        logits = outputs.logits[:, self.prefix_length - 1 : -1]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens.flatten(), ignore_index=0)

    def prefix_embeds(
        self, pixel_values: torch.Tensor | None = None, prefix: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Image (or cached CLIP embedding) -> prefix embeddings [B, prefix_length, D]."""
        if prefix is None:
            prefix = self.encode_image(pixel_values)
        return self.clip_project(prefix).view(-1, self.prefix_length, self.gpt_embedding_size)


@torch.no_grad()
def clipcap_generate_greedy(
    model: ClipCap, embed: torch.Tensor, entry_length: int, top_p: float = 0.8,
    temperature: float = 1.0, stop_token_index: int | None = None,
) -> torch.Tensor:
    """ClipCap's ``generate2``, batched: every step re-runs the LM over the whole sequence so far
    (prefix + generated tokens, no KV cache), applies its top-p filter (a full sort of the vocabulary)
    and takes the argmax. ``embed`` [B, prefix_length, D] -> tokens [B, <= entry_length]."""
    model.eval()
    filter_value = -float("Inf")
    generated, tokens = embed, None
    for _ in range(entry_length):
        outputs = model.gpt(inputs_embeds=generated)
        logits = outputs.logits
        logits = logits[:, -1, :] / (temperature if temperature > 0 else 1.0)
        sorted_logits, sorted_indices = torch.sort(logits, descending=True)
        cumulative_probs = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
        sorted_indices_to_remove = cumulative_probs > top_p
        sorted_indices_to_remove[..., 1:] = sorted_indices_to_remove[..., :-1].clone()
        sorted_indices_to_remove[..., 0] = 0
        # per row (the original's ``logits[:, indices_to_remove]`` is only right for one row)
        remove = sorted_indices_to_remove.scatter(1, sorted_indices, sorted_indices_to_remove)
        logits = logits.masked_fill(remove, filter_value)
        next_token = torch.argmax(logits, -1).unsqueeze(1)  # [B, 1]
        next_token_embed = model.wte(next_token)
        tokens = next_token if tokens is None else torch.cat((tokens, next_token), dim=1)
        generated = torch.cat((generated, next_token_embed), dim=1)
        if stop_token_index is not None and bool((next_token == stop_token_index).all()):
            break
    return tokens


@torch.no_grad()
def clipcap_generate_beam(
    model: ClipCap, embed: torch.Tensor, beam_size: int, entry_length: int,
    temperature: float = 1.0, stop_token_index: int | None = None,
) -> torch.Tensor:
    """ClipCap's ``generate_beam`` for one image: ``embed`` [1, prefix_length, D]; the ``beam_size``
    beams re-run the whole sequence every step (no KV cache). Returns the best beam's tokens [T]."""
    model.eval()
    device = embed.device
    tokens, scores = None, None
    seq_lengths = torch.ones(beam_size, device=device)
    is_stopped = torch.zeros(beam_size, device=device, dtype=torch.bool)
    generated = embed
    for _ in range(entry_length):
        outputs = model.gpt(inputs_embeds=generated)
        logits = outputs.logits
        logits = logits[:, -1, :] / (temperature if temperature > 0 else 1.0)
        logits = logits.softmax(-1).log()
        if scores is None:
            scores, next_tokens = logits.topk(beam_size, -1)
            generated = generated.expand(beam_size, *generated.shape[1:])
            next_tokens, scores = next_tokens.permute(1, 0), scores.squeeze(0)
            tokens = next_tokens
        else:
            logits[is_stopped] = -float("inf")
            logits[is_stopped, 0] = 0
            scores_sum = scores[:, None] + logits
            seq_lengths[~is_stopped] += 1
            scores_sum_average = scores_sum / seq_lengths[:, None]
            scores_sum_average, next_tokens = scores_sum_average.view(-1).topk(beam_size, -1)
            next_tokens_source = torch.div(next_tokens, scores_sum.shape[1], rounding_mode="floor")
            seq_lengths = seq_lengths[next_tokens_source]
            next_tokens = next_tokens % scores_sum.shape[1]
            next_tokens = next_tokens.unsqueeze(1)
            tokens = tokens[next_tokens_source]
            tokens = torch.cat((tokens, next_tokens), dim=1)
            generated = generated[next_tokens_source]
            scores = scores_sum_average * seq_lengths
            is_stopped = is_stopped[next_tokens_source]
        next_token_embed = model.wte(next_tokens.squeeze(1)).view(generated.shape[0], 1, -1)
        generated = torch.cat((generated, next_token_embed), dim=1)
        if stop_token_index is not None:
            is_stopped = is_stopped + next_tokens.eq(stop_token_index).squeeze(1)
            if is_stopped.all():
                break
    scores = scores / seq_lengths
    return tokens[scores.argmax()]


class PooledTimm(nn.Module):
    """A timm ViT's pooled (class-token) embedding, as CLIP's visual tower pools."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.vit = vit

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.vit.forward_head(self.vit.forward_features(pixel_values), pre_logits=True)


def build_clipcap(timm_vit: nn.Module, decoder: dict[str, Any], prefix_length: int = 10) -> ClipCap:
    """ClipCap with ``timm_vit`` (a timm ViT, e.g. a copy of ours) and a causal LM built from ``decoder``."""
    cfg = dict(decoder)
    gpt = AutoModelForCausalLM.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg))
    return ClipCap(PooledTimm(timm_vit), timm_vit.num_features, gpt, prefix_length)
