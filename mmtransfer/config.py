"""Model configuration: dataclasses <-> dicts / YAML, with errors that name the bad field."""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from mmtransfer.errors import ConfigError

C = TypeVar("C")


@dataclass
class DecoderConfig:
    """The causal LM. ``model``: hub id or local dir; ``config``: an HF config dict to build from instead."""

    model: str = "gpt2"
    pretrained: bool = True
    config: dict[str, Any] | None = None  # e.g. {"model_type": "gpt2", "n_layer": 2, "n_embd": 32, ...}
    tokenizer: str | None = None  # hub id or dir; defaults to ``model``
    dtype: str = "auto"  # auto | bf16 | fp16 | fp32: storage while frozen (or under LoRA); model/precision.py
    attn_implementation: str | None = None  # sdpa | flash_attention_2 | eager; None: transformers' default
    device_map: str | dict[str, Any] | None = None  # passed to from_pretrained (e.g. "auto")
    quantization: dict[str, Any] | None = None  # {bits: 4 | 8, ...}: bitsandbytes base; see mmtransfer.model.precision


@dataclass
class LoraConfig:
    """LoRA settings passed to peft when the decoder policy is ``lora``."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"


@dataclass
class TrainableConfig:
    """What trains. Each policy is ``frozen``, ``full``, ``last:N`` (last N layers), or ``lora`` (decoder)."""

    image_encoder: str = "frozen"
    audio_encoder: str = "frozen"
    projectors: str = "full"
    decoder: str = "frozen"
    lora: LoraConfig = field(default_factory=LoraConfig)

    def encoder(self, kind: str) -> str:
        """The policy of the ``kind`` encoder (the ``<kind>_encoder`` field)."""
        return getattr(self, f"{kind}_encoder")


@dataclass
class ModelConfig:
    """A whole multimodal model: encoders and projectors per modality, the decoder and the task set-up.

    Encoder dicts are ``build_encoder`` kwargs with ``name`` (e.g. ``{"name": "timm", "model_name":
    "resnet18"}``); projector dicts are ``build_projector`` kwargs with ``name`` (``in_dim``/``out_dim``
    are filled in from the encoder and decoder).
    """

    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    image_encoder: dict[str, Any] | None = None
    image_projector: dict[str, Any] | None = None
    audio_encoder: dict[str, Any] | None = None
    audio_projector: dict[str, Any] | None = None
    trainable: TrainableConfig = field(default_factory=TrainableConfig)
    labels: list[str] | None = None  # class names for classify()
    classifier: str = "lm"  # "lm": score label words with the LM; "head": linear head on the last hidden state
    prompts: dict[str, str] = field(default_factory=dict)  # task -> template, see mmtransfer.prompts
    # how conversations become text: "auto" (the tokenizer's chat template when it has one, else plain),
    # "plain" (see mmtransfer.chat) or a Jinja chat template
    chat_template: str = "auto"
    video_frames: int = 8  # frames sampled from each video part, each one image prefix

    # the per-kind fields are named ``<kind>_encoder`` / ``<kind>_projector``; these read and write them
    def encoder(self, kind: str) -> dict[str, Any] | None:
        """The ``kind`` encoder's config (None: the model has no such encoder)."""
        return getattr(self, f"{kind}_encoder")

    def set_encoder(self, kind: str, config: dict[str, Any]) -> None:
        setattr(self, f"{kind}_encoder", config)

    def projector(self, kind: str) -> dict[str, Any]:
        """The ``kind`` projector's config; an MLP when the recipe names none."""
        return dict(getattr(self, f"{kind}_projector") or {"name": "mlp"})


def _child(where: str, key: str) -> str:
    """The location of ``key`` under ``where``: ``recipe.yaml`` -> ``recipe.yaml: key``, ``recipe.yaml: model``
    -> ``recipe.yaml: model.key`` (a file, then a dotted field path)."""
    return f"{where}.{key}" if ": " in where else f"{where}: {key}"


def from_dict(cls: type[C], data: dict[str, Any], where: str = "") -> C:
    """Build dataclass ``cls`` from ``data``, recursing into nested dataclasses; unknown keys are errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        close = difflib.get_close_matches(unknown[0], fields, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(f"{_child(where, unknown[0])}: unknown key; {hint}valid keys: {', '.join(sorted(fields))}"
                          if where else f"{cls.__name__}: unknown key(s) {unknown}; valid keys: {sorted(fields)}")
    required = [n for n, f in fields.items() if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING and n not in data]
    if required:
        raise ConfigError(f"{_child(where, required[0])}: missing (required)" if where else
                          f"{cls.__name__}: missing required key(s) {required}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        sub = _dataclass_in(hints[name])
        path = _child(where, name) if where else name
        if sub is not None and value is not None:
            kwargs[name] = from_dict(sub, value, path)
        else:
            kwargs[name] = _scalar(hints[name], value, path)
    return cls(**kwargs)


def _scalar(hint: Any, value: Any, path: str) -> Any:
    """Check a value against a plain ``int`` / ``float`` / ``bool`` / ``str`` hint (or that ``| None``);
    other hints pass through. A float field takes an int, or a string that is a number: YAML 1.1 reads
    ``1e-4`` (no dot, or no exponent sign) as a string."""
    union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    args = typing.get_args(hint) if union else (hint,)
    kinds = [a for a in args if a is not type(None)]
    if len(kinds) != 1 or kinds[0] not in (int, float, bool, str) or (value is None and len(kinds) < len(args)):
        return value
    kind = kinds[0]
    if kind is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            pass
    elif isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{path}: expected {'a number' if kind is float else kind.__name__}, got {value!r}")


def _dataclass_in(hint: Any) -> type | None:
    """The dataclass type inside a hint such as ``Foo`` or ``Foo | None``, else None."""
    if dataclasses.is_dataclass(hint):
        return hint
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return next((a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)), None)
    return None


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as plain JSON/YAML-serialisable data."""
    return dataclasses.asdict(obj)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with ``yaml.safe_load``; errors name the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML; a number indexes a list, e.g.
    ``stages.0.steps=20``) to a nested dict, in place."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}': expected key=value")
        node: Any = data
        *parents, leaf = key.split(".")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ConfigError(f"override '{item}': the value is not valid YAML: {err}") from None
        try:
            for part in parents:
                node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
            if isinstance(node, list):
                node[int(leaf)] = value
            else:
                node[leaf] = value
        except (AttributeError, IndexError, ValueError, TypeError):
            raise ConfigError(f"override '{item}': '{key}' does not name a field of this config") from None
    return data


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON file; errors name the file."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON: {err}") from None
