"""Splice projected modality embeddings into a token sequence at placeholder positions.

Written by hand because no library does this for variable-length prefixes: each placeholder
token is replaced by its item's valid prefix tokens, every other real token keeps its order, and the
result is left-padded so that generation can append to the right. Each occurrence of a placeholder is one
item with its own valid length: every input token gets an output width (1 for text, the item's length for a
placeholder), whose cumulative sum gives output positions. Fully vectorised (no Python loop over rows).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mmtransfer.chat import IGNORE_INDEX


def splice(
    embed: Callable[[torch.Tensor], torch.Tensor],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prefixes: dict[int, tuple[torch.Tensor, torch.Tensor]],
    labels: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Build the decoder's inputs.

    Args:
        embed: token ids [B, T] -> embeddings [B, T, D] (the decoder's input embedding).
        input_ids: [B, T], padded on either side; ``attention_mask`` [B, T] marks real tokens.
        prefixes: placeholder token id -> (embeddings [K, M, D], mask [K, M] with valid tokens first), one
            item per real occurrence of that id in the batch, in row-major order (row 0's first, ...).
            A row may hold any number of occurrences, including none.
        labels: [B, T] target ids with ``IGNORE_INDEX`` where no loss is taken, or None.

    Returns:
        inputs_embeds [B, L, D], attention_mask [B, L], position_ids [B, L] (0 at each row's first
        real token), labels [B, L] (``IGNORE_INDEX`` on prefixes, padding and each row's first real
        position) or None. Rows are
        left-padded to L, the longest spliced row.
    """
    real = attention_mask.bool()
    b_size = input_ids.shape[0]
    widths = real.long()  # how many output positions each input token takes
    is_text = real.clone()
    occurrences = {}  # placeholder id -> (rows [K], cols [K]) of its occurrences, row-major
    for ph_id, (emb, mask) in prefixes.items():
        at = real & (input_ids == ph_id)
        rows, cols = at.nonzero(as_tuple=True)  # row-major: item k is the k-th occurrence
        if len(rows) != emb.shape[0]:
            raise ValueError(f"placeholder id {ph_id} occurs {len(rows)} times but {emb.shape[0]} items were given")
        widths[rows, cols] = mask.sum(1).to(widths.dtype)
        is_text &= ~at
        occurrences[ph_id] = (rows, cols)
    ends = widths.cumsum(1)  # [B, T]
    total = ends[:, -1]  # [B]
    length = int(total.max())
    offset = (length - total).unsqueeze(1)  # [B, 1] left padding of each row
    starts = ends - widths + offset  # [B, T] output position of each input token

    safe_ids = torch.where(is_text, input_ids, torch.zeros_like(input_ids))  # placeholders may be out of vocab
    tok_embeds = embed(safe_ids)  # [B, T, D]
    rows, cols = is_text.nonzero(as_tuple=True)
    out = tok_embeds.new_zeros(b_size, length, tok_embeds.shape[-1])
    out[rows, starts[rows, cols]] = tok_embeds[rows, cols]
    out_labels = None
    if labels is not None:
        out_labels = labels.new_full((b_size, length), IGNORE_INDEX)
        out_labels[rows, starts[rows, cols]] = labels[rows, cols]
        # A row's first real position has nothing before it to predict it from (alone it is never scored;
        # left-padded, the padding before it would be): never a target.
        nonempty = (total > 0).nonzero(as_tuple=True)[0]
        out_labels[nonempty, offset[nonempty, 0]] = IGNORE_INDEX

    for ph_id, (emb, mask) in prefixes.items():
        ph_rows, ph_cols = occurrences[ph_id]
        item, pk = mask.nonzero(as_tuple=True)  # valid prefix tokens: item k, token pk
        out[ph_rows[item], starts[ph_rows[item], ph_cols[item]] + pk] = emb[item, pk].to(out.dtype)

    out_mask = torch.arange(length, device=input_ids.device).unsqueeze(0) >= offset  # [B, L]
    position_ids = (out_mask.long().cumsum(1) - 1).clamp(min=0)
    return out, out_mask.long(), position_ids, out_labels
