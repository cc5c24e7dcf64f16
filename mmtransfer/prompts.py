"""Task prompt templates -> the parts of a user turn.

A template (``config.prompts[task]`` or ``DEFAULT_PROMPTS``) is written by the recipe's author: ``{field}``
slots are filled from the sample, and ``<image>`` / ``<audio>`` tags mark where the sample's media go
(first, when the template has no tag). The filled-in text is user text, tokenized with special tokens not
recognised: a caption, question or text to classify that holds ``<image>`` or ``<|endoftext|>`` stays plain
text, and so would a special token written in the template itself (control tokens come from the chat
template only).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from mmtransfer.errors import InputError
from mmtransfer.modalities import PLACEHOLDERS

DEFAULT_PROMPTS = {
    "caption": "<image>",
    "transcribe": "<audio>",
    "answer": "<image>Question: {question}\nAnswer:",
    "classify": "{text}\nLabel:",
}
_TAGS = re.compile("(" + "|".join(re.escape(t) for t in PLACEHOLDERS.values()) + ")")
_KIND_OF_TAG = {tag: kind for kind, tag in PLACEHOLDERS.items()}


def prompt_parts(
    template: str, fields: Mapping[str, str], media: Mapping[str, Sequence[dict[str, Any]]] | None = None
) -> list[dict[str, Any]]:
    """The user turn's parts. ``media``: encoder kind (``image`` / ``audio``) -> media parts, placed at the
    template's tags in order (the ones without a tag go first). Raises ValueError when a tag has no
    media part to stand for."""
    queues = {kind: list(items) for kind, items in (media or {}).items()}
    tagged = {_KIND_OF_TAG[t] for t in _TAGS.findall(template)}
    out: list[dict[str, Any]] = [p for kind in queues if kind not in tagged for p in queues[kind]]
    for i, piece in enumerate(_TAGS.split(template)):
        if i % 2:  # a tag
            kind = _KIND_OF_TAG[piece]
            if not queues.get(kind):
                raise InputError(f"the prompt template holds {piece} but no {kind} input was given")
            out.append(queues[kind].pop(0))
        elif piece:
            text = piece.format(**fields) if fields else piece
            if text:
                out.append({"type": "text", "text": text})
    return out


def user_turn(template: str, fields: Mapping[str, str], media: Mapping[str, Sequence[dict[str, Any]]] | None = None,
              target: str | None = None) -> list[dict[str, Any]]:
    """A single-turn conversation: the filled-in template as the user turn, then ``target`` (if any) as the
    assistant turn."""
    messages = [{"role": "user", "content": prompt_parts(template, fields, media)}]
    if target is not None:
        messages.append({"role": "assistant", "content": target})
    return messages
