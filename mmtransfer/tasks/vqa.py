"""Visual question answering: VQA accuracy over the human answers, after VQA answer normalisation."""

from __future__ import annotations

from collections import Counter
from typing import Any, ClassVar

from mmtransfer.metrics import normalize_answer, vqa_accuracy
from mmtransfer.tasks.base import Sample, Task, as_list, register_task


@register_task
class VQA(Task):
    """Manifest line: ``{"image": path, "question": str, "answer": answer or [human answers]}``
    (``answers`` is an alias of ``answer``). The training target is the most common answer (after
    ``normalize_answer``; ties go to the one listed first), written as it first appears."""

    name = "vqa"
    modality = "image"
    api = "answer"
    required_fields = ("image", "question", "answer")
    list_fields = ("answer",)
    aliases: ClassVar[dict[str, str]] = {"answers": "answer"}
    prompt_keys = ("question",)
    primary_metric = "vqa_accuracy"

    def references(self, sample: Sample) -> list[str]:
        return as_list(sample["answer"])

    def target(self, sample: Sample) -> str:
        answers = as_list(sample["answer"])
        normalized = [normalize_answer(a) for a in answers]
        best, _ = Counter(normalized).most_common(1)[0]
        return " " + answers[normalized.index(best)]

    def _run(self, model: Any, samples: list[Sample], batch_size: int, **kwargs: Any) -> list[str]:
        images = [s["image"] for s in samples]
        return model.answer(images, [s["question"] for s in samples], batch_size=batch_size, **kwargs)

    def score(self, predictions: list[str], references: list[list[str]]) -> dict[str, float]:
        return {"vqa_accuracy": vqa_accuracy(predictions, references)}
