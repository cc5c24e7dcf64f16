"""Model cards: ``save_pretrained`` writes README.md (hub front matter, components, training data and metrics when a
run saved it, how to load it); a training run's record survives load and re-save; ``push_to_hub`` uploads a save."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from huggingface_hub import HfApi, ModelCard

import mmtransfer
from mmtransfer.bundled import RECIPES
from mmtransfer.model.card import TrainingRecord, training_record
from mmtransfer.synthetic import write_all
from mmtransfer.train import load_train_config, train
from tests.tiny_models import decoder_config, tiny_model_config


def card_of(folder: Path) -> ModelCard:
    return ModelCard.load(folder / "README.md")


def params(module: torch.nn.Module) -> str:
    """A part's size as the card writes it, counted here: total (trainable)."""
    def fmt(n: int) -> str:
        return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.2f}K" if n >= 1e3 else str(n)

    counts = [p.numel() for p in module.parameters()], [p.numel() for p in module.parameters() if p.requires_grad]
    return f"{fmt(sum(counts[0]))} ({fmt(sum(counts[1]))})"


def test_save_writes_a_card_with_front_matter_components_and_usage(tmp_path: Path) -> None:
    model = mmtransfer.build_model(tiny_model_config())
    model.save_pretrained(str(tmp_path / "m"))
    card = card_of(tmp_path / "m")
    assert card.data.library_name == "mmtransfer" and card.data.pipeline_tag == "any-to-any"
    assert {"mmtransfer", "image", "audio"} <= set(card.data.tags)
    assert card.data.base_model is None  # "tiny-gpt2" names no hub repository
    text = card.text
    assert f"| image encoder | timm `vit_tiny_patch16_224` | {params(model.encoders['image'])} | frozen |" in text
    assert f"| image projector | mlp | {params(model.projectors['image'])} | full |" in text
    assert f"| audio encoder | fbank | {params(model.encoders['audio'])} | frozen |" in text
    assert f"| audio projector | frame_stack | {params(model.projectors['audio'])} | full |" in text
    assert f"| decoder | `tiny-gpt2` (gpt2) | {params(model.decoder)} | frozen |" in text
    assert "Not recorded" in text
    for line in ('mmtransfer.load("path/to/this/folder")', 'model.caption("photo.jpg")', 'model.transcribe("clip.wav")',
                 "mmtransfer caption DIR photo.jpg", "mmtransfer transcribe DIR clip.wav"):
        assert line in text
    assert str(tmp_path) not in card.content and not (tmp_path / "m" / "training.json").exists()
    assert isinstance(mmtransfer.load(tmp_path / "m"), mmtransfer.MultimodalGPT)  # the card changes nothing else


def test_base_model_pipeline_and_policies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub = tiny_model_config()
    hub["decoder"] = {**hub["decoder"], "model": "openai-community/gpt2"}
    hub["trainable"] = {"decoder": "lora", "lora": {"r": 4, "alpha": 8}}
    model = mmtransfer.build_model(hub)
    model.save_pretrained(str(tmp_path / "hub"), trainable_only=True)
    card = card_of(tmp_path / "hub")
    assert card.data.base_model == "openai-community/gpt2" and "lora" in card.data.tags
    assert f"| decoder | `openai-community/gpt2` (gpt2) | {params(model.decoder)} | lora (r=4, alpha=8) |" in card.text
    assert "holds the trained tensors only" in card.text
    monkeypatch.chdir(tmp_path)
    (tmp_path / "local" / "lm").mkdir(parents=True)  # a local folder that looks like owner/name is no hub repo
    text_only = {"decoder": {**decoder_config(), "model": "local/lm"}, "classifier": "head", "labels": ["no", "yes"]}
    absolute = {"decoder": {**decoder_config(), "model": str(tmp_path / "models" / "my-lm")}}
    mmtransfer.build_model(absolute).save_pretrained(str(tmp_path / "abs"))
    card = card_of(tmp_path / "abs")
    assert str(tmp_path) not in card.content and "| decoder | `…/models/my-lm` (gpt2) |" in card.text
    mmtransfer.build_model(text_only).save_pretrained(str(tmp_path / "clf"))
    card = card_of(tmp_path / "clf")
    assert card.data.base_model is None and card.data.pipeline_tag == "text-classification"
    assert "| classification head | 2 labels |" in card.text and 'model.classify("some text")' in card.text
    image = tiny_model_config()
    image.pop("audio_encoder"), image.pop("audio_projector")
    mmtransfer.build_model(image).save_pretrained(str(tmp_path / "img"))
    assert card_of(tmp_path / "img").data.pipeline_tag == "image-text-to-text"


