"""Every registered projector: exact output masks, shapes, padding invariance; frame stacking against stacks
written out by hand; the registry's errors."""

from __future__ import annotations

import pytest
import torch

import mmtransfer
from mmtransfer.projectors import build_projector

GRID = ("pixel_shuffle", "pool", "ldp")  # projectors that compress an image's token grid
# the generic tests' 10 tokens as 2 prefix (class / register) tokens and a 2x4 grid, compressed to 1x2
KWARGS = {"transformer": {"prefix_len": 5, "heads": 2}, "resampler": {"num_queries": 6, "heads": 2},
          "frame_stack": {"k": 3}, "pixel_shuffle": {"grid": [2, 4], "prefix_tokens": 2},
          "pool": {"grid": [2, 4], "prefix_tokens": 2, "size": [1, 2]}, "ldp": {"grid": [2, 4], "prefix_tokens": 2}}


def test_every_projector_has_test_kwargs_or_needs_none() -> None:
    assert set(KWARGS) <= set(mmtransfer.list_projectors())
    assert {"linear", "mlp", "transformer", "resampler", "frame_stack", *GRID} <= set(mmtransfer.list_projectors())


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
    # 2 prefix tokens, then two 2x2 windows of the 2x4 grid; the second row's grid tokens 5-7 are padding, but
    # each window holds a valid token
    "pixel_shuffle": [[T] * 4] * 2,
    "pool": [[T] * 4] * 2,
    "ldp": [[T] * 4] * 2,
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


@pytest.mark.parametrize("name", [n for n in mmtransfer.list_projectors() if n not in GRID])
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
    from mmtransfer.model.builder import embedding_rms
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


# tokens out for: a ViT's 4x4 patches after a class token; a CNN's non-square 4x6 feature map
GRID_CASES = {
    "pixel_shuffle": ({"prefix_tokens": 1}, 1 + 4, {"grid": [4, 6]}, 6),
    "pool": ({"prefix_tokens": 1, "size": 2}, 1 + 4, {"grid": [4, 6], "size": [2, 3]}, 6),
    "ldp": ({"prefix_tokens": 1}, 1 + 4, {"grid": [4, 6]}, 6),
}


@pytest.mark.parametrize("name", GRID)
def test_grid_projectors_on_vit_tokens_and_on_non_square_cnn_maps(name: str) -> None:
    vit, vit_out, cnn, cnn_out = GRID_CASES[name]
    out, mask = build_projector(name, 24, 32, **vit)(torch.randn(3, 17, 24), torch.ones(3, 17, dtype=torch.bool))
    assert out.shape == (3, vit_out, 32) and mask.all() and mask.shape == (3, vit_out)
    out, mask = build_projector(name, 24, 32, **cnn)(torch.randn(3, 24, 24), torch.ones(3, 24, dtype=torch.bool))
    assert out.shape == (3, cnn_out, 32) and mask.shape == (3, cnn_out)


@pytest.mark.parametrize("name", GRID)
def test_grid_projectors_refuse_a_grid_they_cannot_divide(name: str) -> None:
    kwargs = {"size": 2} if name == "pool" else {}
    proj = build_projector(name, 24, 32, **kwargs)
    with pytest.raises(ValueError, match="7x7 token grid"):
        proj(torch.randn(1, 49, 24), torch.ones(1, 49, dtype=torch.bool))
    with pytest.raises(ValueError, match="50 grid tokens are not a 7x7 grid; set grid"):
        proj(torch.randn(1, 50, 24), torch.ones(1, 50, dtype=torch.bool))
    if name == "pool":  # bilinear pools any grid
        out, _ = build_projector(name, 24, 32, size=2, mode="bilinear")(torch.randn(1, 49, 24),
                                                                        torch.ones(1, 49, dtype=torch.bool))
        assert out.shape == (1, 4, 32)


@pytest.mark.parametrize("name", GRID)
def test_grid_projectors_batched_equal_single_and_pass_gradients_to_every_weight(name: str) -> None:
    proj = build_projector(name, 24, 32, **GRID_CASES[name][0])
    x = torch.randn(3, 17, 24, requires_grad=True)
    mask = torch.ones(3, 17, dtype=torch.bool)
    batched, _ = proj(x, mask)
    for i in range(3):
        alone, _ = proj(x[i : i + 1], mask[i : i + 1])
        torch.testing.assert_close(alone, batched[i : i + 1], rtol=1e-5, atol=1e-6)
    batched.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for pname, p in proj.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


