"""The task contract: a manifest sample -> prompt + target for training, predictions -> metrics for eval."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, ClassVar

from mmtransfer.errors import DataError
from mmtransfer.prompts import user_turn
from mmtransfer.registry import Registry

Sample = dict[str, Any]

TASKS: Registry[Task] = Registry("task")


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: register a ``Task`` subclass under its ``name``."""
    TASKS.register(cls.name)(cls)
    return cls


def get_task(task: str | Task) -> Task:
    """A task by name (``captioning``, ``vqa``, ``asr``, ``classification``, ``chat``); a ``Task`` is returned
    as is."""
    return task if isinstance(task, Task) else TASKS.build(task)


class Task:
    """One task. Subclasses set the class attributes and implement ``references``, ``_run`` and ``score``.

    A *sample* is a dict with the task's ``required_fields`` (``normalize`` builds it from a manifest line):
    text fields are stripped strings, ``list_fields`` are non-empty lists of them, and the ``modality``
    field holds a file path (from a manifest) or decoded media (from a ``TaskDataset``); either works
    everywhere below.
    """

    name: ClassVar[str] = ""
    modality: ClassVar[str | None] = None  # "image", "audio" or None (text only)
    api: ClassVar[str] = ""  # the model's prompt key and inference method: caption/answer/transcribe/classify
    conversational: ClassVar[bool] = False  # records are whole conversations: their own reader, no prompt template
    required_fields: ClassVar[tuple[str, ...]] = ()
    list_fields: ClassVar[tuple[str, ...]] = ()  # fields that may hold one string or a list of them
    aliases: ClassVar[dict[str, str]] = {}  # manifest key -> the field it stands for
    prompt_keys: ClassVar[tuple[str, ...]] = ()  # fields that fill the prompt template
    primary_metric: ClassVar[str] = ""
    scorers: ClassVar[tuple[str, ...]] = ()  # the optional packages ``score`` imports (checked at a run's start)
    higher_is_better: ClassVar[bool] = True
    add_eos: ClassVar[bool] = True  # append EOS to training targets (generation tasks learn to stop)

    # -- samples --------------------------------------------------------------------------------
    def normalize(self, record: Mapping[str, Any]) -> Sample:
        """A manifest line's JSON object -> a sample of the required fields. ValueError names the problem."""
        data = dict(record)
        for alias, key in self.aliases.items():
            if alias in data:
                if key in data:
                    raise ValueError(f"both '{key}' and its alias '{alias}' are given")
                data[key] = data.pop(alias)
        missing = [f for f in self.required_fields if f not in data]
        if missing:
            raise ValueError(f"missing field(s) {missing}; task '{self.name}' needs {list(self.required_fields)}")
        return {f: self._field(f, data[f]) for f in self.required_fields}

    def _field(self, key: str, value: Any) -> str | list[str]:
        if key in self.list_fields:
            values = value if isinstance(value, list) else [value]
            if not values:
                raise ValueError(f"'{key}' is an empty list")
            return [_text(key, v) for v in values]
        return _text(key, value)

    def generation_kwargs(self, max_new_tokens: int) -> dict[str, Any]:
        """What the inference API takes at evaluation besides the samples: a generation length."""
        return {"max_new_tokens": max_new_tokens}

    def class_names(self, model: Any) -> list[str] | None:
        """The classes a sample's label must be one of (None: the task has no labels)."""
        return None

    def media_kinds(self, model: Any) -> list[str]:
        """The modalities this task's samples may hold with ``model``: its own, or any the model encodes."""
        return [self.modality] if self.modality is not None else []

    def prompt_fields(self, sample: Sample) -> dict[str, str]:
        return {k: sample[k] for k in self.prompt_keys}

    def conversation(self, template: str, sample: Sample, target: str | None = None) -> list[dict[str, Any]]:
        """The sample as a single-turn conversation: the prompt ``template`` (see ``mmtransfer.prompts``) filled
        in from ``sample`` with its media part at the template's tag, then ``target`` as the assistant turn.
        The media part carries ``raw`` (decoded media, when the sample holds it) and ``file`` (its path)."""
        media = {}
        if self.modality is not None:
            media[self.modality] = [media_part(self.modality, sample)]
        return user_turn(template, self.prompt_fields(sample), media, target)

    def references(self, sample: Sample) -> list[str]:
        """What predictions are scored against."""
        raise NotImplementedError

    def target(self, sample: Sample) -> str:
        """The text that carries the LM loss, with a leading space (it follows the prompt)."""
        return " " + self.references(sample)[0]

    def targets(self, sample: Sample) -> list[str]:
        """Every training target of a sample (several for multi-reference captioning)."""
        return [self.target(sample)]

    # -- evaluation -----------------------------------------------------------------------------
    def postprocess(self, text: str) -> str:
        """Generated text -> prediction: its first line, stripped (the LM may run on past the answer)."""
        return text.strip().split("\n", 1)[0].strip()

    def _run(self, model: Any, samples: list[Sample], batch_size: int, **kwargs: Any) -> list[str]:
        """The model's inference API on a chunk of samples."""
        raise NotImplementedError

    def predict(self, model: Any, samples: list[Sample], batch_size: int = 16, **kwargs: Any) -> list[str]:
        """Postprocessed predictions for ``samples``; ``kwargs`` go to the inference API (e.g.
        ``max_new_tokens``, ``num_beams``; ``shots`` for classification)."""
        return [self.postprocess(t) for t in self._run(model, samples, batch_size, **kwargs)]

    def score(self, predictions: list[str], references: list[list[str]]) -> dict[str, float]:
        raise NotImplementedError

    def evaluate(
        self, model: Any, samples: Iterable[Any], batch_size: int = 16, **kwargs: Any
    ) -> dict[str, float]:
        """Predict on every sample (a manifest's samples or a ``TaskDataset``, whose ``Skip`` records are
        left out) ``batch_size`` at a time and score. Returns this task's metrics (``primary_metric`` among them)."""
        predictions: list[str] = []
        references: list[list[str]] = []
        for chunk in _chunks(samples, batch_size):
            predictions += self.predict(model, chunk, batch_size, **kwargs)
            references += [self.references(s) for s in chunk]
        if not predictions:
            raise DataError(f"{self.name}: no samples to evaluate (every one was skipped: see the messages above)")
        return self.score(predictions, references)


def media_part(kind: str, sample: Sample) -> dict[str, Any]:
    """A task sample's media as a part: a path, or decoded media (``raw``) with its ``file`` when known."""
    value = sample[kind]
    path = sample.get("file", value if isinstance(value, str) else None)
    part: dict[str, Any] = {"type": kind, kind: value if path is None else path}
    if path is not None:
        part["file"] = path
    if value is not None and not isinstance(value, str):
        part["raw"] = [value]
    if "sample_rate" in sample:
        part["sample_rate"] = sample["sample_rate"]
    return part


def as_list(value: str | list[str]) -> list[str]:
    """A list field's value; a plain string (a hand-written, not normalised, sample) is one item."""
    return [value] if isinstance(value, str) else list(value)


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"'{key}' must be a string, got {type(value).__name__}")  # noqa: TRY004 (bad data)
    if not value.strip():
        raise ValueError(f"'{key}' is empty")
    return value.strip()


def _chunks(samples: Iterable[Any], size: int) -> Iterator[list[Sample]]:
    """Lists of up to ``size`` samples, loaded lazily; anything that is not a mapping (a Skip) is dropped."""
    chunk: list[Sample] = []
    for sample in samples:
        if isinstance(sample, Mapping):
            chunk.append(sample)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
