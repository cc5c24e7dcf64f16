"""Collator: a list of TaskDataset items -> one batch the model takes, with the references alongside."""

from __future__ import annotations

from typing import Any

import torch

from mmtransfer.data.cache import FeatureCache
from mmtransfer.data.datasets import Item
from mmtransfer.data.manifest import Skip
from mmtransfer.processing import with_placeholder
from mmtransfer.tasks import Task, get_task

MODEL_INPUTS = ("input_ids", "attention_mask", "labels", "image", "audio", "class_labels")


class Collator:
    """``collate(items) -> batch`` for one task, with the model's prompt template, tokenizer and encoders.

    Batch keys (tensors [B, ...]; B = items that decoded):

    - ``input_ids``, ``attention_mask`` [B, T] left-padded: prompt (the modality placeholder is prepended
      when the template has none) then target + EOS; ``labels`` [B, T] is IGNORE_INDEX on prompt and
      padding (the model also masks the spliced prefix). With a classification head: prompt only, and
      ``class_labels`` [B] (indices into ``model.config.labels``) instead of ``labels``.
    - ``image`` / ``audio``: the encoder's inputs, or with a ``cache`` the cached
      ``{"features": [B, N, D], "mask": [B, N]}``.
    - not tensors: ``task`` (name), ``references`` (list[list[str]]), ``n_skipped`` (items dropped
      because their file did not decode) and ``skipped`` (their ``Skip`` records).

    When every item of a batch failed, the batch has only the non-tensor keys: check ``"input_ids" in batch``.
    Keeps the processor, not the model, so that DataLoader workers do not copy the decoder.
    """

    def __init__(self, model: Any, task: str | Task, cache: FeatureCache | None = None) -> None:
        self.task = get_task(task)
        self.processor = model.processor
        self.template = model.prompt_template(self.task.api)
        self.class_names = list(model.config.labels or []) if model.head is not None else None
        if self.class_names is not None and self.task.api != "classify":
            raise ValueError(f"this model has a classification head; task '{self.task.name}' needs an LM")
        encoder = dict(model.encoders.items()).get(self.task.modality)
        if cache is not None and cache.encoder is not encoder:
            raise ValueError(f"this feature cache is not for the model's encoder of task '{self.task.name}'")
        self.cache = cache

    def __call__(self, items: list[Item | Skip]) -> dict[str, Any]:
        skipped = [x for x in items if isinstance(x, Skip)]
        items = [x for x in items if not isinstance(x, Skip)]
        batch: dict[str, Any] = {
            "task": self.task.name,
            "references": [x["references"] for x in items],
            "n_skipped": len(skipped),
            "skipped": skipped,
        }
        if not items:
            return batch
        prompts = [self.task.prompt(self.template, x) for x in items]
        modality = self.task.modality
        if modality is not None:
            prompts = with_placeholder(prompts, modality)
            batch[modality] = self._media(modality, items)
        if self.class_names is None:
            targets = [x["target"] for x in items]
            batch.update(self.processor.tokenize(prompts, targets, add_eos=self.task.add_eos))
        else:
            batch.update(self.processor.tokenize(prompts))
            batch["class_labels"] = torch.tensor([self._class_index(x) for x in items])
        return batch

    def _media(self, modality: str, items: list[Item]) -> dict[str, torch.Tensor]:
        media = [x[modality] for x in items]
        rate = items[0].get("sample_rate")

        def encoder_inputs(indices: list[int]) -> dict[str, torch.Tensor]:
            return self.processor.preprocess(modality, [media[i] for i in indices], rate)

        if self.cache is None:
            return encoder_inputs(list(range(len(items))))
        return self.cache.features([x["file"] for x in items], encoder_inputs)

    def _class_index(self, item: Item) -> int:
        try:
            return self.class_names.index(item["label"])
        except ValueError:
            path, line = item.get("source", ("<samples>", 0))
            raise ValueError(
                f"{path}:{line}: label '{item['label']}' is not one of the model's labels {self.class_names}; "
                "pass labels= to read_manifest to skip such lines"
            ) from None
