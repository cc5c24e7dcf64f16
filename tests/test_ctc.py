"""CTC alignment stages (``objective: ctc``): the targets read from the labels, the loss's blank and alignment,
a stage that trains the audio projector only and lowers its loss, and the recipe errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmtransfer.bundled import RECIPES
from mmtransfer.chat import IGNORE_INDEX
from mmtransfer.errors import ConfigError
from mmtransfer.model.ctc import ctc_alignment_loss, transcript_targets
from mmtransfer.model.saving import load
from mmtransfer.synthetic import write_all
from mmtransfer.train import load_train_config, train

X = IGNORE_INDEX


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_all(tmp_path_factory.mktemp("synthetic"), n_train=48, n_test=8)


def test_targets_are_the_labelled_tokens_without_special_ones() -> None:
    labels = torch.tensor([[X, X, 5, 6, 7, 0], [X, X, X, X, 9, 0], [X, 3, 0, 4, 4, 0]])
    targets, lengths = transcript_targets(labels, special_ids=[0])
    assert lengths.tolist() == [3, 1, 3]
    assert targets.tolist() == [[5, 6, 7], [9, 0, 0], [3, 4, 4]]


def test_the_loss_is_near_zero_for_tokens_that_are_the_spoken_embeddings_and_blank_between() -> None:
    embeddings = torch.eye(4)  # V = 4 tokens, D = 4; the blank is id 4 at logit log 4
    a, b, blank = 30 * embeddings[1], 30 * embeddings[2], -30 * torch.ones(4)
    tokens = torch.stack([blank, a, a, blank, b, blank]).unsqueeze(0)  # [1, 6, 4]: "a" then "b"
    mask = torch.ones(1, 6, dtype=torch.bool)
    right = ctc_alignment_loss(tokens, mask, embeddings, torch.tensor([[1, 2]]), torch.tensor([2]))
    wrong = ctc_alignment_loss(tokens, mask, embeddings, torch.tensor([[2, 1]]), torch.tensor([2]))
    assert right.item() < 1e-4 < 10 < wrong.item()
    # padded frames past the mask take no part: "a" alone fits the first three frames
    short = ctc_alignment_loss(tokens, torch.tensor([[True] * 3 + [False] * 3]), embeddings, torch.tensor([[1]]),
                               torch.tensor([1]))
    assert short.item() < 1e-4


def test_a_row_too_short_for_its_transcript_adds_zero_not_inf() -> None:
    embeddings = torch.eye(4)
    tokens = torch.randn(2, 3, 4, requires_grad=True)
    mask = torch.tensor([[True, False, False], [True, True, True]])
    loss = ctc_alignment_loss(tokens, mask, embeddings, torch.tensor([[1, 2, 3], [1, 2, 0]]), torch.tensor([3, 2]))
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    assert tokens.grad[0].abs().sum() == 0 and tokens.grad[1].abs().sum() > 0


def test_the_loss_is_computed_in_fp32_under_autocast() -> None:
    tokens, embeddings = torch.randn(2, 6, 8), torch.randn(10, 8)
    mask, targets, lengths = torch.ones(2, 6, dtype=torch.bool), torch.tensor([[1, 2], [3, 0]]), torch.tensor([2, 1])
    full = ctc_alignment_loss(tokens, mask, embeddings, targets, lengths)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = ctc_alignment_loss(tokens, mask, embeddings, targets, lengths)
    assert mixed.dtype == torch.float32 and torch.equal(mixed, full)


def _asr_tiny(synthetic: Path, out: Path, *overrides: str) -> list[str]:
    return [f"data.0.train={synthetic / 'tones/asr_train.jsonl'}", f"data.0.eval={synthetic / 'tones/asr_test.jsonl'}",
            "data.0.max_eval_samples=4", f"output_dir={out}", "eval_every=0", "batch_size=8", "log_every=1",
            "model.trainable={audio_encoder: frozen, projectors: full, decoder: frozen}", *overrides]


def test_a_ctc_stage_trains_the_projector_alone_and_lowers_its_loss(synthetic: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = load_train_config(RECIPES / "asr-tiny.yaml", _asr_tiny(
        synthetic, out, "stages=[{name: align, steps: 30, objective: ctc}, {name: lm, steps: 2}]"))
    torch.manual_seed(0)
    from mmtransfer.model.builder import build_model

    initial = build_model(cfg.model).state_dict()
    train(cfg)
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    ctc = [r["loss"] for r in records if r.get("task") == "asr/ctc"]
    assert len(ctc) == 30 and all(r["stage"] == "align" for r in records if r.get("task") == "asr/ctc")
    assert sum(ctc[-5:]) / 5 < 0.7 * sum(ctc[:5]) / 5
    assert [r["stage"] for r in records if r.get("task") == "asr"] == ["lm", "lm"]
    trained = load(out / "final").state_dict()
    changed = {k.split(".")[0] for k, v in trained.items() if not torch.equal(v, initial[k])}
    assert changed == {"projectors"}  # the decoder and the encoder are untouched by both stages


@pytest.mark.parametrize(("override", "message"), [
    ("stages=[{name: a, steps: 2, objective: ctx}]", "stages[0].objective: 'ctx' is not lm or ctc"),
    ("stages=[{name: a, steps: 2, objective: ctc, trainable: {decoder: lora}}]",
     "stages[0].objective: ctc does not run the decoder; set this stage's trainable decoder: frozen (got lora)"),
    ("data.0.task=captioning", "ctc needs speech-to-text data (task asr) only, got captioning"),
    ("stages=[{name: a, steps: 2, trainable: {decoder: lora}}, {name: b, steps: 2, objective: ctc}]",
     "stages[1].objective: ctc does not run the decoder; set this stage's trainable decoder: frozen (got lora)"),
])
def test_recipe_errors_name_the_stage(synthetic: Path, tmp_path: Path, override: str, message: str) -> None:
    overrides = _asr_tiny(synthetic, tmp_path, "stages=[{name: a, steps: 2, objective: ctc}]", override)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        load_train_config(RECIPES / "asr-tiny.yaml", overrides)
