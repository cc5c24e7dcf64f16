"""Collator: a list of TaskDataset items -> one batch the model takes, with the references alongside."""

from __future__ import annotations

from typing import Any

import torch
from jinja2 import TemplateError

from mmtransfer.chat import IGNORE_INDEX, Rendered
from mmtransfer.data.cache import FeatureCache
from mmtransfer.data.records import Skip, check_on_error, report
from mmtransfer.modalities import ENCODER_KINDS, by_encoder, modality
from mmtransfer.model.decoder import context_length
from mmtransfer.tasks import Task, get_task
from mmtransfer.trainable import is_frozen

MODEL_INPUTS = ("input_ids", "attention_mask", "labels", "class_labels", "pack_tokens", *ENCODER_KINDS)
MEDIA_ERRORS = (ValueError, RuntimeError, OSError)
RENDER_ERRORS = (ValueError, TemplateError)  # TemplateError: a chat template's raise_exception


class Collator:
    """``collate(items) -> batch`` for one task, with the model's prompt template, tokenizer and encoders.

    Each item becomes a conversation (``Task.conversation``: the prompt template and the target; a ``chat``
    item is one already), rendered by the model's processor. Batch keys (tensors [B, ...]; B = items kept):

    - ``input_ids``, ``attention_mask`` [B, T] left-padded; ``labels`` [B, T] on the assistant turns only
      (every turn, or the last with ``loss_on="last"``), IGNORE_INDEX elsewhere. With a classification head:
      the prompt only, and ``class_labels`` [B] (indices into ``model.config.labels``) instead of ``labels``.
    - per encoder kind with media in the batch (``image``, ``audio``): the encoder's inputs for every media
      item in placeholder order, or with a cache for that kind the cached ``{"features": [K, N, D], "mask":
      [K, N]}``. A video part gives ``video_frames`` image items.
    - not tensors: ``task`` (name), ``references`` (list[list[str]]), ``sources`` ((file, line) per row),
      ``n_skipped`` (items dropped), ``skipped`` (their ``Skip`` records) and ``on_error`` (for problems the
      model finds later: a row whose prefixes and text exceed the decoder's context).
    - with ``pack_tokens``: ``pack_tokens`` (a 0-d tensor), the row budget the model packs the spliced samples
      under (``mmtransfer.packing``; the model packs, since prefix lengths are known only after the encoders).

    Items are dropped (or raise ``DataError`` with ``on_error="raise"``) when their file did not decode (a
    ``Skip`` from the dataset), when the encoder's preprocessing rejects their media (e.g. audio shorter than
    one analysis window), when their text is longer than ``max_text_tokens`` tokens (default: the decoder's
    context length), or when they have no target token to learn from.

    When every item of a batch was dropped, the batch has only the non-tensor keys: check ``"input_ids" in
    batch``. Keeps the processor, not the model, so that DataLoader workers do not copy the decoder.
    """

    def __init__(
        self,
        model: Any,
        task: str | Task,
        cache: FeatureCache | dict[str, FeatureCache] | None = None,
        *,
        on_error: str = "skip",
        max_text_tokens: int | None = None,
        loss_on: str = "all",
        pack_tokens: int | None = None,
    ) -> None:
        check_on_error(on_error)
        if pack_tokens is not None and pack_tokens < 1:
            raise ValueError(f"pack_tokens must be >= 1, got {pack_tokens}")
        self.pack_tokens = pack_tokens
        self.task = get_task(task)
        self.processor = model.processor
        self.template = "" if self.task.conversational else model.prompt_template(self.task.api)
        self.class_names = list(model.config.labels or []) if model.head is not None else None
        if self.class_names is not None and self.task.class_names(model) is None:
            raise ValueError(f"this model has a classification head; task '{self.task.name}' needs an LM")
        if isinstance(cache, FeatureCache):  # one cache: for the task's modality
            cache = {self.task.modality or cache.encoder.modality: cache}
        for kind, c in (cache or {}).items():
            if c.encoder is not dict(model.encoders.items()).get(kind):
                raise ValueError(f"this feature cache is not for the model's encoder of {kind} inputs")
        self.caches = dict(cache or {})
        self.on_error = on_error
        self.loss_on = loss_on
        self.max_text_tokens = max_text_tokens or context_length(model.decoder)

    def __call__(self, items: list[dict[str, Any] | Skip]) -> dict[str, Any]:
        skipped = [x for x in items if isinstance(x, Skip)]
        items = [x for x in items if not isinstance(x, Skip)]
        rendered, problems = self._render(items)
        items, rendered = self._keep(items, rendered, problems | self._text_problems(rendered), skipped)
        media: dict[str, Any] = {}
        if items:
            try:
                media = self._media(rendered)
            except MEDIA_ERRORS:
                bad = self._media_errors(items, rendered)
                if not bad:  # not one item's fault
                    raise
                items, rendered = self._keep(items, rendered, bad, skipped)
                media = self._media(rendered) if items else {}
        batch: dict[str, Any] = {
            "task": self.task.name,
            "references": [x["references"] for x in items],
            "sources": [x.get("source", ("<samples>", 0)) for x in items],
            "n_skipped": len(skipped),
            "skipped": skipped,
            "on_error": self.on_error,
        }
        if not items:
            return batch
        batch.update(media)
        batch.update(self.processor.pad(rendered, labels=self.class_names is None))
        if self.class_names is not None:
            batch["class_labels"] = torch.tensor([self._class_index(x) for x in items])
        if self.pack_tokens is not None:
            batch["pack_tokens"] = torch.tensor(self.pack_tokens)
        return batch

    def _render(self, items: list[dict[str, Any]]) -> tuple[list[Rendered | None], dict[int, str]]:
        """Each item's conversation as ids and labels (with a head: the prompt only), and the items that
        cannot be rendered (a part this model has no encoder for, a template that refuses the turns)."""
        head = self.class_names is not None
        conversations = [
            x["messages"] if "messages" in x else
            self.task.conversation(self.template, x, None if head else x["target"])
            for x in items
        ]

        def render(convs: list[Any]) -> list[Rendered]:
            return self.processor.render(convs, labels=not head, add_generation_prompt=head,
                                         loss_on=self.loss_on, add_eos=self.task.add_eos)

        try:
            return render(conversations), {}
        except RENDER_ERRORS:  # find the rows at fault, one at a time
            out: list[Rendered | None] = []
            problems = {}
            for i, conv in enumerate(conversations):
                try:
                    out += render([conv])
                except RENDER_ERRORS as err:
                    out.append(None)
                    problems[i] = f"cannot render the conversation: {err}"
            return out, problems

    def _text_problems(self, rendered: list[Rendered | None]) -> dict[int, str]:
        """Rows too long for the decoder, or (with an LM) without a single target token."""
        problems = {}
        for i, r in enumerate(rendered):
            if r is None:
                continue
            if self.max_text_tokens and len(r.input_ids) > self.max_text_tokens:
                problems[i] = f"text is {len(r.input_ids)} tokens, more than max_text_tokens={self.max_text_tokens}"
            elif self.class_names is None and all(t == IGNORE_INDEX for t in r.labels):
                problems[i] = "no target tokens (an empty assistant turn?)"
        return problems

    def _keep(
        self, items: list[dict[str, Any]], rendered: list[Any], reasons: dict[int, str], skipped: list[Skip]
    ) -> tuple[list[dict[str, Any]], list[Rendered]]:
        """Report the items in ``reasons`` (raise, or record in ``skipped``) and drop them."""
        for i, reason in sorted(reasons.items()):
            path, line = items[i].get("source", ("<samples>", 0))
            report(Skip(str(path), line, reason), self.on_error, skipped)
        keep = [i for i in range(len(items)) if i not in reasons]
        return [items[i] for i in keep], [rendered[i] for i in keep]

    def _media(self, rendered: list[Rendered]) -> dict[str, dict[str, torch.Tensor]]:
        """Encoder kind -> inputs (or cached features) for every media part of the batch, in order."""
        out = {}
        for kind, parts in by_encoder(part for r in rendered for part in r.media).items():
            cache = self.caches.get(kind)
            # a stage that trains the encoder needs its inputs again: cached outputs would give it no gradient
            if cache is not None and is_frozen(cache.encoder) and all(_cacheable(p) for p in parts):
                out[kind] = cache.features([p["file"] for p in parts], lambda idx, ps=parts, k=kind: self._inputs(
                    k, [ps[i] for i in idx]))
            else:
                out[kind] = self._inputs(kind, parts)
        return out

    def _inputs(self, kind: str, parts: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return self.processor.preprocess(kind, [x for p in parts for x in self.processor.load(p)])

    def _media_errors(self, items: list[dict[str, Any]], rendered: list[Rendered]) -> dict[int, str]:
        """After a batch failed to preprocess: the items that fail alone, with the reason."""
        errors = {}
        for i, r in enumerate(rendered):
            for part in r.media:
                try:
                    self._inputs(modality(part["type"]).encoder, [part])
                except MEDIA_ERRORS as err:
                    errors[i] = f"{part['type']} file {part.get('file', '<in memory>')}: {err}"
                    break
        return errors

    def _class_index(self, item: dict[str, Any]) -> int:
        try:
            return self.class_names.index(item["label"])
        except ValueError:
            path, line = item.get("source", ("<samples>", 0))
            raise ValueError(
                f"{path}:{line}: label '{item['label']}' is not one of the model's labels {self.class_names}; "
                "pass labels= to read_manifest to skip such lines"
            ) from None


def _cacheable(part: dict[str, Any]) -> bool:
    """A part that is its encoder's own kind (one item: its file, not a video's frames), so it can be cached."""
    spec = modality(part["type"])
    return isinstance(part.get("file"), str) and spec.name == spec.encoder
