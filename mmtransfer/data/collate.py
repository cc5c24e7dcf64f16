"""Collator: a list of TaskDataset items -> one batch the model takes, with the references alongside."""

from __future__ import annotations

from typing import Any

import torch

from mmtransfer.data.cache import FeatureCache
from mmtransfer.data.datasets import Item, decode
from mmtransfer.data.manifest import Skip, check_on_error, report
from mmtransfer.decoder import context_length
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
    - not tensors: ``task`` (name), ``references`` (list[list[str]]), ``n_skipped`` (items dropped) and
      ``skipped`` (their ``Skip`` records).

    Items are dropped (or raise ``DataError`` with ``on_error="raise"``) when their file did not decode (a
    ``Skip`` from the dataset), when the encoder's preprocessing rejects their media (e.g. audio shorter than
    one analysis window), or when their prompt + target is longer than ``max_text_tokens`` tokens (default:
    the decoder's context length, past which a learned position table has no entry).

    When every item of a batch was dropped, the batch has only the non-tensor keys: check ``"input_ids" in
    batch``. Keeps the processor, not the model, so that DataLoader workers do not copy the decoder.
    """

    def __init__(
        self,
        model: Any,
        task: str | Task,
        cache: FeatureCache | None = None,
        *,
        on_error: str = "skip",
        max_text_tokens: int | None = None,
    ) -> None:
        check_on_error(on_error)
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
        self.on_error = on_error
        self.max_text_tokens = max_text_tokens or context_length(model.decoder)

    def __call__(self, items: list[Item | Skip]) -> dict[str, Any]:
        skipped = [x for x in items if isinstance(x, Skip)]
        items = [x for x in items if not isinstance(x, Skip)]
        modality = self.task.modality
        text, media = self._text(items), None
        if items and self.max_text_tokens:
            limit = self.max_text_tokens
            lengths = text["attention_mask"].sum(1).tolist()
            too_long = {i: f"text is {n} tokens, more than max_text_tokens={limit}" for i, n in enumerate(lengths)
                        if n > limit}
            items, text = self._keep(items, text, too_long, skipped)
        if items and modality is not None:
            try:
                media = self._media(modality, items)
            except (ValueError, RuntimeError, OSError):
                bad = self._media_errors(modality, items)
                if not bad:  # not one item's fault
                    raise
                items, text = self._keep(items, text, bad, skipped)
                media = self._media(modality, items) if items else None
        batch: dict[str, Any] = {
            "task": self.task.name,
            "references": [x["references"] for x in items],
            "n_skipped": len(skipped),
            "skipped": skipped,
        }
        if not items:
            return batch
        if modality is not None:
            batch[modality] = media
        batch.update(text)
        if self.class_names is not None:
            batch["class_labels"] = torch.tensor([self._class_index(x) for x in items])
        return batch

    def _text(self, items: list[Item]) -> dict[str, torch.Tensor]:
        """Tokenised prompts (+ targets with an LM), left-padded."""
        if not items:
            return {}
        prompts = [self.task.prompt(self.template, x) for x in items]
        if self.task.modality is not None:
            prompts = with_placeholder(prompts, self.task.modality)
        if self.class_names is not None:
            return self.processor.tokenize(prompts)
        return self.processor.tokenize(prompts, [x["target"] for x in items], add_eos=self.task.add_eos)

    def _keep(
        self, items: list[Item], text: dict[str, torch.Tensor], reasons: dict[int, str], skipped: list[Skip]
    ) -> tuple[list[Item], dict[str, torch.Tensor]]:
        """Report the items in ``reasons`` (raise, or record in ``skipped``) and drop them from ``items`` and
        from the rows of ``text`` (whose left padding shrinks to the longest row kept)."""
        for i, reason in sorted(reasons.items()):
            path, line = items[i].get("source", ("<samples>", 0))
            report(Skip(str(path), line, reason), self.on_error, skipped)
        keep = [i for i in range(len(items)) if i not in reasons]
        rows = {k: v[keep] for k, v in text.items()}
        width = int(rows["attention_mask"].sum(1).max()) if keep else 0
        return [items[i] for i in keep], {k: v[:, v.shape[1] - width :] for k, v in rows.items()}

    def _media(self, modality: str, items: list[Item]) -> dict[str, torch.Tensor]:
        rate = items[0].get("sample_rate")

        def encoder_inputs(indices: list[int]) -> dict[str, torch.Tensor]:
            return self.processor.preprocess(modality, [_media_of(items[i], modality) for i in indices], rate)

        if self.cache is None:
            return encoder_inputs(list(range(len(items))))
        return self.cache.features([x["file"] for x in items], encoder_inputs)

    def _media_errors(self, modality: str, items: list[Item]) -> dict[int, str]:
        """After a batch failed to preprocess: the items that fail alone, with the reason."""
        errors = {}
        for i, item in enumerate(items):
            try:
                self.processor.preprocess(modality, [_media_of(item, modality)], item.get("sample_rate"))
            except (ValueError, RuntimeError, OSError) as err:
                errors[i] = f"{modality} file {item.get('file', '<in memory>')}: {err}"
        return errors

    def _class_index(self, item: Item) -> int:
        try:
            return self.class_names.index(item["label"])
        except ValueError:
            path, line = item.get("source", ("<samples>", 0))
            raise ValueError(
                f"{path}:{line}: label '{item['label']}' is not one of the model's labels {self.class_names}; "
                "pass labels= to read_manifest to skip such lines"
            ) from None


def _media_of(item: Item, modality: str) -> Any:
    """The item's decoded media; decoded here when the dataset skipped it as cached (a cache miss after all)."""
    media = item[modality]
    return decode(modality, item["file"], item.get("sample_rate")) if media is None else media

