"""Conversations -> a model batch, the same way for training, evaluation and inference."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from mmtransfer.chat import IGNORE_INDEX, Message, Rendered, render
from mmtransfer.encoders.base import Encoder
from mmtransfer.errors import InputError
from mmtransfer.io import load_audio
from mmtransfer.modalities import MODALITIES, by_encoder, modality
from mmtransfer.model.decoder import placeholder_ids
from mmtransfer.prompts import user_turn


def to_device(batch: dict[str, Any], device: torch.device | str) -> dict[str, Any]:
    """Move a (possibly nested) dict of tensors to ``device``."""
    return {k: to_device(v, device) if isinstance(v, dict) else v.to(device) for k, v in batch.items()}


class Processor:
    """Renders conversations with the decoder's chat template (``template``: a Jinja string, or None for
    the plain template, see ``mmtransfer.chat``) and preprocesses their media with each encoder's own
    preprocessing. A video part becomes ``video_frames`` image prefixes."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, encoders: dict[str, Encoder], template: str | None = None,
        video_frames: int = 8,
    ) -> None:
        self.tokenizer = tokenizer
        self.encoders = encoders
        self.template = template
        self.video_frames = video_frames
        self.placeholder_ids = placeholder_ids(tokenizer)

    def __call__(
        self,
        conversations: Sequence[Sequence[Message]],
        *,
        add_generation_prompt: bool = False,
        labels: bool = False,
        loss_on: str = "all",
        add_eos: bool = True,
        sample_rate: int | None = None,
    ) -> dict[str, Any]:
        """Returns ``input_ids`` / ``attention_mask`` [B, T] (left-padded), ``labels`` [B, T] with
        ``labels=True`` (IGNORE_INDEX outside assistant turns), and per encoder kind with media in the batch
        (``image``, ``audio``) its preprocessed inputs for every media item, in the order of their
        placeholders (row 0's first). ``sample_rate``: of audio parts given as arrays without their own."""
        rendered = self.render(conversations, add_generation_prompt=add_generation_prompt, labels=labels,
                               loss_on=loss_on, add_eos=add_eos)
        batch = self.pad(rendered, labels)
        raw = self.raw_media([r.media for r in rendered], sample_rate)
        batch.update({kind: self.preprocess(kind, items) for kind, items in raw.items()})
        return batch

    def from_prompts(
        self,
        prompts: Sequence[str],
        targets: Sequence[str] | None = None,
        *,
        sample_rate: int | None = None,
        add_eos: bool = True,
        **media: Sequence[Any] | None,
    ) -> dict[str, Any]:
        """Single-turn batch from prompt templates and optional target texts; ``media`` holds one item per prompt for
        each modality named in ``mmtransfer.modalities`` (``image=[...]``, ``audio=[...]``). An ``<image>`` /
        ``<audio>`` tag places the item of the encoder kind it names (see ``mmtransfer.prompts``); an untagged item
        goes first."""
        unknown = [kind for kind in media if kind not in MODALITIES]
        if unknown:
            raise InputError(f"from_prompts: no modality '{unknown[0]}'; known: {', '.join(MODALITIES)}")
        given = {kind: items for kind, items in media.items() if items is not None}
        for kind, items in given.items():
            if len(items) != len(prompts):
                raise InputError(f"got {len(items)} {kind} inputs for {len(prompts)} prompts")
        if targets is not None and len(targets) != len(prompts):
            raise InputError(f"got {len(targets)} targets for {len(prompts)} prompts")
        conversations = [
            user_turn(p, {}, {k: [{"type": k, k: v[i]}] for k, v in given.items()},
                      None if targets is None else targets[i])
            for i, p in enumerate(prompts)
        ]
        return self(conversations, labels=targets is not None, add_eos=add_eos, sample_rate=sample_rate)

    def tokenize(self, texts: Sequence[str], targets: Sequence[str] | None = None, add_eos: bool = True,
                 add_generation_prompt: bool = False) -> dict[str, torch.Tensor]:
        """Text-only batch: each text as a user turn (plain text, whatever it holds), then its target."""
        if targets is not None and len(targets) != len(texts):
            raise InputError(f"got {len(targets)} targets for {len(texts)} texts")
        conversations = [
            [{"role": "user", "content": t}]
            + ([] if targets is None else [{"role": "assistant", "content": targets[i]}])
            for i, t in enumerate(texts)
        ]
        rendered = self.render(conversations, labels=targets is not None, add_eos=add_eos,
                               add_generation_prompt=add_generation_prompt)
        return self.pad(rendered, targets is not None)

    def render(self, conversations: Sequence[Sequence[Message]], **kwargs: Any) -> list[Rendered]:
        """``mmtransfer.chat.render`` with this model's template and placeholders."""
        return render(self.tokenizer, conversations, self.media_ids, template=self.template, **kwargs)

    def media_ids(self, part: dict[str, Any]) -> list[int]:
        """The placeholder ids a media part becomes."""
        spec = modality(part["type"])
        if spec.encoder not in self.encoders:
            takes = sorted(self.encoders) or "text only"
            article = "an" if part["type"][0] in "aeiou" else "a"
            raise InputError(f"this model has no {spec.encoder} encoder for {article} {part['type']} part; "
                             f"it takes {takes}")
        return [self.placeholder_ids[spec.encoder]] * spec.count(self.video_frames)

    def load(self, part: dict[str, Any], sample_rate: int | None = None) -> list[Any]:
        """A media part's raw encoder items (decoded now, unless the part already holds them as ``raw``; raw
        audio at another ``sample_rate`` than the encoder's is resampled)."""
        spec = modality(part["type"])
        rate = getattr(self.encoders.get(spec.encoder), "sample_rate", None)
        if part.get("raw") is not None:
            if spec.timed and part.get("sample_rate", rate) != rate:  # decoded at another rate
                return [load_audio(x, rate, part["sample_rate"]) for x in part["raw"]]
            return part["raw"]
        if spec.timed and "sample_rate" not in part and sample_rate is not None:
            part = {**part, "sample_rate": sample_rate}
        return spec.load(part, rate, self.video_frames)

    def raw_media(self, media: Sequence[Sequence[dict[str, Any]]], sample_rate: int | None = None) -> dict[str, list]:
        """Each row's media parts -> encoder kind -> raw items in placeholder order."""
        grouped = by_encoder(part for parts in media for part in parts)
        return {kind: [x for part in parts for x in self.load(part, sample_rate)] for kind, parts in grouped.items()}

    def preprocess(self, kind: str, items: Sequence[Any]) -> dict[str, torch.Tensor]:
        """Raw items -> the ``kind`` encoder's input tensors [K, ...]."""
        return self.encoders[kind].preprocess(list(items))

    def pad(self, rendered: Sequence[Rendered], labels: bool = False) -> dict[str, torch.Tensor]:
        """Left-pad rendered rows: ``input_ids``, ``attention_mask`` (and ``labels``) [B, T]."""
        width = max((len(r.input_ids) for r in rendered), default=0)
        if width == 0:
            raise InputError("every input is empty: nothing to condition on")
        pad_id = self.tokenizer.pad_token_id
        input_ids = torch.full((len(rendered), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rendered), width), dtype=torch.long)
        label_ids = torch.full((len(rendered), width), IGNORE_INDEX, dtype=torch.long)
        for i, r in enumerate(rendered):
            start = width - len(r.input_ids)
            input_ids[i, start:] = torch.tensor(r.input_ids, dtype=torch.long)
            attention_mask[i, start:] = 1
            label_ids[i, start:] = torch.tensor(r.labels, dtype=torch.long)
        out = {"input_ids": input_ids, "attention_mask": attention_mask}
        if labels:
            out["labels"] = label_ids
        return out
