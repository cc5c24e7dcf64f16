"""Model cards: the README.md that ``save_pretrained`` writes beside the weights.

YAML front matter for the hub (``library_name: mmtransfer``, tags, ``base_model``: the decoder when it names a hub
repository, ``pipeline_tag``), then what the model is made of (each part, its size and what trained), what it
trained on and how well it did (when a training run saved it), and how to load and run it.

What a run trained on travels in ``training.json`` (a ``TrainingRecord``), so a model loaded from a run's folder
and saved or pushed again still names its data. Absolute paths are cut to their last two parts: a card may be
published, and the folders of the machine that trained it are nobody's business.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huggingface_hub import ModelCard, ModelCardData

from mmtransfer import media_gain
from mmtransfer.trainable import count_parameters

if TYPE_CHECKING:
    from mmtransfer.model.core import MultimodalGPT

LIBRARY = "mmtransfer"
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@dataclass
class TrainingRecord:
    """What a training run used: ``recipe`` (its file name), ``datasets`` (per data entry: task, name, train and
    eval files), ``metrics`` (the last evaluation, ``{"<name>/<metric>": value}``) and ``steps`` trained."""

    recipe: str | None = None
    datasets: list[dict[str, str | None]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    steps: int | None = None


def training_record(cfg: Any, metrics: dict[str, float], steps: int) -> TrainingRecord:
    """The record of a run of ``cfg`` (a ``TrainConfig``) that reached ``metrics`` after ``steps`` steps."""
    datasets = [{"task": d.task, "name": d.name or d.task, "train": _shown(d.train), "eval": _shown(d.eval)}
                for d in cfg.data]
    return TrainingRecord(Path(cfg.source).name, datasets, dict(metrics), steps)


def _shown(path: str | None) -> str | None:
    """A path as a card shows it: relative ones as given, absolute ones as their last two parts."""
    if path is None or not Path(path).is_absolute():
        return path
    return "…/" + "/".join(Path(path).parts[-2:])


def model_card(model: MultimodalGPT, training: TrainingRecord | None = None, *, trainable_only: bool = False,
               repo_id: str | None = None) -> ModelCard:
    """The card of ``model``; ``trainable_only``: the folder holds the trained tensors only; ``repo_id``: the hub
    repository it is published as (named in the loading example)."""
    data = ModelCardData(library_name=LIBRARY, tags=_tags(model, training), base_model=base_model(model),
                         pipeline_tag=pipeline_tag(model))
    sections = [_title(model, repo_id), _components(model), _training(training), _usage(model, repo_id, trainable_only)]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n")


def base_model(model: MultimodalGPT) -> str | None:
    """The decoder's hub repository (``owner/name``, not a local folder), or None."""
    name = model.config.decoder.model
    return name if HUB_ID.fullmatch(name) and not Path(name).exists() else None


def pipeline_tag(model: MultimodalGPT) -> str:
    """The hub task: from the encoders (image, audio, both) or, text only, the classifier."""
    kinds = set(model.encoders)
    if kinds == {"image", "audio"}:
        return "any-to-any"
    if kinds:
        return f"{kinds.pop()}-text-to-text"
    return "text-classification" if model.head is not None else "text-generation"


def _tags(model: MultimodalGPT, training: TrainingRecord | None) -> list[str]:
    tags = [LIBRARY, "multimodal", *sorted(model.encoders)]
    if model.config.trainable.decoder == "lora":
        tags.append("lora")
    tasks = sorted({d["task"] for d in training.datasets if d.get("task")}) if training else []
    return tags + [t for t in tasks if t not in tags]


def _title(model: MultimodalGPT, repo_id: str | None) -> str:
    inputs = " + ".join([*sorted(model.encoders), "text"])
    return (f"# {repo_id or 'mmtransfer model'}\n\nA multimodal model built with mmtransfer: {inputs} -> text, "
            f"through the causal LM `{_shown(model.config.decoder.model)}`; each encoder's features pass a projector "
            "into the decoder's input embeddings.")


