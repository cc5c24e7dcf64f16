"""The inference API on every model: ``chat`` and its thin task uses ``caption``, ``transcribe``, ``answer``,
``classify``.

Each takes one item or a list and returns one result or a list to match. Generation is transformers'
``generate`` over the spliced ``inputs_embeds`` with a KV cache: left padding, and position ids from
the attention mask, so a batch gives the same greedy tokens as one input at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers.generation.streamers import BaseStreamer

from mmtransfer.chat import IGNORE_INDEX, Message, check_conversation
from mmtransfer.errors import InputError
from mmtransfer.modalities import media_inputs
from mmtransfer.processing import to_device
from mmtransfer.prompts import DEFAULT_PROMPTS, user_turn


def _as_list(x: Any) -> tuple[list[Any], bool]:
    """(items, was_single): strings, paths, images and 1-D arrays count as one item."""
    if isinstance(x, (list, tuple)):
        return list(x), False
    return [x], True


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to the first occurrence of any of ``stop`` (all of it when none occurs)."""
    return text[: min((i for s in stop if (i := text.find(s)) >= 0), default=len(text))]


class InferenceMixin:
    """Methods shared by models that have ``processor``, ``decoder``, ``tokenizer``, ``config``."""

    def prompt_template(self, task: str) -> str:
        return self.config.prompts.get(task, DEFAULT_PROMPTS[task])

    @torch.inference_mode()
    def chat(
        self,
        conversations: Sequence[Message] | Sequence[Sequence[Message]],
        *,
        sample_rate: int | None = None,
        max_new_tokens: int = 32,
        num_beams: int = 1,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
        batch_size: int = 16,
        stop: Sequence[str] = (),
        streamer: BaseStreamer | None = None,
    ) -> str | list[str]:
        """The next assistant turn of one conversation (a list of messages) or of each of a list of them,
        batched. A media part holds a path, a PIL image, or an array / tensor (audio, at the part's
        ``sample_rate`` or ``sample_rate`` here). ``stop``: strings that end a row's generation; the answer ends
        before the first one (as OpenAI's ``stop``). ``streamer``: a transformers streamer handed to each
        ``generate`` call (one per ``batch_size`` conversations; it gets their new tokens [b] each step; one with a
        ``prompt(lengths)`` method is first told each row's prompt length in positions, media included).
        ``repetition_penalty`` and ``no_repeat_ngram_size`` are ``generate``'s, applied to the new tokens (the prompt
        is embeddings, not ids): they stop a small model looping on a word."""
        single = bool(conversations) and isinstance(conversations[0], dict)
        convs = [list(conversations)] if single else [list(c) for c in conversations]
        for conv in convs:
            check_conversation(conv, generation=True)
        results: list[str] = []
        for i in range(0, len(convs), batch_size):
            batch = self.processor(convs[i : i + batch_size], add_generation_prompt=True, sample_rate=sample_rate)
            results += self._generate_batch(
                to_device(batch, self.device), max_new_tokens=max_new_tokens, num_beams=num_beams,
                do_sample=do_sample, temperature=temperature, top_p=top_p, repetition_penalty=repetition_penalty,
                no_repeat_ngram_size=no_repeat_ngram_size, streamer=streamer, stop=tuple(stop),
            )
        return results[0] if single else results

    def _generate_batch(self, batch: dict[str, Any], stop: tuple[str, ...] = (), **gen_kwargs: Any) -> list[str]:
        embeds, mask, positions, _ = self.embed(batch["input_ids"], batch["attention_mask"], **media_inputs(batch))
        self.check_context(int(mask.sum(1).max()), gen_kwargs["max_new_tokens"])
        if not gen_kwargs["do_sample"]:
            gen_kwargs.pop("temperature")
            gen_kwargs.pop("top_p")
        tok = self.tokenizer
        if stop:  # transformers ends each row at its first stop string; the text is cut before it below
            gen_kwargs.update(stop_strings=list(stop), tokenizer=tok)
        if hasattr(gen_kwargs.get("streamer"), "prompt"):
            gen_kwargs["streamer"].prompt(mask.sum(1).tolist())
        out = self.decoder.generate(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
            pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, **gen_kwargs,
        )  # [B, new] (only new tokens when generating from inputs_embeds)
        return [cut_at_stop(t, stop).strip() for t in tok.batch_decode(out, skip_special_tokens=True)]

    def _task_chat(self, task: str, fields: list[dict[str, str]], media: dict[str, list[Any]] | None,
                   **kwargs: Any) -> list[str]:
        """``chat`` over single-turn conversations from the model's prompt template for ``task``."""
        template = self.prompt_template(task)
        convs = [
            user_turn(template, f, {k: [{"type": k, k: v[i]}] for k, v in (media or {}).items()})
            for i, f in enumerate(fields)
        ]
        return self.chat(convs, **kwargs) if convs else []

    def caption(self, images: Any, **gen_kwargs: Any) -> str | list[str]:
        """Caption one image (path, PIL image) or a list of them."""
        items, single = _as_list(images)
        out = self._task_chat("caption", [{}] * len(items), {"image": items}, **gen_kwargs)
        return out[0] if single else out

    def transcribe(self, audio: Any, sample_rate: int | None = None, **gen_kwargs: Any) -> str | list[str]:
        """Transcribe one clip (path, or array/tensor at ``sample_rate``) or a list of them."""
        items, single = _as_list(audio)
        out = self._task_chat("transcribe", [{}] * len(items), {"audio": items}, sample_rate=sample_rate,
                              **gen_kwargs)
        return out[0] if single else out

    def answer(self, images: Any, questions: str | Sequence[str], **gen_kwargs: Any) -> str | list[str]:
        """Answer a question about an image, or one question per image for lists."""
        items, single = _as_list(images)
        qs, _ = _as_list(questions)
        if len(qs) != len(items):
            raise InputError(f"got {len(qs)} questions for {len(items)} images")
        out = self._task_chat("answer", [{"question": q} for q in qs], {"image": items}, **gen_kwargs)
        return out[0] if single else out

    def _label_scores(self, prompts: list[str], targets: list[str]) -> torch.Tensor:
        """log p(target | prompt) for every prompt and target, as the assistant's turn: [B, C]. Each prompt runs
        through the decoder once (its KV cache is then shared by the C targets) and the LM head runs only at
        target positions, instead of once per (prompt, target) pair over every position."""
        proc, n = self.processor, len(targets)
        prompt_rows = proc.render([[{"role": "user", "content": p}] for p in prompts], add_generation_prompt=True)
        pairs = proc.render([[{"role": "user", "content": p}, {"role": "assistant", "content": t}]
                             for p in prompts for t in targets], labels=True, add_eos=False)
        conts = [r.input_ids[len(prompt_rows[i // n].input_ids):] for i, r in enumerate(pairs)]
        if any(c != [t for t in r.labels if t != IGNORE_INDEX] or not c for c, r in zip(conts, pairs)):
            raise InputError("the chat template renders the answer turn apart from its prompt; label scoring "
                             "needs an answer that extends the prompt (use chat_template: plain)")
        batch = to_device(proc.pad(prompt_rows), self.device)
        embeds, mask, positions, _ = self.embed(batch["input_ids"], batch["attention_mask"])
        out = self.decoder(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True,
                           logits_to_keep=1)
        first = torch.log_softmax(out.logits[:, -1].float(), -1)  # [B, V]
        scores = first.repeat_interleave(n, 0).gather(1, torch.tensor([[c[0]] for c in conts], device=mask.device))
        width = max(len(c) for c in conts) - 1
        if width:  # targets of several tokens: feed all but the last after the shared prompt
            rest = torch.full((len(conts), width), self.tokenizer.pad_token_id, device=mask.device)
            rest_mask = torch.zeros_like(rest)
            for i, c in enumerate(conts):
                rest[i, : len(c) - 1], rest_mask[i, : len(c) - 1] = torch.tensor(c[:-1]), 1
            out.cache.batch_repeat_interleave(n)  # the prompts' cache, once per target
            full_mask = torch.cat([mask.repeat_interleave(n, 0), rest_mask], 1)
            start = mask.sum(1, keepdim=True).repeat_interleave(n, 0)  # [B*C, 1] next position of each row
            logits = self.decoder(input_ids=rest, attention_mask=full_mask, cache=out.cache,
                                  position_ids=start + torch.arange(width, device=mask.device)).logits
            wanted = torch.full_like(rest, IGNORE_INDEX)
            for i, c in enumerate(conts):
                wanted[i, : len(c) - 1] = torch.tensor(c[1:])
            logp = torch.log_softmax(logits.float(), -1).gather(-1, wanted.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            scores = scores + (logp * (wanted != IGNORE_INDEX)).sum(1, keepdim=True)
        return scores.view(len(prompts), n)

    @torch.inference_mode()
    def classify(
        self, texts: str | Sequence[str], shots: Sequence[tuple[str, str]] = (), batch_size: int = 16
    ) -> str | list[str]:
        """Label one text or a list. With a classification head: its argmax. Otherwise zero-shot / few-shot
        scoring: each label's tokens are scored by the LM as the assistant's answer to the prompt (preceded by
        ``shots``, (text, label) examples), and the most likely label wins."""
        items, single = _as_list(texts)
        labels = self.config.labels
        if not labels:
            raise InputError("classify() needs config.labels, the class names")
        template = self.prompt_template("classify")
        context = "".join(f"{template.format(text=t)} {y}\n\n" for t, y in shots)
        prompts = [context + template.format(text=t) for t in items]
        order = sorted(range(len(prompts)), key=lambda k: len(prompts[k]))  # similar lengths batch together
        preds: dict[int, str] = {}
        for i in range(0, len(order), batch_size):
            rows = order[i : i + batch_size]
            chunk = [prompts[k] for k in rows]
            if self.head is not None:
                batch = to_device(self.processor.tokenize(chunk, add_generation_prompt=True), self.device)
                scores = self(batch["input_ids"], batch["attention_mask"]).logits  # [b, C]
            else:
                scores = self._label_scores(chunk, [f" {y}" for y in labels])  # [b, C]
            preds.update((k, labels[j]) for k, j in zip(rows, scores.argmax(-1).tolist()))
        out = [preds[k] for k in range(len(prompts))]
        return out[0] if single else out
