"""mmtransfer as an lmms-eval model type, so a saved model is scored by lmms-eval's tasks like any other:

    lmms-eval --model mmtransfer --model_args pretrained=outputs/run/final,batch_size=8 --tasks TASK

Registered through the ``lmms_eval.models`` entry point (``pyproject.toml``); needs ``pip install lmms-eval``.
A request's visuals (PIL images, or audio as ``{"array", "sampling_rate"}`` as HF datasets decode it) become media
parts of one user turn: at the request text's ``<image>`` / ``<audio>`` markers when it has them, else before the
text (LLaVA's convention). Generation goes through ``model.chat`` (batched; ``until`` -> ``stop``), log-likelihood
through ``model.sequence_logprobs`` over the continuation as the assistant turn.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from PIL import Image

import mmtransfer
from mmtransfer.chat import Message
from mmtransfer.data.sources import AUDIO_EXTS
from mmtransfer.modalities import PLACEHOLDERS
from mmtransfer.processing import to_device

_MARKERS = re.compile("(" + "|".join(re.escape(PLACEHOLDERS[k]) for k in ("image", "audio")) + ")")


def manifest() -> Any:
    """The entry point lmms-eval reads: the model type ``mmtransfer`` is ``MMTransferLMM``. (Imported here: lmms-eval
    loads this module while its model registry is being built.)"""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="mmtransfer", simple_class_path="mmtransfer.lmms_eval.MMTransferLMM")


def media_part(visual: Any) -> dict[str, Any]:
    """One lmms-eval visual -> an mmtransfer media part."""
    if isinstance(visual, Image.Image):
        return {"type": "image", "image": visual.convert("RGB")}
    if isinstance(visual, dict) and "array" in visual:
        return {"type": "audio", "audio": visual["array"], "sample_rate": visual["sampling_rate"]}
    if isinstance(visual, str):  # a path: its extension tells
        kind = "audio" if visual.lower().rsplit(".", 1)[-1] in AUDIO_EXTS else "image"
        return {"type": kind, kind: visual}
    raise TypeError(f"lmms-eval visual of type {type(visual).__name__}: expected a PIL image, an audio dict or a path")


def user_turn(context: str, visuals: list[Any]) -> Message:
    """The request as one user turn: media at the context's markers (in order), else all before the text."""
    media = [media_part(v) for v in visuals]
    pieces = _MARKERS.split(context)
    if len(pieces) == 1 or not media:
        content = [*media, {"type": "text", "text": context}]
    else:
        content, queue = [], iter(media)
        for piece in pieces:
            if _MARKERS.fullmatch(piece):
                content.append(next(queue))
            elif piece:
                content.append({"type": "text", "text": piece})
        content += list(queue)  # visuals beyond the markers go last
    return {"role": "user", "content": content}


class MMTransferLMM(lmms):
    """``pretrained``: a directory written by ``save_pretrained`` (a run's ``final/``); ``batch_size``: requests per
    ``generate`` call; ``device``: auto, cpu, cuda, ..."""

    def __init__(self, pretrained: str, batch_size: int | str = 8, device: str = "auto", **_: Any) -> None:
        super().__init__()
        self.model = mmtransfer.load(pretrained, device=device).eval()
        self.batch_size = int(batch_size)

    def _doc(self, task: str, split: str, doc_id: int) -> dict[str, Any]:
        return self.task_dict[task][split][doc_id]

    def _visuals(self, doc_to_visual: Any, doc: dict[str, Any]) -> list[Any]:
        visuals = doc_to_visual(doc) if doc_to_visual is not None else []
        return [v for v in (visuals if isinstance(visuals, list) else [visuals]) if v is not None]

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Greedy (or as ``generation_kwargs`` say) answers, batched among requests with equal settings."""
        out: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(repr(sorted(request.args[1].items())), []).append(i)
        for indices in groups.values():
            gen = self._generation(requests[indices[0]].args[1])
            for chunk in _chunks(indices, self.batch_size):
                convs = []
                for i in chunk:
                    context, _, doc_to_visual, doc_id, task, split = requests[i].args
                    convs.append([user_turn(context, self._visuals(doc_to_visual, self._doc(task, split, doc_id)))])
                for i, text in zip(chunk, self.model.chat(convs, batch_size=len(convs), **gen)):
                    out[i] = text
        return out  # type: ignore[return-value]

    @staticmethod
    def _generation(kwargs: dict[str, Any]) -> dict[str, Any]:
        """lmms-eval's generation_kwargs -> ``model.chat``'s."""
        until = kwargs.get("until") or []
        sample = bool(kwargs.get("do_sample")) and float(kwargs.get("temperature") or 0) > 0
        gen = {"max_new_tokens": int(kwargs.get("max_new_tokens", 32)), "num_beams": int(kwargs.get("num_beams", 1)),
               "do_sample": sample, "stop": [until] if isinstance(until, str) else list(until)}
        if sample:
            gen.update(temperature=float(kwargs["temperature"]), top_p=float(kwargs.get("top_p") or 1.0))
        return gen

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """(log-probability of the continuation as the assistant's answer, whether greedy decoding gives it)."""
        results = []
        for chunk in _chunks(list(range(len(requests))), self.batch_size):
            convs = []
            for i in chunk:
                context, target, doc_to_visual, doc_id, task, split = requests[i].args
                doc = self._doc(task, split, doc_id)
                continuation = target if isinstance(target, str) else target(doc)
                convs.append([user_turn(context, self._visuals(doc_to_visual, doc)),
                              {"role": "assistant", "content": continuation}])
            batch = to_device(self.model.processor(convs, labels=True, add_eos=False), self.model.device)
            logprobs, greedy = self.model.sequence_logprobs(batch, greedy=True)
            results += [(float(lp), bool(g)) for lp, g in zip(logprobs.tolist(), greedy.tolist())]
        return results

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError("mmtransfer's lmms-eval model answers single-round requests")


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