def _components(model: MultimodalGPT) -> str:
    """The parts table: what each is, its size and its trainable policy."""
    policy = model.config.trainable
    rows = []
    for kind, encoder in model.encoders.items():
        cfg = model.config.encoder(kind) or {}
        name, source = cfg.get("name", type(encoder).__name__), _shown(cfg.get("model_name") or cfg.get("model"))
        rows.append((f"{kind} encoder", f"{name} `{source}`" if source else name, _size(encoder),
                     policy.encoder(kind)))
        proj = model.config.projector(kind)
        rows.append((f"{kind} projector", proj["name"], _size(model.projectors[kind]), policy.projectors))
    decoder = f"`{_shown(model.config.decoder.model)}` ({model.decoder.config.model_type})"
    lora = policy.lora
    trains = f"lora (r={lora.r}, alpha={lora.alpha})" if policy.decoder == "lora" else policy.decoder
    rows.append(("decoder", decoder, _size(model.decoder), trains))
    if model.head is not None:
        rows.append(("classification head", f"{len(model.config.labels or [])} labels", _size(model.head), "full"))
    lines = ["## Components", "", "| part | what | parameters (trainable) | trains |", "|---|---|---|---|"]
    return "\n".join(lines + [f"| {' | '.join(row)} |" for row in rows])


def _size(module: Any) -> str:
    trainable, total = count_parameters(module)
    return f"{_count(total)} ({_count(trainable)})"


def _count(n: int) -> str:
    """12345678 -> "12.35M"."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def _training(training: TrainingRecord | None) -> str:
    """The data and the last evaluation, or a line saying that they were not recorded."""
    if training is None:
        return "## Training\n\nNot recorded: this model was saved outside `mmtransfer train`."
    steps = f", {training.steps} steps" if training.steps else ""
    lines = ["## Training", "", f"Recipe: {_code(training.recipe)}{steps}.", "", "| task | name | train | eval |",
             "|---|---|---|---|"]
    lines += [f"| {d['task']} | {d['name']} | {_code(d['train'])} | {_code(d['eval'])} |" for d in training.datasets]
    if training.metrics:
        lines += ["", "Last evaluation:", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" for k, v in sorted(training.metrics.items())]
        lines += _media_gain(training.metrics)
    return "\n".join(lines)


def _media_gain(metrics: dict[str, float]) -> list[str]:
    """A paragraph on the ``gain/`` metrics: what they mean, and a warning per input the model ignores."""
    if not any(f"/{media_gain.GAIN}/" in k or k.startswith(f"{media_gain.GAIN}/") for k in metrics):
        return []
    lines = ["", "Media gain (`gain/<input>/...`): the score as is minus the score with that input blanked (a black "
             "image, silence); the loss gain is in nats per target token. Near zero means the model ignores the "
             "input."]
    return lines + [f"\n**{line}**" for line in media_gain.warnings(metrics)]


def _code(text: str | None) -> str:
    return f"`{text}`" if text else "-"


def _usage(model: MultimodalGPT, repo_id: str | None, trainable_only: bool) -> str:
    """How to load it (Python and the command line), with a call for each thing it takes."""
    calls, commands = _examples(model)
    if repo_id:
        head = ["from huggingface_hub import snapshot_download", "import mmtransfer", "",
                f'path = snapshot_download("{repo_id}")', "model = mmtransfer.load(path)"]
        folder = f"# DIR: the downloaded folder (`hf download {repo_id}` prints it)"
    else:
        head, folder = ["import mmtransfer", "", 'model = mmtransfer.load("path/to/this/folder")'], "# DIR: this folder"
    code, cli = "\n".join(head + calls), "\n".join([folder] + [f"mmtransfer {c}" for c in commands])
    note = ("\n\nThis folder holds the trained tensors only (projectors, adapters, heads): `mmtransfer.load` first "
            "restores the pretrained parts from their sources, which must be reachable.") if trainable_only else ""
    return f"## Use\n\n```python\n{code}\n```\n\nFrom the command line:\n\n```bash\n{cli}\n```{note}"


def _examples(model: MultimodalGPT) -> tuple[list[str], list[str]]:
    """(Python calls, CLI commands) for the model's inputs."""
    calls, commands = [], []
    if "image" in model.encoders:
        calls += ['print(model.caption("photo.jpg"))', 'print(model.answer("photo.jpg", "What is in it?"))']
        commands += ["caption DIR photo.jpg", 'chat DIR "What is in it?" --image photo.jpg']
    if "audio" in model.encoders:
        calls.append('print(model.transcribe("clip.wav"))')
        commands.append("transcribe DIR clip.wav")
    if model.config.labels:
        calls.append(f'print(model.classify("some text"))  # one of {model.config.labels[:4]}')
        commands.append('classify DIR "some text"')
    if not calls:
        calls.append('print(model.chat([{"role": "user", "content": "Hello"}]))')
        commands.append('chat DIR "Hello"')
    return calls, commands
