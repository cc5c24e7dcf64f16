"""Speech recognition: WER and CER after ``mmtransfer.metrics.normalize_text``."""

from __future__ import annotations

from typing import Any

from mmtransfer.metrics import cer, wer
from mmtransfer.tasks.base import Sample, Task, register_task


@register_task
class ASR(Task):
    """Manifest line: ``{"audio": path, "text": transcript}``. Scored with WER (primary, lower is better)
    and CER after lowercasing, removing punctuation and collapsing whitespace; numbers are compared as
    written (no digit <-> word conversion)."""

    name = "asr"
    modality = "audio"
    api = "transcribe"
    required_fields = ("audio", "text")
    primary_metric = "wer"
    scorers = ("jiwer",)  # the packages its metrics import
    higher_is_better = False

    def references(self, sample: Sample) -> list[str]:
        return [sample["text"]]

    def _run(self, model: Any, samples: list[Sample], batch_size: int, **kwargs: Any) -> list[str]:
        # decoded arrays from a TaskDataset carry their rate; file paths carry their own
        rate = samples[0].get("sample_rate")
        return model.transcribe([s["audio"] for s in samples], sample_rate=rate, batch_size=batch_size, **kwargs)

    def score(self, predictions: list[str], references: list[list[str]]) -> dict[str, float]:
        refs = [r[0] for r in references]
        return {"wer": wer(predictions, refs), "cer": cer(predictions, refs)}
