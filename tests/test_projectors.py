"""Every registered projector: shapes, masks, padding invariance; the registry's errors."""

from __future__ import annotations

import pytest
import torch

import mmtransfer
from mmtransfer.projectors import build_projector

KWARGS = {"transformer": {"prefix_len": 5, "heads": 2}, "resampler": {"num_queries": 6, "heads": 2},
          "frame_stack": {"k": 3}}


def test_every_projector_has_test_kwargs_or_needs_none() -> None:
    assert set(KWARGS) <= set(mmtransfer.list_projectors())
    assert {"linear", "mlp", "transformer", "resampler", "frame_stack"} <= set(mmtransfer.list_projectors())


@pytest.mark.parametrize("name", mmtransfer.list_projectors())
def test_shapes_and_mask(name: str) -> None:
    proj = build_projector(name, 24, 32, **KWARGS.get(name, {})).eval()
    x = torch.randn(2, 10, 24)
    mask = torch.tensor([[True] * 10, [True] * 7 + [False] * 3])
    out, out_mask = proj(x, mask)
    expected_m = {"transformer": 5, "resampler": 6, "frame_stack": 4}.get(name, 10)
    assert out.shape == (2, expected_m, 32) and out_mask.shape == (2, expected_m)
    assert out_mask.dtype == torch.bool and bool(out_mask[0].all())
    valid = out_mask[1].tolist()
    assert valid == sorted(valid, reverse=True)  # valid tokens first


@pytest.mark.parametrize("name", mmtransfer.list_projectors())
def test_padding_does_not_change_valid_outputs(name: str) -> None:
    proj = build_projector(name, 24, 32, **KWARGS.get(name, {})).eval()
    x = torch.randn(1, 6, 24)
    alone, m_alone = proj(x, torch.ones(1, 6, dtype=torch.bool))
    padded = torch.cat([x, torch.randn(1, 3, 24) * 100], dim=1)
    out, m_out = proj(padded, torch.tensor([[True] * 6 + [False] * 3]))
    n = int(m_alone.sum())
    assert int(m_out.sum()) == n
    assert torch.allclose(out[:, :n], alone[:, :n], atol=1e-5)


def test_unknown_names_list_the_valid_ones() -> None:
    with pytest.raises(KeyError, match="valid projectors: .*mlp"):
        build_projector("mpl", 2, 2)
    with pytest.raises(KeyError, match="valid encoders: .*timm"):
        mmtransfer.build_encoder("timmm")
