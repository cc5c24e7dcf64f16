"""Media gain: how much a model uses each of its inputs.

An eval split is scored twice: as it is, and with every input of one modality replaced by its blank (a black
image of the same size, silence of the same length; ``Modality.blank``). The media gain of that modality is
the difference, oriented so that positive means the input helps:

- ``gain/<kind>/loss``: eval loss with the blank minus eval loss as is (nats per target token);
- ``gain/<kind>/<metric>``: the task's primary metric as is minus with the blank (reversed for a lower-is-better
  metric such as WER).

A model whose loss gain is under ``MIN_GAIN`` answers the same without the input: ``ignored`` names such
modalities, and training and ``mmtransfer eval`` print a one-line warning for each. No peer reports this, and
their trackers hold many "answers without looking" / "transcribes nothing" threads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.data import Dataset

from mmtransfer.chat import parts
from mmtransfer.data.collate import MODEL_INPUTS, Collator
from mmtransfer.errors import DataError
from mmtransfer.modalities import modality
from mmtransfer.processing import to_device

MIN_GAIN = 0.01  # nats per target token: below this a modality is reported as ignored
GAIN = "gain"


def media_kinds(task: Any, dataset: Any) -> list[str]:
    """The part types an eval split feeds the model: the task's modality, or those of its conversations."""
    if task.modality is not None:
        return [task.modality]
    kinds: list[str] = []
    for sample in getattr(dataset, "samples", []):
        for message in sample.get("messages", []) if isinstance(sample, Mapping) else []:
            for part in parts(message):
                if part["type"] != "text" and part["type"] not in kinds:
                    kinds.append(part["type"])
    return kinds


class Blanked(Dataset):
    """``dataset``'s items with every ``kind`` input replaced by its blank (same size or length); the media path
    is dropped, so no feature cache serves the original. Items that are ``Skip`` records pass through."""

    def __init__(self, dataset: Any, kind: str) -> None:
        self.dataset = dataset
        self.kind = kind
        self.blank = modality(kind).blank
        self.samples = getattr(dataset, "samples", [])

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        item = self.dataset[index]
        if not isinstance(item, Mapping):
            return item
        item = dict(item)
        if "messages" in item:
            item["messages"] = [{**m, "content": [self._part(p) for p in parts(m)]} for m in item["messages"]]
        elif self.kind in item:
            item[self.kind] = self.blank(item[self.kind], item.get("sample_rate"))
            item.pop("file", None)
        return item

    def _part(self, part: dict[str, Any]) -> dict[str, Any]:
        if part["type"] != self.kind:
            return part
        if part.get("raw") is None:
            raise ValueError(f"a {self.kind} part without decoded media: blanking needs a dataset without a cache")
        blank = [self.blank(x, part.get("sample_rate")) for x in part["raw"]]
        part = {k: v for k, v in part.items() if k != "file"}
        return {**part, "raw": blank, self.kind: blank[0]}


@torch.no_grad()
def eval_loss(model: Any, task: Any, dataset: Any, batch_size: int) -> float:
    """Mean loss per target token (per row with a classification head) over ``dataset``'s usable items."""
    collate = Collator(model, task)
    items = [dataset[i] for i in range(len(dataset))]
    total, count = 0.0, 0
    for i in range(0, len(items), batch_size):
        batch = collate(items[i : i + batch_size])
        if "input_ids" not in batch:
            continue
        out = model(**to_device({k: v for k, v in batch.items() if k in MODEL_INPUTS}, model.device))
        n = len(batch["class_labels"]) if "class_labels" in batch else int((batch["labels"][:, 1:] != -100).sum())
        total += float(out.loss) * n
        count += n
    if not count:
        raise DataError(f"{task.name}: no samples to score the loss on (every one was skipped)")
    return total / count


def evaluate(model: Any, task: Any, dataset: Any, batch_size: int, media_gain: bool = True,
             **kwargs: Any) -> dict[str, float]:
    """The task's metrics on ``dataset``, its eval ``loss`` and, with ``media_gain``, each modality's gain
    (``gain/<kind>/loss``, ``gain/<kind>/<primary metric>``). ``kwargs`` go to generation."""
    was_training = model.training
    model.eval()
    metrics = dict(task.evaluate(model, dataset, batch_size, **kwargs))
    metrics["loss"] = eval_loss(model, task, dataset, batch_size)
    for kind in media_kinds(task, dataset) if media_gain else []:
        blanked = Blanked(dataset, kind)
        blank = task.evaluate(model, blanked, batch_size, **kwargs)
        metrics[f"{GAIN}/{kind}/loss"] = eval_loss(model, task, blanked, batch_size) - metrics["loss"]
        key = task.primary_metric
        sign = 1.0 if task.higher_is_better else -1.0
        metrics[f"{GAIN}/{kind}/{key}"] = sign * (metrics[key] - blank[key])
    model.train(was_training)
    return metrics


def ignored(metrics: Mapping[str, float]) -> list[str]:
    """``<dataset>/<kind>`` for every loss gain in ``metrics`` (keys ``[<dataset>/]gain/<kind>/loss``) under
    ``MIN_GAIN``."""
    out = []
    for key, value in metrics.items():
        head, sep, rest = key.rpartition(f"{GAIN}/")
        if sep and rest.endswith("/loss") and value < MIN_GAIN:
            out.append(head + rest[: -len("/loss")])
    return out


def warnings(metrics: Mapping[str, float]) -> list[str]:
    """One line per ignored modality, naming it and its gain."""
    return [f"warning: {name}: the model ignores its {name.rsplit('/', 1)[-1]} input (media gain: loss "
            f"{metrics[_loss_key(name)]:+.4f} nats/token, under {MIN_GAIN}); check the projector and its "
            "learning rate, or train longer" for name in ignored(metrics)]


def _loss_key(name: str) -> str:
    head, _, kind = name.rpartition("/")
    return f"{head}/{GAIN}/{kind}/loss" if head else f"{GAIN}/{kind}/loss"
