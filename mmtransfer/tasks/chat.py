"""Conversations: train on the assistant turns; evaluate by generating the last assistant turn."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from mmtransfer.chat import check_conversation, parts
from mmtransfer.metrics import accuracy, bleu4, normalize_answer
from mmtransfer.tasks.base import Sample, Task, register_task

log = logging.getLogger(__name__)


@register_task
class Chat(Task):
    """Sample: ``{"messages": [...]}`` (OpenAI-style, see ``mmtransfer.chat``; the manifest readers of
    ``mmtransfer.data.conversations`` also take LLaVA and ShareGPT files). Training takes the loss on the
    assistant turns. Evaluation gives the model every turn before the last assistant turn and scores its
    reply against that turn: ``exact_match`` (after VQA answer normalisation) and ``bleu4``."""

    name = "chat"
    api = "chat"
    conversational = True
    required_fields = ("messages",)
    primary_metric = "exact_match"
    scorers = ("pycocoevalcap", "sklearn")  # the packages its metrics import

    def media_kinds(self, model: Any) -> list[str]:
        return list(model.encoders)  # a conversation may hold any medium the model encodes

    def normalize(self, record: Mapping[str, Any]) -> Sample:
        if "messages" not in record:
            raise ValueError("missing field 'messages'")
        check_conversation(record["messages"])
        return {"messages": record["messages"]}

    def references(self, sample: Sample) -> list[str]:
        return [_text(_last_assistant(sample["messages"])[1])]

    def target(self, sample: Sample) -> str:
        return self.references(sample)[0]

    def _run(self, model: Any, samples: list[Sample], batch_size: int, **kwargs: Any) -> list[str]:
        """The model's replies; a conversation it cannot take (e.g. longer than the decoder's context) is
        logged with its file:line and scored as an empty reply, instead of ending the evaluation."""
        prompts = [s["messages"][: _last_assistant(s["messages"])[0]] for s in samples]
        try:
            return model.chat(prompts, batch_size=batch_size, **kwargs)
        except ValueError:
            replies = []
            for sample, prompt in zip(samples, prompts):
                try:
                    replies.append(model.chat(prompt, **kwargs))
                except ValueError as err:
                    path, line = sample.get("source", ("<samples>", 0))
                    log.warning("%s:%s: scored as an empty reply: %s", path, line, err)
                    replies.append("")
            return replies

    def score(self, predictions: list[str], references: list[list[str]]) -> dict[str, float]:
        refs = [normalize_answer(r[0]) for r in references]
        return {"exact_match": accuracy([normalize_answer(p) for p in predictions], refs),
                "bleu4": bleu4(predictions, references)}


def _last_assistant(messages: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
    """(index, message) of the last assistant turn."""
    index = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return index, messages[index]


def _text(message: dict[str, Any]) -> str:
    return "".join(p["text"] for p in parts(message) if p["type"] == "text").strip()
