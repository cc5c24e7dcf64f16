"""Every registered projector: exact output masks, shapes, padding invariance; frame stacking against stacks
written out by hand; the registry's errors."""

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


T, F = True, False
# The output mask for inputs of 10 and 7 valid tokens, written out by hand: per-token projectors keep the input's;
# the mapper and the resampler give their fixed number of tokens, all valid; frame stacking (k=3) groups frames
# 0-2, 3-5, 6-8 and 9, valid when their first frame is (frame 9 is padding in the second row).
EXPECTED_MASKS = {
    "linear": [[T] * 10, [T] * 7 + [F] * 3],
    "mlp": [[T] * 10, [T] * 7 + [F] * 3],
    "transformer": [[T] * 5] * 2,
    "resampler": [[T] * 6] * 2,
    "frame_stack": [[T, T, T, T], [T, T, T, F]],
}


def test_every_projector_has_an_expected_mask() -> None:
    assert sorted(EXPECTED_MASKS) == sorted(mmtransfer.list_projectors())


@pytest.mark.parametrize("name", mmtransfer.list_projectors())
def test_shapes_and_mask(name: str) -> None:
    proj = build_projector(name, 24, 32, **KWARGS.get(name, {})).eval()
    x = torch.randn(2, 10, 24)
    mask = torch.tensor([[T] * 10, [T] * 7 + [F] * 3])
    out, out_mask = proj(x, mask)
    expected = EXPECTED_MASKS[name]
    assert out_mask.dtype == torch.bool and out_mask.tolist() == expected
    assert out.shape == (2, len(expected[0]), 32) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["transformer", "resampler"])
def test_fixed_length_projectors_give_the_same_number_of_tokens_for_any_input_length(name: str) -> None:
    proj = build_projector(name, 24, 32, **KWARGS[name]).eval()
    for n in (1, 3, 17):
        out, out_mask = proj(torch.randn(2, n, 24), torch.ones(2, n, dtype=torch.bool))
        m = len(EXPECTED_MASKS[name][0])
        assert out.shape == (2, m, 32) and out_mask.shape == (2, m) and out_mask.all()


def test_frame_stack_concatenates_consecutive_frames_and_zeroes_padding() -> None:
    """k=2 over 2-d frames, checked against stacks written out by hand."""
    proj = build_projector("frame_stack", 2, 4, k=2).eval()
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], [[7.0, 8.0], [9.0, 10.0], [11.0, 12.0]]])
    mask = torch.tensor([[T, T, T], [T, F, F]])
    stacked = []
    proj.net.register_forward_pre_hook(lambda _, args: stacked.append(args[0]))
    out, out_mask = proj(x, mask)
    expected = torch.tensor([[[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 0.0, 0.0]],  # frame 3 is padding added by the stack
                             [[7.0, 8.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]])  # frames 1, 2 are masked: zeroed
    assert torch.equal(stacked[0], expected)
    assert out_mask.tolist() == [[T, T], [T, F]]
    assert torch.equal(out, proj.net(expected))


@pytest.mark.parametrize("name", mmtransfer.list_projectors())
def test_padding_does_not_change_valid_outputs(name: str) -> None:
    """7 valid tokens: frame stacking (k=3) has a stack that is part valid, part padding."""
    proj = build_projector(name, 24, 32, **KWARGS.get(name, {})).eval()
    x = torch.randn(1, 7, 24)
    alone, m_alone = proj(x, torch.ones(1, 7, dtype=torch.bool))
    padded = torch.cat([x, torch.randn(1, 3, 24) * 100], dim=1)
    out, m_out = proj(padded, torch.tensor([[T] * 7 + [F] * 3]))
    n = int(m_alone.sum())
    assert int(m_out.sum()) == n
    assert torch.allclose(out[:, :n], alone[:, :n], atol=1e-5)


def test_unknown_names_list_the_valid_ones() -> None:
    with pytest.raises(KeyError, match="valid projectors: .*mlp"):
        build_projector("mpl", 2, 2)
    with pytest.raises(KeyError, match="valid encoders: .*timm"):
        mmtransfer.build_encoder("timmm")


def test_output_norm_puts_every_token_at_the_decoder_embedding_rms_and_survives_save_and_load(tmp_path) -> None:
    from mmtransfer.builder import embedding_rms
    from mmtransfer.projectors import OutputNorm
    from tests.tiny_models import tiny_model_config

    cfg = tiny_model_config(audio_projector={"name": "frame_stack", "k": 2, "norm": True})
    model = mmtransfer.build_model(cfg).eval()
    projector = model.projectors["audio"]
    assert isinstance(projector, OutputNorm)
    rms = embedding_rms(model.decoder)
    x = torch.randn(3, 10, model.encoders["audio"].out_dim) * 0.001  # a quiet input stays at the target scale
    y, mask = projector(x, torch.ones(3, 10, dtype=torch.bool))
    assert y.shape[1] == mask.shape[1] == 5
    assert torch.allclose(y.pow(2).mean(-1).sqrt(), torch.full((3, 5), rms), rtol=1e-3)
    with torch.no_grad():
        projector.gain.mul_(torch.linspace(0.5, 2.0, projector.gain.numel()))  # as if trained
    model.save_pretrained(str(tmp_path / "m"))
    loaded = mmtransfer.load(str(tmp_path / "m")).eval()
    assert torch.equal(loaded.projectors["audio"](x, torch.ones(3, 10, dtype=torch.bool))[0], projector(
        x, torch.ones(3, 10, dtype=torch.bool))[0])


def test_output_norm_without_the_embedding_rms_fails_clearly() -> None:
    with pytest.raises(ValueError, match="embed_rms"):
        build_projector("mlp", 8, 16, norm=True)
