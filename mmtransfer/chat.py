"""Conversations (OpenAI-style messages) -> token ids, labels and media placeholders, safely.

A message is ``{"role": "system" | "user" | "assistant", "content": str | [part, ...]}``; a part is
``{"type": "text", "text": str}`` or a media part ``{"type": <modality>, <modality>: value}`` (see
``mmtransfer.modalities``). Training, evaluation and inference all render through ``render``:

1. Each user-provided text is wrapped in private-use sentinels and each media part becomes a media
   sentinel; the conversation is rendered to a string by the tokenizer's chat template
   (``apply_chat_template``) or by the plain template below.
2. The string is cut at the sentinels and at the edges of the assistant spans. Template text is tokenized
   with special tokens recognised; user text with them *not* recognised (``split_special_tokens=True``),
   so no user text can become a control token or a placeholder; each media sentinel becomes its
   placeholder id(s).
3. Labels: an assistant turn's span is what rendering the conversation through that turn adds to
   rendering it up to the turn with the generation prompt (TRL's fallback, right for any template whose
   earlier turns do not change with later ones; others are refused with a clear error).

Written by hand because transformers' ``apply_chat_template(return_assistant_tokens_mask=True)`` needs
``{% generation %}`` markers that most templates lack, and it tokenizes the whole string with special
tokens recognised, so user text could forge them.

The plain template (tokenizers without a chat template, or ``chat_template: plain``): the tokenizer's
BOS when it adds one, then each message's content in order with nothing in between, each assistant turn
followed by EOS. A task prompt such as ``"<image>Question: {question}\\nAnswer:"`` carries its own
wording, so a single-turn task renders exactly as prompt + target + EOS.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mmtransfer.errors import InputError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100  # the label of a position the loss skips (the prompt, padding, media), as PyTorch's default

Message = dict[str, Any]
OPEN, CLOSE, MEDIA = "\ue000", "\ue001", "\ue002"  # private-use code points: never meaningful in real text
SENTINELS = re.compile("[\ue000-\ue002]")
_PIECES = re.compile(f"{OPEN}(.*?){CLOSE}|{MEDIA}", re.DOTALL)
LOSS_ON = ("all", "last")
ROLES = ("system", "user", "assistant")
# For decoders without a chat template that learn multi-turn data: "User: ...", "Assistant: ... <eos>" lines.
TURNS = (
    "{% for m in messages %}{% if m.role == 'user' %}User: {{ m.content }}\n"
    "{% elif m.role == 'assistant' %}Assistant: {{ m.content }}{{ eos_token }}\n{% else %}{{ m.content }}\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)


@dataclass
class Rendered:
    """One conversation as ids [T] and labels [T] (``IGNORE_INDEX`` outside assistant targets), and its
    media parts in the order of their placeholders."""

    input_ids: list[int]
    labels: list[int]
    media: list[dict[str, Any]]


def parts(message: Message) -> list[dict[str, Any]]:
    """A message's content as a list of parts (a string is one text part)."""
    content = message["content"]
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content)


