"""CTC alignment of audio prefix tokens to the decoder's own token embeddings (``objective: ctc`` stages).

A speech LLM's first problem is that the decoder ignores the audio: the projector's tokens mean nothing to it,
so the LM loss teaches it to guess from the text prior instead. This stage gives every audio token a dense
target before the decoder is involved: each projected token [D_lm] scores every vocabulary entry by its
cosine with that entry's *input* embedding (the vectors the decoder reads), plus a blank, and CTC over the
transcript's tokens pulls the frames that carry a word towards that word's embedding. The decoder
then reads audio tokens that already look like the text they stand for. No decoder forward or backward runs:
a step costs the projector and one [M, D] x [D, V] product, a small fraction of an LM step.

Written here because no library aligns a projector to a frozen LM's embedding table; the loss itself is
``torch.nn.functional.ctc_loss``. (LegoSLM, arXiv 2505.24048, feeds CTC posteriors over the LLM vocabulary
into the LLM; here CTC only trains the projector, and the decoder reads its output as usual.)
"""

from __future__ import annotations

import math
from collections.abc import Collection

import torch
import torch.nn.functional as F

from mmtransfer.chat import IGNORE_INDEX

COSINE_SCALE = 30.0  # the softmax temperature of cosine logits, as in normalised-softmax classifiers (CosFace)


def transcript_targets(labels: torch.Tensor, special_ids: Collection[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The target tokens of each row of ``labels`` [B, L] (``IGNORE_INDEX`` and special tokens such as EOS
    left out) -> (targets [B, S] right-padded with 0, lengths [B])."""
    keep = labels.ne(IGNORE_INDEX)
    for token in special_ids:
        keep &= labels.ne(token)
    rows = [row[k] for row, k in zip(labels, keep)]
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long, device=labels.device)
    targets = labels.new_zeros(len(rows), max(int(lengths.max()), 1) if rows else 1)
    for i, row in enumerate(rows):
        targets[i, : len(row)] = row
    return targets, lengths


def ctc_alignment_loss(
    tokens: torch.Tensor, mask: torch.Tensor, embeddings: torch.Tensor, targets: torch.Tensor, lengths: torch.Tensor
) -> torch.Tensor:
    """Mean CTC loss (per target token) of audio tokens [B, M, D] (valid where ``mask`` [B, M]) against target ids
    [B, S] (``lengths`` [B]). A token's logit for vocabulary entry v is ``COSINE_SCALE`` x its cosine with
    ``embeddings[v]`` ([V, D]); the blank (id V) has logit log V.
    Rows whose audio is too short for their transcript contribute zero (``zero_infinity``)."""
    with torch.autocast(tokens.device.type, enabled=False):  # logits up to +-30 need fp32 under bf16 / fp16
        return _ctc(tokens, mask, embeddings, targets, lengths)


def _ctc(tokens: torch.Tensor, mask: torch.Tensor, embeddings: torch.Tensor, targets: torch.Tensor,
         lengths: torch.Tensor) -> torch.Tensor:
    b, m, _ = tokens.shape
    # Cosine logits at a fixed scale: raw dot products of RMS-sized vectors span about +-1 for a small LM, too flat
    # for a softmax over tens of thousands of tokens, and the projector would spend its steps growing its scale.
    logits = COSINE_SCALE * F.normalize(tokens.float(), dim=-1) @ F.normalize(embeddings.detach().float(), dim=-1).T
    # The blank's logit is log V: a frame that points at no token (cosines near 0) gives the blank about as much
    # mass as the whole vocabulary, as a CTC head's blank has early in training; at logit 0 it would start at
    # 1 / V, and every frame between words would cost as much as a wrong word.
    blank = logits.new_full((b, m, 1), math.log(embeddings.shape[0]))
    logits = torch.cat([logits, blank], -1)  # [B, M, V + 1]
    log_probs = logits.log_softmax(-1).transpose(0, 1)  # [M, B, V + 1], as ctc_loss wants
    return F.ctc_loss(log_probs, targets, mask.sum(1).long(), lengths, blank=embeddings.shape[0],
                      reduction="mean", zero_infinity=True)
