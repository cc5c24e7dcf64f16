"""Text classification: accuracy and macro-F1, by LM label scoring or a classification head."""

from __future__ import annotations

from typing import Any

from mmtransfer.metrics import accuracy, macro_f1
from mmtransfer.tasks.base import Sample, Task, register_task


@register_task
class Classification(Task):
    """Manifest line: ``{"text": str, "label": str}``; the model's ``config.labels`` are the classes.

    With ``classifier="lm"`` the target is " " + label (scored token by token at inference, so no EOS);
    with a head the collator gives ``class_labels`` (indices into ``config.labels``) instead.
    ``model.classify`` handles both at evaluation; ``evaluate(..., shots=[(text, label), ...])`` gives
    few-shot prompts.
    """

    name = "classification"
    api = "classify"
    required_fields = ("text", "label")
    prompt_keys = ("text",)
    primary_metric = "accuracy"
    scorers = ("sklearn",)  # the packages its metrics import
    add_eos = False

    def generation_kwargs(self, max_new_tokens: int) -> dict[str, Any]:
        return {}  # labels are scored, not generated

    def class_names(self, model: Any) -> list[str] | None:
        return model.config.labels

    def references(self, sample: Sample) -> list[str]:
        return [sample["label"]]

    def _run(self, model: Any, samples: list[Sample], batch_size: int, **kwargs: Any) -> list[str]:
        return model.classify([s["text"] for s in samples], batch_size=batch_size, **kwargs)

    def score(self, predictions: list[str], references: list[list[str]]) -> dict[str, float]:
        refs = [r[0] for r in references]
        return {"accuracy": accuracy(predictions, refs), "macro_f1": macro_f1(predictions, refs)}
