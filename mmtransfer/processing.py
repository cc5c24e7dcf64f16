"""Raw inputs (prompts, targets, images, audio) -> a model batch, the same way for training and inference."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from mmtransfer.decoder import PLACEHOLDERS
from mmtransfer.encoders.base import Encoder
from mmtransfer.io import load_audio
from mmtransfer.splice import IGNORE_INDEX

DEFAULT_PROMPTS = {
    "caption": "<image>",
    "transcribe": "<audio>",
    "answer": "<image>Question: {question}\nAnswer:",
    "classify": "{text}\nLabel:",
}


def to_device(batch: dict[str, Any], device: torch.device | str) -> dict[str, Any]:
    """Move a (possibly nested) dict of tensors to ``device``."""
    return {k: to_device(v, device) if isinstance(v, dict) else v.to(device) for k, v in batch.items()}


def with_placeholder(prompts: Sequence[str], modality: str) -> list[str]:
    """Prepend the modality's placeholder to prompts that lack it (the prefix then goes first)."""
    tag = PLACEHOLDERS[modality]
    return [p if tag in p else tag + p for p in prompts]


class Processor:
    """Tokenises prompts and targets and preprocesses images / audio with each encoder's own preprocessing.

    Prompts without a modality's placeholder get it prepended, so a prefix goes first by default and
    wherever ``<image>`` / ``<audio>`` stands otherwise.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, encoders: dict[str, Encoder]) -> None:
        self.tokenizer = tokenizer
        self.encoders = encoders

    def __call__(
        self,
        prompts: Sequence[str],
        targets: Sequence[str] | None = None,
        images: Sequence[Any] | None = None,
        audio: Sequence[Any] | None = None,
        sample_rate: int | None = None,
    ) -> dict[str, Any]:
        """Returns ``input_ids``/``attention_mask`` [B, T] (left-padded), ``labels`` [B, T] when targets are
        given (IGNORE_INDEX on prompt and padding; EOS appended to each target), and ``image`` / ``audio``
        dicts of encoder input tensors."""
        given = {"image": images, "audio": audio}
        batch: dict[str, Any] = {}
        prompts = list(prompts)
        for modality, items in given.items():
            if items is None:
                continue
            if modality not in self.encoders:
                takes = sorted(self.encoders) or "text only"
                raise ValueError(f"this model has no {modality} encoder; it takes {takes}")
            if len(items) != len(prompts):
                raise ValueError(f"got {len(items)} {modality} inputs for {len(prompts)} prompts")
            batch[modality] = self.preprocess(modality, items, sample_rate)
            prompts = with_placeholder(prompts, modality)
        for modality, tag in PLACEHOLDERS.items():
            if given[modality] is None and any(tag in p for p in prompts):
                raise ValueError(f"a prompt holds {tag} but no {modality} input was given")
        batch.update(self.tokenize(prompts, targets))
        return batch

    def preprocess(self, modality: str, items: Sequence[Any], sample_rate: int | None) -> dict[str, torch.Tensor]:
        encoder = self.encoders[modality]
        if modality == "audio":
            items = [load_audio(x, encoder.sample_rate, sample_rate) for x in items]
        return encoder.preprocess(list(items))

    def tokenize(
        self, prompts: Sequence[str], targets: Sequence[str] | None = None, add_eos: bool = True
    ) -> dict[str, torch.Tensor]:
        """Prompt tokens (with the tokenizer's own special tokens, e.g. BOS) then target tokens (+ EOS)."""
        tok = self.tokenizer
        prompt_ids = tok(list(prompts), add_special_tokens=True)["input_ids"]
        if targets is None:
            seqs, n_prompt = prompt_ids, [len(p) for p in prompt_ids]
        else:
            if len(targets) != len(prompts):
                raise ValueError(f"got {len(targets)} targets for {len(prompts)} prompts")
            target_ids = tok(list(targets), add_special_tokens=False)["input_ids"]
            eos = [tok.eos_token_id] if add_eos else []
            seqs = [p + t + eos for p, t in zip(prompt_ids, target_ids)]
            n_prompt = [len(p) for p in prompt_ids]
        width = max(len(s) for s in seqs)
        if width == 0:
            raise ValueError("every prompt is empty and there is no modality input: nothing to condition on")
        input_ids = torch.full((len(seqs), width), tok.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)
        labels = torch.full((len(seqs), width), IGNORE_INDEX, dtype=torch.long)
        for i, (seq, n) in enumerate(zip(seqs, n_prompt)):
            start = width - len(seq)
            input_ids[i, start:] = torch.tensor(seq, dtype=torch.long)
            attention_mask[i, start:] = 1
            labels[i, start + n :] = input_ids[i, start + n :]
        out = {"input_ids": input_ids, "attention_mask": attention_mask}
        if targets is not None:
            out["labels"] = labels
        return out
