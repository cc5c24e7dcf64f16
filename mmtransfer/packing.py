"""Sequence packing: several spliced samples per decoder row, each one attending only to itself.

Written by hand because no library packs *spliced* multimodal rows: the collators that pack (e.g.
transformers' ``DataCollatorWithFlattening``) work on token ids before the model, but here a sample's length
is only known once its media went through the encoders and projectors (audio prefixes depend on the clip,
resamplers and cached features on the configuration). So packing happens in the model, after ``splice``:

1. ``plan_rows``: first-fit decreasing of the samples' spliced lengths into rows of at most ``budget``
   positions (a sample longer than the budget gets a row of its own; it is never cut).
2. ``pack``: moves each sample's real positions (prefix embeddings and text alike) into its span of its row,
   with position ids restarting at 0 per sample, labels ``IGNORE_INDEX`` at each sample's first position
   (so the shifted loss never predicts one sample from another), and a block-diagonal causal mask:
   a boolean 4-D mask [R, 1, P, P] for SDPA, its additive float form for eager attention, or for flash
   attention (``takes_varlen``) one flattened row [1, N] with no mask, whose restarting position ids drive
   transformers' varlen path (it cuts the row into ``cu_seqlens`` there, for a batch of one row only).
3. ``packed_loss``: token losses on the positions that predict a target only (the decoder computes logits
   there alone, through a boolean ``logits_to_keep``), averaged over the batch's target tokens exactly like
   the decoder's own loss, plus each sample's mean.

The per-sample losses equal those of the unpacked, left-padded batch (to float rounding): same embeddings,
same position ids, same visible context for every position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from mmtransfer.chat import IGNORE_INDEX
from mmtransfer.errors import ConfigError


def plan_rows(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Group sample indices into rows of total length <= ``budget`` (first-fit decreasing; ties by index).

    A sample longer than ``budget`` gets a row of its own. Each row lists its samples in index order; rows
    are in order of their first sample."""
    if budget < 1:
        raise ValueError(f"pack_tokens must be >= 1, got {budget}")
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i)):
        n = int(lengths[i])
        for r, left in enumerate(room):
            if n <= left:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(budget - n)
    return sorted((sorted(r) for r in rows), key=lambda r: r[0])


@dataclass
class Packed:
    """A packed batch of N samples in R rows of P positions (tensors on the input's device).

    - ``inputs_embeds`` [R, P, D]; ``position_ids`` [R, P]: 0 at each sample's first position (and on padding).
    - ``attention_mask``: bool [R, 1, P, P] (True: may attend), its float additive form (eager attention),
      or None (flash attention: R = 1 and the position ids mark the samples).
    - ``varlen_kwargs``: for flash attention, the samples' spans of the one row as transformers' flash
      kwargs (``cu_seq_lens_q`` / ``_k`` int32 [N + 1], ``max_length_q`` / ``_k``), passed to the decoder so that
      decoders whose attention never sees the position ids (GPTBigCode) stay within each sample; else empty.
    - ``labels`` [R, P] or None: ``IGNORE_INDEX`` at each sample's first position and on padding.
    - ``sample_ids`` [R, P]: index of the sample (its row in the unpacked batch) at each position, -1 on padding.
    - ``rows``: the sample indices of each row (``plan_rows``); ``n_samples``: N.
    """

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor | None
    position_ids: torch.Tensor
    labels: torch.Tensor | None
    sample_ids: torch.Tensor
    rows: list[list[int]]
    n_samples: int
    varlen_kwargs: dict[str, Any]

    @property
    def padding(self) -> float:
        """Share of the R x P positions that hold no sample."""
        return float((self.sample_ids < 0).float().mean()) if self.sample_ids.numel() else 0.0


def check_decoder(decoder: torch.nn.Module, longest: int) -> None:
    """ConfigError when packed rows would not give every sample its loss alone with this decoder.

    Refused: decoders outside transformers' attention interface that may not take a 4-D mask (ALiBi biases or
    state-space layers built from a 2-D mask: BLOOM, Falcon with ``alibi``, Mamba...); a router auxiliary loss
    (``output_router_logits``, computed from a 2-D mask); and a sample of ``longest`` positions past a
    sliding window (the block-diagonal mask has no window, so such a sample would see further than alone).
    """
    config, name = decoder.config, type(decoder).__name__
    if getattr(config, "alibi", False) or not (getattr(decoder, "_supports_attention_backend", False)
                                               or getattr(decoder, "_supports_sdpa", False)):
        raise ConfigError(f"packing: {name} does not take a block-diagonal 4-D attention mask (ALiBi or "
                          "state-space layers); set packing: false (bucket: true also cuts padding)")
    if getattr(config, "output_router_logits", False):
        raise ConfigError(f"packing: {name} adds a router auxiliary loss from a 2-D mask "
                          "(output_router_logits); set it false or packing: false")
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if window and (layer_types is None or "sliding_attention" in layer_types) and longest > window:
        raise ConfigError(f"packing: a sample of {longest} positions is longer than {name}'s sliding window "
                          f"({window}), which the packed mask cannot apply; set packing: false")


