"""Dynamic batching: requests that arrive together share one ``model.chat`` call.

One worker task reads an asyncio queue. It takes the first waiting request and waits for more while they
keep coming (each within ``wait_s`` of the last; whatever is already queued at once), up to ``max_batch``,
splits what it has into groups with equal generation settings (``GenSettings``) and runs each group as ONE
``model.chat([...])`` in a single-thread executor, so the event loop keeps accepting requests meanwhile;
those form the next batch. The model only ever runs on that one thread.

Streaming is true token streaming, batched like the rest: a ``BatchStreamer`` attached to ``generate``
receives each step's new tokens [b] and sends each streaming row its new text as it appears. Every
request gets its final text from ``model.chat``'s return value, so a stream and a plain request give the
same answer.

A request that cannot run fails alone: its media were decoded and checked against the model's encoders
before it was queued, and a group whose ``model.chat`` raises a user error (e.g. one row too long for the
context) is rerun one request at a time, so only the culprit gets the error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase
from transformers.generation.streamers import BaseStreamer

from mmtransfer.chat import Message
from mmtransfer.errors import MMTransferError
from mmtransfer.inference import cut_at_stop
from mmtransfer.serve.protocol import GenSettings

log = logging.getLogger("mmtransfer.serve")
# Events on a job's queue: ("start",) generation began; ("delta", text) new text (streaming jobs only);
# ("done", text, finish_reason, usage); ("error", exception). usage: OpenAI's prompt / completion / total tokens.
Event = tuple[Any, ...]


@dataclass
class Job:
    """One request waiting for its answer; ``events`` is read by the request's handler."""

    conversation: list[Message]
    settings: GenSettings
    stream: bool = False
    events: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)


@dataclass
class Stats:
    """Counters shown by ``GET /health``."""

    requests: int = 0
    generate_calls: int = 0
    largest_batch: int = 0


class BatchStreamer(BaseStreamer):
    """Routes each ``generate`` step's new tokens [b] to the jobs of its rows: counts them, notes where a row
    stops (its EOS, or its first stop string), and sends streaming jobs the text that decoding their tokens so far
    adds, holding back a tail that may still become a stop string."""

    def __init__(self, jobs: list[Job], tokenizer: PreTrainedTokenizerBase, emit: Callable[[Job, Event], None]):
        self.jobs, self.tokenizer, self.emit = jobs, tokenizer, emit
        self.stop = jobs[0].settings.stop
        self.ids: list[list[int]] = [[] for _ in jobs]
        self.prompts = [0] * len(jobs)
        self.stopped = [False] * len(jobs)
        self.eos = [False] * len(jobs)
        self.sent = [""] * len(jobs)
        self.offset = self.rows = 0  # model.chat calls generate once per sub-batch of rows

    def prompt(self, lengths: list[int]) -> None:
        """Each row's prompt length in positions (text and media tokens), before its ``generate`` call."""
        self.prompts[self.offset : self.offset + len(lengths)] = lengths

    def put(self, value: torch.Tensor) -> None:
        """The prompt ([b, 0]: generation starts), then each step's new tokens [b]."""
        if value.dim() == 2:
            self.rows = value.shape[0]
            for job in self.jobs[self.offset : self.offset + self.rows]:
                self.emit(job, ("start",))
            return
        for row, token in enumerate(value.tolist(), start=self.offset):
            if self.stopped[row]:
                continue
            if token == self.tokenizer.eos_token_id:
                self.stopped[row] = self.eos[row] = True
                continue
            self.ids[row].append(token)
            if self.stop or self.jobs[row].stream:
                self._send(row)

    def end(self) -> None:
        self.offset += self.rows

    def _send(self, row: int) -> None:
        """Note a stop string, and send a streaming row its new stable text: cut and stripped like ``chat``'s
        answer, held back while it ends in an incomplete UTF-8 character or in the start of a stop string."""
        raw = self.tokenizer.decode(self.ids[row], skip_special_tokens=True)
        cut = cut_at_stop(raw, self.stop)
        if len(cut) < len(raw):
            self.stopped[row] = True
        else:  # hold back the longest tail that a stop string starts with
            held = max((k for s in self.stop for k in range(1, len(s)) if cut.endswith(s[:k])), default=0)
            cut = cut[: len(cut) - held]
        if not self.jobs[row].stream:
            return
        text = cut.strip()
        if text.endswith("\ufffd") or not text.startswith(self.sent[row]) or text == self.sent[row]:
            return
        self.emit(self.jobs[row], ("delta", text[len(self.sent[row]) :]))
        self.sent[row] = text

    def finish_reason(self, row: int) -> str:
        return "stop" if self.stopped[row] else "length"

    def usage(self, row: int) -> dict[str, int]:
        """OpenAI's token counts: the prompt's positions, and the tokens generated (its EOS included)."""
        done = len(self.ids[row]) + self.eos[row]
        return {"prompt_tokens": self.prompts[row], "completion_tokens": done,
                "total_tokens": self.prompts[row] + done}


