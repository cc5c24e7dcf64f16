"""Image captioning: BLEU-4 and CIDEr-D against every reference caption of an image."""

from __future__ import annotations

from typing import Any, ClassVar

from mmtransfer.metrics import bleu4, cider_d
from mmtransfer.tasks.base import Sample, Task, as_list, register_task


@register_task
class Captioning(Task):
    """Manifest line: ``{"image": path, "text": caption or [captions]}`` (``captions`` is an alias of ``text``).

    The training target is the first caption, or each caption in turn with ``TaskDataset(...,
    expand_targets=True)``; scoring uses all of them.
    """

    name = "captioning"
    modality = "image"
    api = "caption"
    required_fields = ("image", "text")
    list_fields = ("text",)
    aliases: ClassVar[dict[str, str]] = {"captions": "text"}
    primary_metric = "cider_d"
    scorers = ("pycocoevalcap",)  # the packages its metrics import

    def references(self, sample: Sample) -> list[str]:
        return as_list(sample["text"])

    def targets(self, sample: Sample) -> list[str]:
        return [" " + caption for caption in as_list(sample["text"])]

    def _run(self, model: Any, samples: list[Sample], batch_size: int, **kwargs: Any) -> list[str]:
        return model.caption([s["image"] for s in samples], batch_size=batch_size, **kwargs)

    def score(self, predictions: list[str], references: list[list[str]]) -> dict[str, float]:
        return {"bleu4": bleu4(predictions, references), "cider_d": cider_d(predictions, references)}