def takes_varlen(attn_implementation: str) -> bool:
    """Whether the decoder's attention reads the samples of one flat row from the position ids (flash attention
    2/3/4, a hub kernel, or any implementation registered with transformers' flash mask) instead of a 4-D mask."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask

    return ALL_MASK_ATTENTION_FUNCTIONS.get(attn_implementation) is flash_attention_mask


def pack(
    embeds: torch.Tensor,
    mask: torch.Tensor,
    positions: torch.Tensor,
    labels: torch.Tensor | None,
    budget: int,
    attn_implementation: str = "sdpa",
) -> Packed:
    """Pack the rows of a spliced batch (``splice``'s outputs) into rows of at most ``budget`` positions.

    Args:
        embeds: [B, L, D]; mask: [B, L] (1 on real positions, left-padded); positions: [B, L] position ids;
        labels: [B, L] or None.
        budget: the most positions per packed row (``pack_tokens``).
        attn_implementation: the decoder's (``config._attn_implementation``): picks the mask's form.
    """
    real = mask.bool()
    lengths = real.sum(1)  # [B]
    n, dev = embeds.shape[0], embeds.device
    varlen = takes_varlen(attn_implementation)
    rows = plan_rows(lengths.tolist(), budget)
    row_of = torch.empty(n, dtype=torch.long)
    offset = torch.empty(n, dtype=torch.long)
    width = 0
    at = 0  # varlen: one flat row, samples one after the other
    for r, samples in enumerate(rows):
        start = at if varlen else 0
        for i in samples:
            row_of[i], offset[i] = (0 if varlen else r), start
            start += int(lengths[i])
        at = start
        width = max(width, start)
    n_rows = 1 if varlen else len(rows)
    row_of, offset = row_of.to(dev), offset.to(dev)

    src_b, src_t = real.nonzero(as_tuple=True)  # every real position, row-major
    first = (real.long().cumsum(1) == 1) & real  # [B, L]: each sample's first real position
    rank = real.long().cumsum(1)[src_b, src_t] - 1  # index of the position within its sample
    dst_r, dst_t = row_of[src_b], offset[src_b] + rank

    out = embeds.new_zeros(n_rows, width, embeds.shape[-1])
    out[dst_r, dst_t] = embeds[src_b, src_t]
    pos = positions.new_zeros(n_rows, width)
    pos[dst_r, dst_t] = positions[src_b, src_t]
    sample_ids = torch.full((n_rows, width), -1, dtype=torch.long, device=dev)
    sample_ids[dst_r, dst_t] = src_b
    out_labels = None
    if labels is not None:
        out_labels = labels.new_full((n_rows, width), IGNORE_INDEX)
        out_labels[dst_r, dst_t] = labels[src_b, src_t].masked_fill(first[src_b, src_t], IGNORE_INDEX)

    attention = None
    if not varlen:
        same = sample_ids.unsqueeze(2) == sample_ids.unsqueeze(1)  # [R, P, P]; padding is one block of its own
        causal = torch.ones(width, width, dtype=torch.bool, device=dev).tril()
        attention = (same & causal).unsqueeze(1)  # [R, 1, P, P]: every position sees at least itself (no NaN)
        if attn_implementation == "eager":  # eager attention adds the mask to the scores
            zero = torch.zeros((), dtype=embeds.dtype, device=dev)
            attention = torch.where(attention, zero, torch.finfo(embeds.dtype).min)
    varlen_kwargs: dict[str, Any] = {}
    if varlen:
        flat = lengths[[i for row in rows for i in row]]  # the samples' lengths in the row's order
        cu = torch.cat([flat.new_zeros(1), flat.cumsum(0)]).to(device=dev, dtype=torch.int32)
        longest = int(flat.max()) if len(flat) else 0
        varlen_kwargs = {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}
    return Packed(out, attention, pos, out_labels, sample_ids, rows, n, varlen_kwargs)


def target_positions(labels: torch.Tensor) -> torch.Tensor:
    """[R, P] bool: the positions whose next position holds a target (they predict it)."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return keep


def packed_loss(
    logits: torch.Tensor, packed: Packed, keep: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of the kept positions' logits against the next position's label.

    Args:
        logits: [K, V], the decoder's logits at the K True positions of ``keep`` [R, P] (row-major).
        packed: the batch, with labels.
        keep: ``target_positions(packed.labels)``.

    Returns:
        the mean over all K targets (the decoder's own loss; 0 x logits without targets, so the graph stays
        whole) and each sample's mean [N] (NaN for a sample without targets).
    """
    targets = packed.labels[:, 1:][keep[:, :-1]]  # [K]
    if targets.numel() == 0:
        return 0.0 * logits.sum(), logits.new_full((packed.n_samples,), float("nan"), dtype=torch.float32)
    owner = packed.sample_ids[keep]  # [K]
    losses = F.cross_entropy(logits.float(), targets, reduction="none")  # [K]
    sums = losses.new_zeros(packed.n_samples).index_add(0, owner, losses.detach())
    counts = losses.new_zeros(packed.n_samples).index_add(0, owner, torch.ones_like(losses))
    return losses.mean(), sums / counts  # 0 / 0: NaN for a sample without targets
