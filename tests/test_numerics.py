"""Numerics: a non-finite loss (too high a learning rate, an inf in an input feature, fp16 overflow) skips
the update and is counted; after ``max_nonfinite`` in a row the run stops with a clear message; nothing is
saved from a corrupted state (no ``final/``, no ``best/``, the last checkpoint as it was before).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch

import mmtransfer
from mmtransfer.bundled import RECIPES
from mmtransfer.data.collate import Collator
from mmtransfer.synthetic import write_all
from mmtransfer.train import NonFiniteLossError, checkpoint, load_train_config, train
from tests.runs import record_weight_changes
from tests.test_train import _overrides

ASR = RECIPES / "asr-tiny.yaml"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_all(tmp_path_factory.mktemp("synthetic"), n_train=16, n_test=4)


def _cfg(synthetic: Path, out: Path, steps: int, *extra: str) -> Any:
    args = _overrides(ASR, synthetic, out, steps) + ["batch_size=4", "optim.warmup_steps=0", *extra]
    return load_train_config(ASR, args)


def _digest(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(directory)).encode() + path.read_bytes())
    return digest.hexdigest()


def _rows(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _record_saves(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str]]:
    """(step, digest of checkpoint/) after every checkpoint write."""
    saves: list[tuple[int, str]] = []
    real = checkpoint.save_checkpoint

    def save(directory: Path, *args: Any, **kwargs: Any) -> None:
        real(directory, *args, **kwargs)
        saves.append((checkpoint.read_state(directory)["run"]["step"], _digest(directory)))

    monkeypatch.setattr(checkpoint, "save_checkpoint", save)
    return saves


def test_too_high_learning_rate_stops_the_run_and_keeps_the_last_good_checkpoint(
    synthetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    saves = _record_saves(monkeypatch)
    cfg = _cfg(synthetic, out, 12, "optim.lr=1e6", "optim.projector_lr=1e6", "optim.encoder_lr=1e6",  # YAML: str
               "save_every=1", "max_nonfinite=3")
    assert cfg.optim.lr == 1e6
    with pytest.raises(NonFiniteLossError, match="3 non-finite steps in a row") as err:
        train(cfg)
    assert "Nothing was saved from this state" in str(err.value)
    assert not (out / "final").exists() and not (out / "best").exists()
    losses = [r["loss"] for r in _rows(out) if "loss" in r]
    first_bad = next(i for i, loss in enumerate(losses, start=1) if loss != loss)
    assert saves and saves[-1][0] == first_bad - 1  # no checkpoint was written from inside the bad run
    assert _digest(out / "checkpoint") == saves[-1][1]  # and the one on disk is that last good one, unchanged
    state = checkpoint.read_state(out / "checkpoint")["run"]
    assert state["nonfinite_in_row"] == 0
    model = mmtransfer.load(out / "checkpoint" / "model")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_an_inf_input_feature_skips_that_update_counts_it_and_the_run_goes_on(
    synthetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_media = Collator._media
    calls = {"media": 0}

    def media(self: Collator, rendered: list) -> dict[str, dict[str, torch.Tensor]]:
        inputs = real_media(self, rendered)
        calls["media"] += 1
        if calls["media"] == 3:  # the third training batch
            inputs["audio"]["input_features"][0, 2, 5] = float("inf")
        return inputs

    monkeypatch.setattr(Collator, "_media", media)
    changed = record_weight_changes(monkeypatch)
    out = tmp_path / "run"
    train(_cfg(synthetic, out, 4, "data.0.eval=null"))
    losses = {r["step"]: r["loss"] for r in _rows(out) if "loss" in r}
    assert [s for s, loss in losses.items() if loss != loss] == [3]
    assert changed == {1: True, 2: True, 3: False, 4: True}  # only the bad step left the weights alone
    state = checkpoint.read_state(out / "checkpoint")["run"]
    assert (state["step"], state["nonfinite_total"], state["nonfinite_in_row"]) == (4, 1, 0)
    model = mmtransfer.load(out / "final")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_an_update_that_overflows_the_weights_is_never_saved(
    synthetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finite loss and gradients, but the update overflows (as low-precision weights can): the weights hold
    inf, later losses are NaN (skipped); below ``max_nonfinite`` the run reaches its end, and refuses to save."""
    real_step = torch.optim.AdamW.step

    def overflowing_step(self: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
        out = real_step(self, *args, **kwargs)
        with torch.no_grad():
            self.param_groups[0]["params"][0].view(-1)[0] = float("inf")
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", overflowing_step)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match="trained tensors hold NaN or inf"):
        train(_cfg(synthetic, out, 3, "max_nonfinite=100", "data.0.eval=null"))
    assert not (out / "final").exists() and not (out / "checkpoint").exists()


@pytest.mark.filterwarnings("ignore:precision fp16 on cpu:UserWarning")
def test_fp16_overflow_is_skipped_counted_and_stops_the_run(
    synthetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Activations past fp16's 65504 turn inf under autocast (on the CPU too); the loss is NaN: counted, then
    the run stops."""
    real_encode = mmtransfer.MultimodalGPT.encode
    calls = {"n": 0}

    def encode(self: mmtransfer.MultimodalGPT, modality: str, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        prefix, mask = real_encode(self, modality, inputs)
        calls["n"] += 1
        if calls["n"] > 2 and self.training:  # after two good steps
            prefix = prefix.half() * 1e6  # past fp16's largest value, 65504: inf
        return prefix, mask

    monkeypatch.setattr(mmtransfer.MultimodalGPT, "encode", encode)
    saves = _record_saves(monkeypatch)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match="3 non-finite steps in a row"):
        train(_cfg(synthetic, out, 8, "precision=fp16", "save_every=1", "max_nonfinite=3"))
    assert not (out / "final").exists()
    assert [s for s, _ in saves] == [1, 2] and _digest(out / "checkpoint") == saves[-1][1]