def test_absolute_data_paths_are_cut_to_their_last_parts(tmp_path: Path) -> None:
    data = [SimpleNamespace(task="vqa", name=None, train=str(tmp_path / "vqa" / "train.jsonl"), eval=None),
            SimpleNamespace(task="asr", name="digits", train="data/asr/train.jsonl", eval="data/asr/test.jsonl")]
    record = training_record(SimpleNamespace(source=str(tmp_path / "r.yaml"), data=data), {"vqa/acc": 0.5}, 7)
    assert record == TrainingRecord("r.yaml", [
        {"task": "vqa", "name": "vqa", "train": "…/vqa/train.jsonl", "eval": None},
        {"task": "asr", "name": "digits", "train": "data/asr/train.jsonl", "eval": "data/asr/test.jsonl"}],
        {"vqa/acc": 0.5}, 7)
    image = tiny_model_config()
    image.pop("audio_encoder"), image.pop("audio_projector")
    mmtransfer.save_pretrained(mmtransfer.build_model(image), tmp_path / "m", training=record)
    text = (tmp_path / "m" / "README.md").read_text()
    assert str(tmp_path) not in text
    assert "| vqa | vqa | `…/vqa/train.jsonl` | - |" in text and "| vqa/acc | 0.5 |" in text
    assert "Recipe: `r.yaml`, 7 steps." in text


def test_a_training_run_names_its_data_and_metrics_and_keeps_them(tmp_path: Path) -> None:
    data = write_all(tmp_path / "data", n_train=8, n_test=4) / "shapes"
    cfg = load_train_config(RECIPES / "captioning-tiny.yaml", [
        f"output_dir={tmp_path / 'run'}", f"data.0.train={data / 'captions_train.jsonl'}",
        f"data.0.eval={data / 'captions_test.jsonl'}", "data.0.max_eval_samples=4", "stages.0.steps=2",
        "batch_size=4", "eval_batch_size=4", "max_new_tokens=4", "model.trainable.image_encoder=frozen",
        "model.image_encoder.data_config.input_size=[3,32,32]"])
    metrics = train(cfg)
    for folder in ("final", "best"):
        card = card_of(tmp_path / "run" / folder)
        assert "captioning" in card.data.tags
        row = "| captioning | captioning | `…/shapes/captions_train.jsonl` | `…/shapes/captions_test.jsonl` |"
        assert row in card.text
        assert "Recipe: `captioning-tiny.yaml`, 2 steps." in card.text
        assert all(f"| {k} | {v:.4g} |" in card.text for k, v in metrics.items())
    model = mmtransfer.load(tmp_path / "run" / "final")
    assert model.training_record.metrics == metrics and model.training_record.steps == 2
    model.save_pretrained(str(tmp_path / "again"))  # loaded and saved again: the card still names the data
    assert card_of(tmp_path / "again").text == card_of(tmp_path / "run" / "final").text


def test_push_to_hub_creates_the_repo_and_uploads_a_save_with_its_card(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: dict[str, Any] = {}

    def create_repo(self: HfApi, repo_id: str, **kwargs: Any) -> SimpleNamespace:
        calls["create"] = (self.token, repo_id, kwargs)
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self: HfApi, **kwargs: Any) -> str:
        folder = Path(kwargs.pop("folder_path"))  # a temporary folder: read it now
        calls["upload"] = (self.token, kwargs, sorted(p.name for p in folder.iterdir()),
                           ModelCard.load(folder / "README.md"))
        return "commit"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    model = mmtransfer.build_model(tiny_model_config())
    assert model.push_to_hub("me/tiny", private=True, token="hf_x", commit_message="first") == "commit"
    assert calls["create"] == ("hf_x", "me/tiny", {"private": True, "exist_ok": True})
    token, kwargs, files, card = calls["upload"]
    assert token == "hf_x" and kwargs == {"repo_id": "me/tiny", "commit_message": "first"}
    assert files == ["README.md", "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert card.data.library_name == "mmtransfer" and card.text.lstrip().startswith("# me/tiny")
    assert 'path = snapshot_download("me/tiny")' in card.text and "hf download me/tiny" in card.text