def test_pixel_shuffle_concatenates_each_window_in_row_major_order() -> None:
    """A 2x4 grid, factor 2: window (0, 0) is tokens 0, 1, 4, 5 and window (0, 1) tokens 2, 3, 6, 7, each window's
    tokens concatenated in order (Idefics3's connector)."""
    proj = build_projector("pixel_shuffle", 2, 4, grid=[2, 4])
    x = torch.arange(16.0).reshape(1, 8, 2)  # token t = [2t, 2t + 1]
    seen = []
    proj.net.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    out, _ = proj(x, torch.ones(1, 8, dtype=torch.bool))
    tokens = x[0]
    expected = torch.stack([torch.cat([tokens[i] for i in (0, 1, 4, 5)]), torch.cat([tokens[i] for i in (2, 3, 6, 7)])])
    assert torch.equal(seen[0][0], expected)
    assert out.shape == (1, 2, 4)


def test_pool_averages_each_window() -> None:
    proj = build_projector("pool", 1, 1, size=[1, 2], grid=[2, 4])
    x = torch.arange(8.0).reshape(1, 8, 1)
    seen = []
    proj.net.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    proj(x, torch.ones(1, 8, dtype=torch.bool))
    assert seen[0].flatten().tolist() == [(0 + 1 + 4 + 5) / 4, (2 + 3 + 6 + 7) / 4]


def test_frame_stack_with_a_stride_overlaps_its_stacks() -> None:
    """k=2, stride 1 over 3 frames: stacks (0, 1), (1, 2), (2, pad)."""
    proj = build_projector("frame_stack", 1, 2, k=2, stride=1)
    stacked = []
    proj.net.register_forward_pre_hook(lambda _, args: stacked.append(args[0]))
    _, mask = proj(torch.tensor([[[1.0], [2.0], [3.0]]]), torch.ones(1, 3, dtype=torch.bool))
    assert stacked[0].tolist() == [[[1.0, 2.0], [2.0, 3.0], [3.0, 0.0]]]
    assert mask.tolist() == [[T, T, T]]
    with pytest.raises(ValueError, match="stride must be in"):
        build_projector("frame_stack", 1, 2, k=2, stride=3)


@pytest.mark.parametrize("kwargs", [{"k": 3, "stride": 2}, {"k": 3, "conv": True}])
def test_frame_stack_options_keep_padding_out_of_valid_outputs(kwargs: dict) -> None:
    proj = build_projector("frame_stack", 24, 32, **kwargs).eval()
    x = torch.randn(1, 7, 24)
    alone, m_alone = proj(x, torch.ones(1, 7, dtype=torch.bool))
    out, m_out = proj(torch.cat([x, torch.randn(1, 3, 24) * 100], 1), torch.tensor([[T] * 7 + [F] * 3]))
    n = int(m_alone.sum())
    assert int(m_out.sum()) == n
    torch.testing.assert_close(out[:, :n], alone[:, :n], rtol=1e-5, atol=1e-5)


def test_frame_stack_time_mask_zeroes_spans_inside_the_clip_in_training_only() -> None:
    """``time_mask: [2, 3]``: in training, up to 2 spans of up to 3 frames inside each clip's valid frames are zeroed
    before stacking (and nothing else); in eval mode the output equals the projector without it."""
    torch.manual_seed(0)
    masked = build_projector("frame_stack", 1, 2, k=1, time_mask=[2, 3])
    plain = build_projector("frame_stack", 1, 2, k=1)
    plain.load_state_dict(masked.state_dict())
    x = torch.arange(1.0, 1.0 + 2 * 12).view(2, 12, 1)
    mask = torch.tensor([[T] * 12, [T] * 8 + [F] * 4])
    stacked = []
    masked.net.register_forward_pre_hook(lambda _, args: stacked.append(args[0][..., 0]))
    zeroed_counts = set()
    for _ in range(20):
        masked(x, mask)
        kept = stacked[-1]
        for row, valid in ((0, 12), (1, 8)):
            zeroed = [i for i in range(valid) if kept[row, i] == 0]
            assert all(kept[row, i] == x[row, i, 0] for i in range(valid) if i not in zeroed)
            assert len(zeroed) <= 6 and all(kept[row, i] == 0 for i in range(valid, 12))
            zeroed_counts.add(len(zeroed))
    assert max(zeroed_counts) > 0 and min(zeroed_counts) < max(zeroed_counts)  # random widths, some masking
    masked.eval()
    out, out_mask = masked(x, mask)
    expected, expected_mask = plain.eval()(x, mask)
    assert torch.equal(out, expected) and torch.equal(out_mask, expected_mask)
    with pytest.raises(ValueError, match=r"time_mask must be \[spans, max width\]"):
        build_projector("frame_stack", 1, 2, k=1, time_mask=[3])
