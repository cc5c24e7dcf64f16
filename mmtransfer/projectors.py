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

    A stack starts every ``stride`` frames (default ``k``: disjoint stacks; a smaller stride overlaps them), so
    [B, N, D] -> [B, ceil(N/stride), D_lm]. ``conv``: a 3-wide convolution over time (GELU) before stacking, as
    speech LLMs put a small convolution in front of their downsampler. A stack is valid when its first frame is.

    ``time_mask: [n, width]``: SpecAugment's time masking, in training only: ``n`` spans per clip, each of a width
    drawn from [0, ``width``] encoder frames at a random start inside the clip, are zeroed before the stacking. It
    acts on the encoder's output, not the spectrogram, so a frozen encoder's features can still be cached.
    """

    def __init__(self, in_dim: int, out_dim: int, k: int = 4, hidden_dim: int | None = None,
                 stride: int | None = None, conv: bool = False, time_mask: list[int] | None = None) -> None:
        super().__init__()
        self.k, self.stride = k, stride or k
        if not 1 <= self.stride <= k:
            raise ValueError(f"frame_stack: stride must be in [1, k={k}], got {self.stride}")
        if time_mask is not None and (len(time_mask) != 2 or not all(isinstance(v, int) and v >= 0 for v in time_mask)):
            raise ValueError(f"frame_stack: time_mask must be [spans, max width] (two integers >= 0), got {time_mask}")
        self.time_mask = tuple(time_mask) if time_mask else None
        hidden_dim = hidden_dim or out_dim
        self.conv = nn.Sequential(nn.Conv1d(in_dim, in_dim, 3, padding=1), nn.GELU()) if conv else None
        self.net = nn.Sequential(nn.Linear(in_dim * k, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, d = x.shape
        x = x * mask.unsqueeze(-1)  # padded frames are zeros
        if self.training and self.time_mask:
            x = x * time_mask_keep(mask, *self.time_mask).unsqueeze(-1).to(x.dtype)
        if self.conv is not None:
            x = self.conv(x.transpose(1, 2)).transpose(1, 2) * mask.unsqueeze(-1)  # [B, N, D]
        m = -(-n // self.stride)  # stacks
        x = nn.functional.pad(x, (0, 0, 0, (m - 1) * self.stride + self.k - n))  # zero frames past the end
        stacks = x.unfold(1, self.k, self.stride).transpose(2, 3).reshape(b, m, self.k * d)  # [B, M, k*D]
        return self.net(stacks), mask[:, :: self.stride]


def time_mask_keep(mask: torch.Tensor, spans: int, width: int) -> torch.Tensor:
    """[B, N] bool: False on ``spans`` random spans per row (each ``0..width`` frames wide, starting inside the row's
    valid frames, ``mask`` [B, N]), True elsewhere. Draws from the global RNG (seeded, restored on resume)."""
    b, n = mask.shape
    lengths = mask.sum(1, keepdim=True)  # [B, 1]
    widths = torch.minimum(torch.randint(0, width + 1, (b, spans), device=mask.device), lengths)
    starts = (torch.rand(b, spans, device=mask.device) * (lengths - widths + 1)).long()  # [B, S], in 0..L-w
    pos = torch.arange(n, device=mask.device).view(1, 1, n)
    hit = (pos >= starts.unsqueeze(-1)) & (pos < (starts + widths).unsqueeze(-1))  # [B, S, N]
    return ~hit.any(1)


class _GridProjector(nn.Module):
    """Base of the projectors that compress an image's token grid: [B, P + H*W, D] -> [B, P + M, D_lm].

    ``prefix_tokens`` leading tokens (a ViT's class / register tokens, when the encoder keeps them) are not part
    of the grid: they go through ``self.out`` (the projector's per-token MLP) unchanged in number. The grid is
    ``grid`` ([H, W], for non-square CNN feature maps) or the square the token count makes. A window of the
    output is valid when any input token in it is (image tokens are all valid; masked ones count as zeros).
    """

    def __init__(self, in_dim: int, prefix_tokens: int = 0, grid: list[int] | None = None) -> None:
        super().__init__()
        self.in_dim, self.prefix_tokens = in_dim, prefix_tokens
        self.grid = tuple(grid) if grid is not None else None

    def _split(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(prefix tokens [B, P, D], grid [B, D, H, W] with masked tokens zeroed, grid mask [B, 1, H, W] float)."""
        b, n, d = x.shape
        p = self.prefix_tokens
        h, w = self.grid or (round((n - p) ** 0.5),) * 2
        if h * w != n - p:
            raise ValueError(f"{type(self).__name__}: {n - p} grid tokens are not a {h}x{w} grid; set grid: [H, W] "
                             "(and prefix_tokens for class / register tokens)")
        x = x * mask.unsqueeze(-1)
        grid = x[:, p:].transpose(1, 2).reshape(b, d, h, w)  # [B, D, H, W]
        return x[:, :p], grid, mask[:, p:].reshape(b, 1, h, w).to(x.dtype)

    def _join(self, prefix: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, prefix_mask: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Project the prefix tokens and append the compressed grid's tokens [B, M, D_lm] and mask [B, M]."""
        if not self.prefix_tokens:
            return tokens, mask
        return torch.cat([self.out(prefix), tokens], 1), torch.cat([prefix_mask, mask], 1)

    @staticmethod
    def _divisible(h: int, w: int, r: int, what: str) -> None:
        if h % r or w % r:
            raise ValueError(f"{what}: the {h}x{w} token grid is not divisible by {r}; change the image size, or "
                             "use the pool projector with mode: bilinear")


class PixelShuffle(_GridProjector):
    """Space-to-depth, then an MLP (Idefics3 / SmolVLM / nanoVLM): each ``factor`` x ``factor`` window of the grid
    becomes one token of ``factor**2`` times the width, ``factor**2`` times fewer tokens."""

    def __init__(self, in_dim: int, out_dim: int, factor: int = 2, hidden_dim: int | None = None,
                 prefix_tokens: int = 0, grid: list[int] | None = None) -> None:
        super().__init__(in_dim, prefix_tokens, grid)
        self.factor = factor
        self.net = MLP(in_dim * factor**2, out_dim, hidden_dim).net
        self.out = MLP(in_dim, out_dim, hidden_dim).net if prefix_tokens else None

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        prefix, grid, valid = self._split(x, mask)
        (b, d, h, w), r = grid.shape, self.factor
        self._divisible(h, w, r, "pixel_shuffle")
        # each window's tokens concatenated in row-major order, as Idefics3's connector does
        windows = grid.permute(0, 2, 3, 1).reshape(b, h // r, r, w // r, r, d).permute(0, 1, 3, 2, 4, 5)
        tokens = self.net(windows.reshape(b, (h // r) * (w // r), r * r * d))  # [B, HW/r^2, D_lm]
        keep = nn.functional.max_pool2d(valid, r).flatten(1) > 0
        return self._join(prefix, tokens, keep, mask[:, : self.prefix_tokens])


class Pool(_GridProjector):
    """The grid pooled to ``size`` ([H', W'] or one number for a square), then an MLP (LLaVA-OneVision's 2x2 pooling):
    ``mode: avg`` averages non-overlapping windows (the grid must divide), ``bilinear`` interpolates to any size."""

    def __init__(self, in_dim: int, out_dim: int, size: int | list[int] = 2, mode: str = "avg",
                 hidden_dim: int | None = None, prefix_tokens: int = 0, grid: list[int] | None = None) -> None:
        super().__init__(in_dim, prefix_tokens, grid)
        if mode not in ("avg", "bilinear"):
            raise ValueError(f"pool: mode must be 'avg' or 'bilinear', got '{mode}'")
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.mode = mode
        self.net = MLP(in_dim, out_dim, hidden_dim).net
        self.out = self.net

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        prefix, grid, valid = self._split(x, mask)
        h, w = grid.shape[2:]
        if self.mode == "avg":
            if h % self.size[0] or w % self.size[1]:
                raise ValueError(f"pool: the {h}x{w} token grid does not divide into {self.size[0]}x{self.size[1]} "
                                 "windows; use mode: bilinear, or another size")
            pooled = nn.functional.adaptive_avg_pool2d(grid, self.size)  # [B, D, H', W']
            keep = nn.functional.adaptive_max_pool2d(valid, self.size)
        else:
            pooled = nn.functional.interpolate(grid, self.size, mode="bilinear", align_corners=False, antialias=True)
            keep = nn.functional.interpolate(valid, self.size, mode="nearest")
        tokens = self.net(pooled.flatten(2).transpose(1, 2))  # [B, H'W', D_lm]
        return self._join(prefix, tokens, keep.flatten(1) > 0, mask[:, : self.prefix_tokens])


class LDP(_GridProjector):
    """MobileVLM V2's lightweight downsample projector (LDPv2): an MLP per token, 2x2 average pooling (4x fewer
    tokens), then a residual 3x3 depthwise convolution over the pooled grid (a positional encoding generator).
    Chosen over Honeybee's C-Abstractor for the small decoders this package trains on CPUs: a few thousand
    parameters beyond the MLP instead of several ResNet blocks, and MobileVLM built it for 1-3B LMs."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int | None = None, prefix_tokens: int = 0,
                 grid: list[int] | None = None) -> None:
        super().__init__(in_dim, prefix_tokens, grid)
        self.net = MLP(in_dim, out_dim, hidden_dim).net
        self.out = self.net
        self.peg = nn.Conv2d(out_dim, out_dim, 3, padding=1, groups=out_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        prefix, grid, valid = self._split(x, mask)
        self._divisible(*grid.shape[2:], 2, "ldp")
        y = self.net(grid.flatten(2).transpose(1, 2))  # [B, HW, D_lm]
        y = y.transpose(1, 2).reshape(grid.shape[0], -1, *grid.shape[2:])  # [B, D_lm, H, W]
        y = nn.functional.avg_pool2d(y, 2)  # [B, D_lm, H/2, W/2]
        y = y + self.peg(y)
        keep = nn.functional.max_pool2d(valid, 2).flatten(1) > 0
        return self._join(prefix, y.flatten(2).transpose(1, 2), keep, mask[:, : self.prefix_tokens])


for _name, _cls in [
    ("linear", Linear),
    ("mlp", MLP),
    ("transformer", TransformerMapper),
    ("resampler", Resampler),
    ("frame_stack", FrameStack),
    ("pixel_shuffle", PixelShuffle),
    ("pool", Pool),
    ("ldp", LDP),
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