class Batcher:
    """The queue, its worker task (``run``) and the one thread the model runs on."""

    def __init__(self, model: Any, max_batch: int = 16, wait_s: float = 0.005) -> None:
        self.model, self.max_batch, self.wait_s = model, max_batch, wait_s
        self.queue: asyncio.Queue[Job] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmtransfer-generate")
        self.stats = Stats()

    async def run(self) -> None:
        """The worker: forever collect a batch and run its groups, one ``model.chat`` call each."""
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            groups: dict[GenSettings, list[Job]] = {}
            for job in batch:
                groups.setdefault(job.settings, []).append(job)
            for group in groups.values():
                try:
                    await loop.run_in_executor(self.executor, self._run_group, group, loop)
                except Exception as err:  # a bug outside generation: fail the group, keep the worker alive
                    log.exception("a batch failed")
                    for job in group:
                        job.events.put_nowait(("error", err))

    async def _collect(self) -> list[Job]:
        """The first waiting job and those that follow it with gaps under ``wait_s``, at most ``max_batch``
        (a burst of clients resending at once joins one batch even when it takes longer than ``wait_s``)."""
        batch = [await self.queue.get()]
        while len(batch) < self.max_batch:
            if not self.queue.empty():
                batch.append(self.queue.get_nowait())
                continue
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), self.wait_s))
            except asyncio.TimeoutError:
                break
        return batch

    def _run_group(self, jobs: list[Job], loop: asyncio.AbstractEventLoop) -> None:
        """On the model thread: generate for ``jobs``, sending their events to the event loop."""

        def emit(job: Job, event: Event) -> None:
            loop.call_soon_threadsafe(job.events.put_nowait, event)

        self._generate(jobs, emit)

    def _generate(self, jobs: list[Job], emit: Callable[[Job, Event], None]) -> None:
        """One ``model.chat`` call for ``jobs``; on a user error, one call per job, so only its culprit fails."""
        settings = jobs[0].settings
        streamer = BatchStreamer(jobs, self.model.tokenizer, emit)
        self.stats.generate_calls += 1
        self.stats.largest_batch = max(self.stats.largest_batch, len(jobs))
        try:
            texts = self.model.chat(
                [job.conversation for job in jobs], max_new_tokens=settings.max_new_tokens,
                do_sample=settings.do_sample, temperature=settings.temperature, top_p=settings.top_p,
                batch_size=len(jobs), stop=settings.stop, streamer=streamer,
            )
        except MMTransferError as err:
            if len(jobs) == 1:
                self._finish(jobs[0], ("error", err), emit)
                return
            for job in jobs:
                self._generate([job], emit)
            return
        except Exception as err:  # a bug: fail this group, keep serving
            log.exception("generation failed")
            for job in jobs:
                self._finish(job, ("error", err), emit)
            return
        for row, (job, text) in enumerate(zip(jobs, texts)):
            self._finish(job, ("done", text, streamer.finish_reason(row), streamer.usage(row)), emit)

    def _finish(self, job: Job, event: Event, emit: Callable[[Job, Event], None]) -> None:
        self.stats.requests += 1
        emit(job, event)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