def media_parts(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Every non-text part of a conversation, in order."""
    return [p for m in messages for p in parts(m) if p["type"] != "text"]


def check_conversation(messages: Sequence[Message], generation: bool | None = False) -> None:
    """Raise ValueError naming the message when a conversation is malformed: not a non-empty list of
    ``{"role", "content"}`` objects, an unknown role or part type, a system message after the first, an
    assistant turn first, media outside user turns; with ``generation=True`` the last turn must be the user's,
    with ``False`` there must be an assistant turn (``None``: either)."""
    from mmtransfer.modalities import MODALITIES

    if not isinstance(messages, (list, tuple)) or not messages:
        raise InputError("a conversation must be a non-empty list of messages")
    for i, message in enumerate(messages, start=1):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise InputError(f"message {i}: expected an object with 'role' and 'content'")
        role = message["role"]
        if role not in ROLES:
            raise InputError(f"message {i}: unknown role {role!r}; roles are {', '.join(ROLES)}")
        if not isinstance(message["content"], (str, list)):
            raise InputError(f"message {i}: content must be a string or a list of parts")
        if role == "system" and i > 1:
            raise InputError(f"message {i}: a system message may only come first")
        for part in parts(message):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text" and kind not in MODALITIES:
                raise InputError(f"message {i}: unknown part type {kind!r}; known: text, {', '.join(MODALITIES)}")
            if kind == "text" and not isinstance(part.get("text"), str):
                raise InputError(f"message {i}: a text part needs a string 'text'")
            if kind != "text" and part.get(kind) is None and part.get("raw") is None:
                raise InputError(f"message {i}: a{'n' if kind[0] in 'aeiou' else ''} {kind} part needs its {kind} "
                                 f"under '{kind}'")
            if kind != "text" and role != "user":
                raise InputError(f"message {i}: {kind} part in the {role} turn; media go in user turns")
    turns = [m["role"] for m in messages if m["role"] != "system"]
    if turns and turns[0] == "assistant":
        raise InputError("the first turn after the system message is the assistant's; it must be the user's")
    if generation and (not turns or turns[-1] != "user"):
        raise InputError("the last message must be the user's: the model writes the assistant turn that follows")
    if generation is False and "assistant" not in turns:
        raise InputError("the conversation has no assistant turn to learn from")


def template_of(tokenizer: PreTrainedTokenizerBase, choice: str) -> str | None:
    """The Jinja chat template to render with, or None for the plain template. ``choice``: ``auto`` (the
    tokenizer's own when it has one, else plain), ``plain``, ``turns`` (``TURNS``), or a Jinja template."""
    if choice == "plain":
        return None
    if choice == "auto":
        return getattr(tokenizer, "chat_template", None) or None
    return TURNS if choice == "turns" else choice


def render(
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[Sequence[Message]],
    media_ids: Callable[[dict[str, Any]], list[int]],
    *,
    template: str | None = None,
    add_generation_prompt: bool = False,
    labels: bool = False,
    loss_on: str = "all",
    add_eos: bool = True,
) -> list[Rendered]:
    """Render conversations to ids. ``media_ids(part)`` gives a media part's placeholder ids (one per
    prefix it becomes). ``labels=True`` marks the assistant turns (all, or the last with
    ``loss_on="last"``); ``add_eos=False`` leaves EOS off assistant turns in the plain template (label
    scoring). Two batched tokenizer calls for the whole list."""
    if loss_on not in LOSS_ON:
        raise InputError(f"loss_on: '{loss_on}' is not one of {LOSS_ON}")
    plain_bos = tokenizer.bos_token if template is None and tokenizer.bos_token and _adds_bos(tokenizer) else ""

    def string(messages: Sequence[Message], generation_prompt: bool) -> str:
        return _string(tokenizer, messages, template, generation_prompt, add_eos, plain_bos)

    layouts = []
    for messages in conversations:
        text = string(messages, add_generation_prompt)
        spans = _assistant_spans(string, messages, loss_on, text) if labels else []
        layouts.append((_pieces(text, spans), messages))
    template_ids = _tokenize(tokenizer, [t for pcs, _ in layouts for k, t, _ in pcs if k == "template"], False)
    user_ids = _tokenize(tokenizer, [t for pcs, _ in layouts for k, t, _ in pcs if k == "user"], True)
    return [_assemble(pcs, messages, template_ids, user_ids, media_ids) for pcs, messages in layouts]


def _assemble(
    pieces: list[tuple[str, str, bool]], messages: Sequence[Message], template_ids: Any, user_ids: Any,
    media_ids: Callable[[dict[str, Any]], list[int]],
) -> Rendered:
    media = media_parts(messages)
    ids: list[int] = []
    labels: list[int] = []
    n_media = 0
    for kind, _, labelled in pieces:
        if kind == "media":
            if n_media == len(media):
                raise InputError("the chat template repeats a media part")
            new = media_ids(media[n_media])
            n_media += 1
        else:
            new = next(template_ids if kind == "template" else user_ids)
        ids += new
        labels += new if labelled else [IGNORE_INDEX] * len(new)
    if n_media != len(media):
        raise InputError(f"the chat template kept {n_media} of {len(media)} media parts")
    return Rendered(ids, labels, media)


def _tokenize(tokenizer: PreTrainedTokenizerBase, texts: list[str], user: bool) -> Any:
    """An iterator over the ids of each text; ``user`` texts never yield special tokens."""
    if not texts:
        return iter(())
    return iter(tokenizer(texts, add_special_tokens=False, split_special_tokens=user)["input_ids"])


def _content(message: Message) -> str:
    """A message's parts as one string: user text between OPEN/CLOSE, a MEDIA sentinel per media part."""
    return "".join(
        OPEN + SENTINELS.sub("", p["text"]) + CLOSE if p["type"] == "text" else MEDIA for p in parts(message)
    )


def _string(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], template: str | None,
    add_generation_prompt: bool, add_eos: bool, bos: str,
) -> str:
    """The conversation rendered to one string with sentinels (``bos``: the plain template's first text)."""
    if template is None:
        eos = tokenizer.eos_token if add_eos else ""
        return bos + "".join(_content(m) + (eos if m["role"] == "assistant" else "") for m in messages)
    plain = [{"role": m["role"], "content": _content(m)} for m in messages]
    return tokenizer.apply_chat_template(
        plain, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def _adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer puts BOS before a text by itself (Llama's does, GPT-2's does not)."""
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def _assistant_spans(
    string: Callable[[Sequence[Message], bool], str], messages: Sequence[Message], loss_on: str, full: str
) -> list[tuple[int, int]]:
    """Character spans of ``full`` that the assistant turns add (content and end-of-turn tokens);
    ``string(messages, add_generation_prompt)`` renders."""
    turns = [k for k, m in enumerate(messages) if m["role"] == "assistant"]
    if loss_on == "last":
        turns = turns[-1:]
    spans = []
    for k in turns:
        before = string(messages[:k], True)
        through = string(messages[: k + 1], False)
        if not (through.startswith(before) and full.startswith(through)):
            raise InputError(
                "the chat template renders a turn differently depending on what follows it, so assistant "
                "turns cannot be located; use loss_on: last or another chat_template"
            )
        spans.append((len(before), len(through)))
    return spans


def _pieces(text: str, spans: list[tuple[int, int]]) -> list[tuple[str, str, bool]]:
    """(kind, text, labelled) pieces: ``template`` text (cut at span edges), ``user`` text, ``media``."""
    cuts = sorted({c for span in spans for c in span})
    out: list[tuple[str, str, bool]] = []

    def labelled(start: int) -> bool:
        return any(a <= start < b for a, b in spans)

    def template_text(start: int, end: int) -> None:
        if SENTINELS.search(text, start, end):  # a sentinel without its partner: the template cut a content
            raise InputError("the chat template rewrites message content (e.g. cuts it at a marker), so user "
                             "text could not be kept apart from control tokens; use another chat_template")
        edges = [start, *(c for c in cuts if start < c < end), end]
        out.extend(("template", text[a:b], labelled(a)) for a, b in zip(edges, edges[1:]) if b > a)

    pos = 0
    for match in _PIECES.finditer(text):
        template_text(pos, match.start())
        if match.group(0) == MEDIA:
            out.append(("media", MEDIA, False))
        elif match.group(1):
            out.append(("user", match.group(1), labelled(match.start())))
        pos = match.end()
    template_text(pos, len(text))
    return out
