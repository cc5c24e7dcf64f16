"""Mixed precision on the CPU (so CI runs it): bf16 and fp16 (with a GradScaler) train tiny models under
autocast with losses close to fp32's; an fp16 gradient overflow is a skipped, counted step that backs the
loss scale off and saves no NaN weight; resume is exact in each precision."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import mmtransfer
from mmtransfer.synthetic import write_all
from mmtransfer.train import checkpoint, loop, train
from tests.runs import interrupt_then_resume, record_weight_changes
from tests.test_numerics import _cfg, _record_saves

# bf16 keeps 8 bits of mantissa (fp16 10): a tiny model's loss under autocast stays within this of fp32's
LOSS_TOLERANCE = 0.02
pytestmark = pytest.mark.filterwarnings("ignore:precision .* on cpu:UserWarning")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_all(tmp_path_factory.mktemp("synthetic"), n_train=16, n_test=4)


def _losses(out: Path) -> dict[int, float]:
    """Step -> loss; a resumed run appends to ``log.jsonl``, so later lines (the resumed run's) win."""
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def _spy_lm_head_dtype(monkeypatch: pytest.MonkeyPatch) -> set[torch.dtype]:
    """The dtypes the decoder's LM head computed in while training."""
    seen: set[torch.dtype] = set()
    real_place = loop._place

    def place(model: mmtransfer.MultimodalGPT, *args: Any) -> None:
        real_place(model, *args)
        model.decoder.get_output_embeddings().register_forward_hook(
            lambda _m, _i, out: seen.add(out.dtype) if torch.is_grad_enabled() else None)

    monkeypatch.setattr(loop, "_place", place)
    return seen


@pytest.mark.parametrize(("precision", "dtype"), [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_mixed_precision_trains_on_cpu_close_to_fp32(
    precision: str, dtype: torch.dtype, synthetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train(_cfg(synthetic, tmp_path / "fp32", 8, "data.0.eval=null", "precision=fp32"))
    seen = _spy_lm_head_dtype(monkeypatch)
    with pytest.warns(UserWarning, match=f"precision {precision} on cpu: .*slower"):
        train(_cfg(synthetic, tmp_path / precision, 8, "data.0.eval=null", f"precision={precision}"))
    assert seen == {dtype}  # autocast really ran the decoder in half precision
    ref, half = _losses(tmp_path / "fp32"), _losses(tmp_path / precision)
    assert ref.keys() == half.keys() == set(range(1, 9))
    assert max(abs(ref[s] - half[s]) for s in ref) < LOSS_TOLERANCE
    assert sum(half[s] for s in (7, 8)) < sum(half[s] for s in (1, 2)) - 1.0  # the loss falls
    model = mmtransfer.load(tmp_path / precision / "final")
    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 master weights were saved


def _overflow_at(monkeypatch: pytest.MonkeyPatch, steps: set[int]) -> dict[str, int]:
    """Multiply the training loss by 1e6 on the given forward passes: the loss stays finite, but scaled by the
    GradScaler its gradients pass fp16's largest value (65504) in the backward pass: inf. Returns the
    counter of training forward passes (set ``n`` to 0 to start counting again)."""
    real_forward = mmtransfer.MultimodalGPT.forward
    calls = {"n": 0}

    def forward(self: mmtransfer.MultimodalGPT, *args: Any, **kwargs: Any) -> Any:
        out = real_forward(self, *args, **kwargs)
        if out.loss is not None and torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] in steps:
                out.loss = out.loss * 1e6
        return out

    monkeypatch.setattr(mmtransfer.MultimodalGPT, "forward", forward)
    return calls


def test_fp16_gradient_overflow_is_a_skipped_counted_step_and_backs_the_scale_off(
    synthetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _overflow_at(monkeypatch, {3})
    changed = record_weight_changes(monkeypatch)
    saves = _record_saves(monkeypatch)
    out = tmp_path / "run"
    train(_cfg(synthetic, out, 5, "data.0.eval=null", "precision=fp16", "save_every=1", "max_nonfinite=3"))
    assert changed == {1: True, 2: True, 3: False, 4: True, 5: True}  # only the overflowing step was skipped
    assert [s for s, _ in saves] == [1, 2, 4, 5, 5]  # none after the skipped step
    state = checkpoint.read_state(out / "checkpoint")
    assert (state["run"]["nonfinite_total"], state["run"]["nonfinite_in_row"]) == (1, 0)
    assert state["scaler"]["scale"] == 2.0**16 / 2  # backed off once from GradScaler's initial 65536
    for directory in (out / "final", out / "checkpoint" / "model"):
        assert all(torch.isfinite(p).all() for p in mmtransfer.load(directory).parameters())


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_resume_is_exact_in_mixed_precision(
    precision: str, synthetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fp16: step 2 overflows, so the checkpoint's loss scale (32768) differs from a fresh GradScaler's."""
    args = ("data.0.eval=null", f"precision={precision}", "save_every=3")
    calls = _overflow_at(monkeypatch, {2} if precision == "fp16" else set())
    train(_cfg(synthetic, tmp_path / "a", 6, *args))
    calls["n"] = 0
    interrupt_then_resume(_cfg(synthetic, tmp_path / "b", 6, *args), monkeypatch, at_batch=5)
    assert _losses(tmp_path / "b") == _losses(tmp_path / "a")
    assert len(_losses(tmp_path / "a")) == 6
    a, b = mmtransfer.load(tmp_path / "a" / "final"), mmtransfer.load(tmp_path / "b" / "final")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_precision_on_a_gpu_trains_in_half_precision(
    synthetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _spy_lm_head_dtype(monkeypatch)
    train(_cfg(synthetic, tmp_path / "run", 4, "data.0.eval=null", "precision=auto"))
    assert seen == {torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16}
    assert all(torch.isfinite(p).all() for p in mmtransfer.load(tmp_path / "run" / "final").parameters())
