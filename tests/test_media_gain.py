"""Media gain: the blank of every modality, exactly zero gain through a zeroed projector, a positive gain after
training, the warning that names an ignored input, and the gain in log.jsonl, the model card and `mmtransfer eval`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mmtransfer
from mmtransfer import media_gain
from mmtransfer.bundled import RECIPES
from mmtransfer.data import TaskDataset, read_manifest
from mmtransfer.data.conversations import read_conversations
from mmtransfer.modalities import MODALITIES
from mmtransfer.synthetic import write_all
from mmtransfer.tasks import get_task
from mmtransfer.train import load_train_config, train
from tests.tiny_models import tiny_model_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_all(tmp_path_factory.mktemp("synthetic"), n_train=48, n_test=8)


def _like(name: str) -> object:
    """A raw item of the kind the ``name`` modality's encoder takes, not blank."""
    if MODALITIES[name].encoder == "image":
        return Image.new("RGB", (40, 24), (200, 30, 90))
    return np.full(12345, 0.5, dtype=np.float32)


@pytest.mark.parametrize("name", sorted(MODALITIES))
def test_every_modality_has_a_blank_of_the_same_size_that_its_encoder_takes(name: str) -> None:
    spec = MODALITIES[name]
    like = _like(name)
    blank = spec.blank(like, 16000)
    if spec.encoder == "image":
        assert blank.size == like.size and blank.mode == "RGB"
        assert np.asarray(blank).max() == 0  # black
    else:
        assert blank.shape == like.shape and blank.dtype == np.float32
        assert not blank.any()  # silence
    default = spec.blank(None, 16000)
    assert default is not None
    model = mmtransfer.build_model(tiny_model_config())
    inputs = model.processor.preprocess(spec.encoder, [blank, default])
    feats, mask = model.encoders[spec.encoder](**inputs)
    assert feats.shape[0] == 2 and bool(torch.isfinite(feats).all())


def _dataset(model: mmtransfer.MultimodalGPT, task_name: str, path: Path) -> TaskDataset:
    task = get_task(task_name)
    samples = list(read_conversations(path) if task.conversational else read_manifest(path, task))
    return TaskDataset(samples, task, sample_rate=model.encoders["audio"].sample_rate)


def _zero(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()


@pytest.mark.parametrize(("task_name", "manifest", "kind"), [
    ("captioning", "shapes/captions_test.jsonl", "image"),
    ("asr", "tones/asr_test.jsonl", "audio"),
])
def test_a_zeroed_projector_gives_a_gain_of_exactly_zero(synthetic: Path, task_name: str, manifest: str,
                                                         kind: str) -> None:
    model = mmtransfer.build_model(tiny_model_config()).eval()
    dataset = _dataset(model, task_name, synthetic / manifest)
    before = media_gain.evaluate(model, get_task(task_name), dataset, 4, max_new_tokens=4)
    assert before[f"gain/{kind}/loss"] != 0.0  # a random projector does pass something on
    _zero(model.projectors[kind])
    metrics = media_gain.evaluate(model, get_task(task_name), dataset, 4, max_new_tokens=4)
    task = get_task(task_name)
    assert metrics[f"gain/{kind}/loss"] == 0.0
    assert metrics[f"gain/{kind}/{task.primary_metric}"] == 0.0
    assert media_gain.ignored(metrics) == [kind]
    [line] = media_gain.warnings(metrics)
    assert f"ignores its {kind} input" in line


def test_conversations_get_a_gain_per_modality(synthetic: Path) -> None:
    model = mmtransfer.build_model(tiny_model_config()).eval()
    dataset = _dataset(model, "chat", synthetic / "chat_mixed_test.jsonl")
    _zero(model.projectors["image"])
    metrics = media_gain.evaluate(model, get_task("chat"), dataset, 4, max_new_tokens=4)
    assert metrics["gain/image/loss"] == 0.0  # image parts reach the decoder through the zeroed projector only
    assert metrics["gain/audio/loss"] != 0.0  # an untrained model: either sign
    assert "image" in media_gain.ignored(metrics)


def test_blanking_keeps_everything_but_the_media(synthetic: Path) -> None:
    model = mmtransfer.build_model(tiny_model_config())
    dataset = _dataset(model, "captioning", synthetic / "shapes/captions_test.jsonl")
    item, blank = dataset[0], media_gain.Blanked(dataset, "image")[0]
    assert blank["target"] == item["target"] and blank["references"] == item["references"]
    assert blank["image"].size == item["image"].size and np.asarray(blank["image"]).max() == 0
    assert "file" in item and "file" not in blank  # so no feature cache can serve the original


def test_a_trained_model_uses_its_image_and_the_run_reports_it(synthetic: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    cfg = load_train_config(RECIPES / "captioning-tiny.yaml", [
        f"data.0.train={synthetic / 'shapes/captions_train.jsonl'}",
        f"data.0.eval={synthetic / 'shapes/captions_test.jsonl'}", "data.0.max_eval_samples=8",
        f"output_dir={out}", "stages.0.steps=30", "eval_every=0", "batch_size=8"])
    metrics = train(cfg)
    assert metrics["captioning/gain/image/loss"] > media_gain.MIN_GAIN
    assert "captioning/gain/image/cider_d" in metrics
    assert "ignores its image input" not in capsys.readouterr().out
    evals = [json.loads(line)["eval"] for line in (out / "log.jsonl").read_text().splitlines() if '"eval"' in line]
    assert evals[-1]["captioning/gain/image/loss"] == metrics["captioning/gain/image/loss"]
    card = (out / "final" / "README.md").read_text()
    assert "captioning/gain/image/loss" in card and "Media gain" in card


def test_mmtransfer_eval_reports_the_gain_and_warns_on_an_ignored_input(synthetic: Path, tmp_path: Path) -> None:
    model = mmtransfer.build_model(tiny_model_config())
    _zero(model.projectors["image"])
    model.save_pretrained(tmp_path / "model")
    cmd = [sys.executable, "-m", "mmtransfer.cli", "eval", str(tmp_path / "model"), "--task", "captioning",
           "--data", str(synthetic / "shapes/captions_test.jsonl"), "--limit", "4", "--max-new-tokens", "4"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    metrics = json.loads(done.stdout[done.stdout.index("{"):])
    assert metrics["gain/image/loss"] == 0.0
    assert "warning: image: the model ignores its image input" in done.stderr
