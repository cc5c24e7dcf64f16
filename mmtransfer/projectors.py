"""Projectors: encoder features [B, N, D_in] (+ mask [B, N]) -> LM embeddings [B, M, D_lm] (+ mask [B, M]).

Every projector is built from ``PROJECTORS`` with ``in_dim``, ``out_dim`` and its own keyword
arguments, and returns ``(embeddings, mask)`` where the mask is True on valid tokens, valid tokens first.
"""

from __future__ import annotations

import torch
from torch import nn

from mmtransfer.registry import Registry

PROJECTORS: Registry[nn.Module] = Registry("projector")


class Linear(nn.Module):
    """One linear map per token (the LLaVA-1 projector)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.proj(x), mask  # [B, N, D_lm]


class MLP(nn.Module):
    """Two-layer GELU MLP per token (the LLaVA-1.5 projector)."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int | None = None) -> None:
        super().__init__()
        hidden_dim = hidden_dim or out_dim
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net(x), mask  # [B, N, D_lm]


class TransformerMapper(nn.Module):
    """ClipCap's mapper: learned prefix constants attend jointly with the projected features.

    The features are projected to ``prefix_len`` tokens after a transformer over
    ``[projected features | learned constants]``; only the constants' outputs are kept.
    """

    def __init__(
        self, in_dim: int, out_dim: int, prefix_len: int = 10, layers: int = 2, heads: int = 4
    ) -> None:
        super().__init__()
        self.inp = nn.Linear(in_dim, out_dim)
        self.const = nn.Parameter(torch.randn(prefix_len, out_dim) * 0.02)
        layer = nn.TransformerEncoderLayer(out_dim, heads, 4 * out_dim, dropout=0.0, batch_first=True)
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, _ = x.shape
        m = self.const.shape[0]
        h = torch.cat([self.inp(x), self.const.expand(b, -1, -1)], dim=1)  # [B, N+M, D]
        pad = torch.cat([~mask, mask.new_zeros(b, m)], dim=1)  # True = ignore
        out = self.transformer(h, src_key_padding_mask=pad)[:, n:]  # [B, M, D]
        return out, mask.new_ones(b, m)


class Resampler(nn.Module):
    """Perceiver / Q-Former-like resampler: ``num_queries`` learned queries cross-attend to the features.

    Gives a fixed number of output tokens whatever the input length.
    """

    def __init__(
        self, in_dim: int, out_dim: int, num_queries: int = 32, layers: int = 2, heads: int = 4
    ) -> None:
        super().__init__()
        self.inp = nn.Linear(in_dim, out_dim)
        self.queries = nn.Parameter(torch.randn(num_queries, out_dim) * 0.02)
        layer = nn.TransformerDecoderLayer(out_dim, heads, 4 * out_dim, dropout=0.0, batch_first=True)
        self.blocks = nn.TransformerDecoder(layer, layers)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = x.shape[0]
        q = self.queries.expand(b, -1, -1)  # [B, M, D]
        out = self.blocks(q, self.inp(x), memory_key_padding_mask=~mask)  # [B, M, D]
        return self.norm(out), mask.new_ones(b, q.shape[1])


class FrameStack(nn.Module):
    """Audio frame stacking: concatenate ``k`` consecutive frames, then project (SLAM-ASR style).

    Cuts the sequence length by ``k``: [B, N, D] -> [B, ceil(N/k), D_lm]. A stacked frame is valid
    when its first frame is.
    """

    def __init__(self, in_dim: int, out_dim: int, k: int = 4, hidden_dim: int | None = None) -> None:
        super().__init__()
        self.k = k
        hidden_dim = hidden_dim or out_dim
        self.net = nn.Sequential(nn.Linear(in_dim * k, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, d = x.shape
        pad = (-n) % self.k
        x = nn.functional.pad(x * mask.unsqueeze(-1), (0, 0, 0, pad))  # zero padded frames
        x = x.reshape(b, (n + pad) // self.k, d * self.k)  # [B, N/k, k*D]
        return self.net(x), mask[:, :: self.k]


for _name, _cls in [
    ("linear", Linear),
    ("mlp", MLP),
    ("transformer", TransformerMapper),
    ("resampler", Resampler),
    ("frame_stack", FrameStack),
]:
    PROJECTORS.register(_name)(_cls)


class OutputNorm(nn.Module):
    """A projector whose output tokens are RMS-normalised, then scaled by a learned per-channel gain that
    starts at ``rms`` (the decoder's token-embedding RMS), as Ultravox's projector ends in an RMSNorm.

    A fresh projector's outputs can be far quieter than the text embeddings around them (one Whisper +
    SmolLM2 project measured 30x), which starves the media positions of gradient: "the LM ignores the audio".
    """

    def __init__(self, projector: nn.Module, out_dim: int, rms: float) -> None:
        super().__init__()
        self.projector = projector
        self.gain = nn.Parameter(torch.full((out_dim,), float(rms)))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, mask = self.projector(x, mask)  # [B, M, D_lm]
        y = y * torch.rsqrt(y.float().pow(2).mean(-1, keepdim=True) + 1e-6).to(y.dtype)
        return y * self.gain, mask


def build_projector(name: str, in_dim: int, out_dim: int, norm: bool = False, embed_rms: float | None = None,
                    **kwargs: object) -> nn.Module:
    """Build a registered projector, e.g. ``build_projector("mlp", 768, 576)``. ``norm``: wrap it in
    ``OutputNorm`` at ``embed_rms`` (the builder passes the decoder's)."""
    projector = PROJECTORS.build(name, in_dim=in_dim, out_dim=out_dim, **kwargs)
    if not norm:
        return projector
    if embed_rms is None:
        raise ValueError("projector norm: needs embed_rms (the decoder's token-embedding RMS)")
    return OutputNorm(projector, out_dim, embed_rms)
