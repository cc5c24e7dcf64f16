"""Tasks: registry, prompts and targets, and evaluate() on the tiny model and on a scripted stand-in."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

import mmtransfer
from mmtransfer.data import Skip, TaskDataset, read_manifest
from mmtransfer.tasks import TASKS, get_task
from tests.tiny_models import tiny_model_config


def _manifest(tmp_path: Path, task: str, lines: list[dict[str, Any]]) -> Path:
    for line in lines:
        if "image" in line and not (tmp_path / line["image"]).exists():
            pixels = np.random.default_rng(len(line["image"])).integers(0, 255, (20, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / line["image"])
        if "audio" in line and not (tmp_path / line["audio"]).exists():
            sf.write(tmp_path / line["audio"], np.random.default_rng(0).uniform(-0.3, 0.3, 3200), 16000)
    path = tmp_path / f"{task}.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


CAPTIONS = [
    {"image": "a.png", "text": ["a red circle", "one red circle"]},
    {"image": "b.png", "captions": "a blue square"},
]
QUESTIONS = [{"image": "a.png", "question": "what colour?", "answer": ["red", "red", "crimson"]},
             {"image": "b.png", "question": "how many?", "answers": "two"}]
SPEECH = [{"audio": "a.wav", "text": "three five"}, {"audio": "b.wav", "text": "seven"}]
TEXTS = [{"text": "a wonderful film", "label": "positive"}, {"text": "dull", "label": "negative"}]
DATA = {"captioning": CAPTIONS, "vqa": QUESTIONS, "asr": SPEECH, "classification": TEXTS}
METRICS = {"captioning": {"bleu4", "cider_d"}, "vqa": {"vqa_accuracy"}, "asr": {"wer", "cer"},
           "classification": {"accuracy", "macro_f1"}}


def test_registry() -> None:
    assert TASKS.names() == ["asr", "captioning", "chat", "classification", "vqa"]
    task = get_task("asr")
    assert get_task(task) is task and task.modality == "audio" and task.api == "transcribe"
    assert (task.primary_metric, task.higher_is_better) == ("wer", False)
    with pytest.raises(KeyError, match="valid tasks: asr, captioning, chat, classification, vqa"):
        get_task("translation")


def test_prompts_and_targets(tiny_model: mmtransfer.MultimodalGPT) -> None:
    vqa = get_task("vqa")
    sample = vqa.normalize({"image": "x.png", "question": " what colour? ", "answer": ["Red", "blue", "red."]})
    image = {"type": "image", "image": "x.png", "file": "x.png"}
    assert vqa.conversation(tiny_model.prompt_template("answer"), sample, " Red") == [
        {"role": "user", "content": [image, {"type": "text", "text": "Question: what colour?\nAnswer:"}]},
        {"role": "assistant", "content": " Red"},
    ]
    assert vqa.conversation("Q: {question} A: <image>", sample) == [
        {"role": "user", "content": [{"type": "text", "text": "Q: what colour? A: "}, image]}]
    assert vqa.target(sample) == " Red"  # most common after normalisation, as first written
    assert vqa.references(sample) == ["Red", "blue", "red."]
    cls = get_task("classification")
    text = {"text": "dull", "label": "negative"}
    assert cls.conversation(tiny_model.prompt_template("classify"), text) == [
        {"role": "user", "content": [{"type": "text", "text": "dull\nLabel:"}]}]
    assert cls.target(text) == " negative"
    cap = get_task("captioning")
    caps = cap.normalize({"image": "x.png", "captions": ["one", "two"]})
    assert cap.conversation(tiny_model.prompt_template("caption"), caps)[0]["content"] == [image]
    assert cap.target(caps) == " one"
    assert cap.targets(caps) == [" one", " two"]
    assert get_task("asr").target({"audio": "x.wav", "text": "hi"}) == " hi"
    assert cap.references({"image": "x.png", "text": "hand written"}) == ["hand written"]
    assert vqa.postprocess("  red \nQuestion: more") == "red"


class Scripted:
    """Answers with each sample's first reference (plus noise after a newline), through the inference API."""

    def __init__(self, samples: list[dict[str, Any]], task: str) -> None:
        self.answers = [get_task(task).references(s)[0] + "\nrambling" for s in samples]
        self.calls: list[int] = []

    def _reply(self, items: list[Any], **kwargs: Any) -> list[str]:
        start = sum(self.calls)
        self.calls.append(len(items))
        return self.answers[start : start + len(items)]

    def caption(self, images: list[Any], **kwargs: Any) -> list[str]:
        return self._reply(images)

    def answer(self, images: list[Any], questions: list[str], **kwargs: Any) -> list[str]:
        return self._reply(images)

    def transcribe(self, audio: list[Any], **kwargs: Any) -> list[str]:
        return self._reply(audio)

    def classify(self, texts: list[str], **kwargs: Any) -> list[str]:
        return self._reply(texts)


@pytest.mark.parametrize("task", ["vqa", "asr", "classification"])
def test_evaluate_scores_perfect_predictions(task: str) -> None:
    t = get_task(task)
    samples = [t.normalize(s) for s in DATA[task]] * 3
    model = Scripted(samples, task)
    metrics = t.evaluate(model, samples, batch_size=4)
    assert model.calls == [4, 2]
    # VQA: "red" is 2 of the first question's 3 answers
    best = {"vqa": (2 / 3 + 1) / 2, "asr": 0.0, "classification": 1.0}[task]
    assert metrics[t.primary_metric] == pytest.approx(best)


@pytest.mark.parametrize("task", ["captioning", "vqa", "asr", "classification"])
def test_evaluate_on_the_tiny_model(tmp_path: Path, tiny_model: mmtransfer.MultimodalGPT, task: str) -> None:
    tiny_model.config.labels = ["negative", "positive"]
    t = get_task(task)
    manifest = read_manifest(_manifest(tmp_path, task, DATA[task]), task, on_error="raise")
    kwargs = {"shots": [("great", "positive")]} if task == "classification" else {"max_new_tokens": 4}
    metrics = t.evaluate(tiny_model, manifest, batch_size=2, **kwargs)
    assert set(metrics) == METRICS[task] and t.primary_metric in metrics
    assert all(isinstance(v, float) and np.isfinite(v) for v in metrics.values())
    # decoded items from a TaskDataset give the same predictions as the files
    dataset = TaskDataset(manifest, task, sample_rate=tiny_model.encoders["audio"].sample_rate)
    assert t.evaluate(tiny_model, dataset, batch_size=2, **kwargs) == metrics


def test_evaluate_with_a_classification_head_leaves_out_skips(tmp_path: Path) -> None:
    model = mmtransfer.build_model(tiny_model_config("gpt2", labels=["negative", "positive"], classifier="head"))
    task = get_task("classification")
    metrics = task.evaluate(model.eval(), [*TEXTS, Skip("m.jsonl", 3, "bad")])
    assert set(metrics) == {"accuracy", "macro_f1"}
    with pytest.raises(ValueError, match="no samples"):
        task.evaluate(model, [])
