"""The splice of prefixes into token sequences: positions, masks, labels, padding side."""

from __future__ import annotations

import pytest
import torch

from mmtransfer.model.splice import IGNORE_INDEX, splice

PH = 99


def _embed(ids: torch.Tensor) -> torch.Tensor:
    return ids.float().unsqueeze(-1).expand(*ids.shape, 2).clone()  # [B, T, 2], value = token id


def test_splice_places_prefix_at_placeholder_and_left_pads() -> None:
    ids = torch.tensor([[5, PH, 6, 7], [0, 0, PH, 8]])  # row 1 right... left-padded with pad id 0
    attn = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 6, 7], [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 8]])
    prefix = torch.tensor([[[50.0, 50], [51, 51], [52, 52]], [[60, 60], [61, 61], [0, 0]]])
    pmask = torch.tensor([[True, True, True], [True, True, False]])
    emb, mask, pos, lab = splice(_embed, ids, attn, {PH: (prefix, pmask)}, labels)
    assert emb[..., 0].tolist() == [[5, 50, 51, 52, 6, 7], [0, 0, 0, 60, 61, 8]]
    assert mask.tolist() == [[1, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1]]
    assert pos.tolist() == [[0, 1, 2, 3, 4, 5], [0, 0, 0, 0, 1, 2]]
    assert lab.tolist() == [[IGNORE_INDEX] * 4 + [6, 7], [IGNORE_INDEX] * 5 + [8]]


def test_right_padded_input_gives_the_same_as_left_padded() -> None:
    left = splice(_embed, torch.tensor([[0, PH, 3]]), torch.tensor([[0, 1, 1]]),
                  {PH: (torch.ones(1, 2, 2), torch.ones(1, 2, dtype=torch.bool))})
    right = splice(_embed, torch.tensor([[PH, 3, 0]]), torch.tensor([[1, 1, 0]]),
                   {PH: (torch.ones(1, 2, 2), torch.ones(1, 2, dtype=torch.bool))})
    for a, b in zip(left[:3], right[:3]):
        assert torch.equal(a, b)


def test_a_count_of_placeholders_other_than_the_items_given_is_an_error() -> None:
    prefix = (torch.ones(2, 1, 2), torch.ones(2, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="occurs 3 times but 2 items"):
        splice(_embed, torch.tensor([[1, PH], [PH, PH]]), torch.ones(2, 2), {PH: prefix})


def test_each_occurrence_takes_its_own_item_in_row_major_order() -> None:
    """Row 0 holds two placeholders, row 1 none, row 2 one (after padding): items 0, 1 go to row 0, item 2
    to row 2; each keeps only its valid tokens."""
    ids = torch.tensor([[PH, 5, PH], [0, 6, 7], [0, 8, PH]])
    attn = torch.tensor([[1, 1, 1], [0, 1, 1], [0, 1, 1]])
    emb = torch.tensor([[[10.0, 10], [11, 11]], [[20, 20], [0, 0]], [[30, 30], [31, 31]]])
    mask = torch.tensor([[True, True], [True, False], [True, True]])
    labels = torch.tensor([[IGNORE_INDEX, 5, IGNORE_INDEX], [IGNORE_INDEX, 6, 7], [IGNORE_INDEX, 8, IGNORE_INDEX]])
    out, out_mask, pos, lab = splice(_embed, ids, attn, {PH: (emb, mask)}, labels)
    assert out[..., 0].tolist() == [[10, 11, 5, 20], [0, 0, 6, 7], [0, 8, 30, 31]]
    assert out_mask.tolist() == [[1, 1, 1, 1], [0, 0, 1, 1], [0, 1, 1, 1]]
    assert pos.tolist() == [[0, 1, 2, 3], [0, 0, 0, 1], [0, 0, 1, 2]]
    # labels move with their tokens, except at a row's first real position (rows 1 and 2: 6 and 8), which
    # nothing before it could predict
    assert lab.tolist() == [[IGNORE_INDEX, IGNORE_INDEX, 5, IGNORE_INDEX], [IGNORE_INDEX] * 3 + [7],
                            [IGNORE_INDEX] * 4]


def test_gradients_flow_into_the_prefix() -> None:
    prefix = torch.randn(1, 2, 2, requires_grad=True)
    emb, *_ = splice(_embed, torch.tensor([[PH, 4]]), torch.ones(1, 2), {PH: (prefix, torch.ones(1, 2).bool())})
    emb.sum().backward()
    assert torch.equal(prefix.grad, torch.ones(1, 2, 2))
