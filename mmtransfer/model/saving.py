"""Save and load models: ``config.json`` + ``model.safetensors`` + tokenizer files + a ``README.md`` model card
(and ``training.json`` when a training run saved it), written atomically; ``push_to_hub`` uploads such a save.

Loading never unpickles: tensors come from safetensors, the config from JSON. A full save rebuilds
every component from configs stored in ``config.json`` (no download, no pretrained weights needed);
a ``trainable_only`` save (projectors, LoRA adapters, heads: whatever trains) keeps the pretrained
sources and restores the base weights from them before loading the saved tensors.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file, save_model

from mmtransfer.atomic import atomic_dir
from mmtransfer.config import ConfigError, ModelConfig, from_dict, read_json, to_dict
from mmtransfer.model.builder import build_model
from mmtransfer.model.card import TrainingRecord, model_card
from mmtransfer.model.core import MultimodalGPT
from mmtransfer.model.decoder import decoder_config_dict
from mmtransfer.model.precision import is_quantized

CONFIG_NAME = "config.json"
TRAINING_NAME = "training.json"
CARD_NAME = "README.md"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1


def save_pretrained(model: MultimodalGPT, directory: str | Path, trainable_only: bool = False,
                    training: TrainingRecord | None = None, repo_id: str | None = None,
                    tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``model`` to ``directory`` (replacing it atomically: a reader sees the old or the new save), with a
    README.md model card. ``training``: what a run trained on and its last metrics (default: the record the model
    was loaded with, if any), kept in training.json; ``repo_id``: the hub repository the card names; ``tensors``:
    the model's full state dict when its own parameters are shards (FSDP: ``mmtransfer.train.sharding``)."""
    record = training or getattr(model, "training_record", None)
    trainable_only = trainable_only or is_quantized(model.decoder)  # a bitsandbytes base reloads from its source
    with atomic_dir(directory) as tmp:
        _write(model, tmp, trainable_only, tensors)
        if record is not None:
            (tmp / TRAINING_NAME).write_text(json.dumps(dataclasses.asdict(record), indent=2))
        model_card(model, record, trainable_only=trainable_only, repo_id=repo_id).save(tmp / CARD_NAME)
    return Path(directory)


def push_to_hub(model: MultimodalGPT, repo_id: str, *, private: bool | None = None, token: str | None = None,
                trainable_only: bool = False, commit_message: str = "Upload mmtransfer model") -> Any:
    """Create the hub repository ``repo_id`` (when missing) and upload a ``save_pretrained`` of ``model`` (card
    included) as one commit; returns huggingface_hub's ``CommitInfo``."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_pretrained(model, Path(tmp) / "model", trainable_only=trainable_only, repo_id=repo_id)
        repo = api.create_repo(repo_id, private=private, exist_ok=True)
        return api.upload_folder(repo_id=repo.repo_id, folder_path=folder, commit_message=commit_message)


def _write(model: MultimodalGPT, directory: Path, trainable_only: bool,
           tensors: dict[str, torch.Tensor] | None = None) -> None:
    config = dataclasses.replace(model.config)
    if trainable_only:
        trained = {n for n, p in model.named_parameters() if p.requires_grad}
        source = tensors if tensors is not None else dict(model.named_parameters())
        save_file({n: t.detach().contiguous() for n, t in source.items() if n in trained}, directory / WEIGHTS_NAME,
                  metadata={"format": "pt"})
    else:
        base = _unwrapped(model.decoder)
        config.decoder = dataclasses.replace(config.decoder, pretrained=False, config=decoder_config_dict(base))
        for modality, encoder in model.encoders.items():
            dtype = {k: v for k, v in (config.encoder(modality) or {}).items() if k == "dtype"}
            config.set_encoder(modality, encoder.to_config() | dtype)  # the storage dtype stays
        if tensors is None:
            save_model(model, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})  # handles tied weights
        else:
            save_file(_distinct(model, tensors), directory / WEIGHTS_NAME, metadata={"format": "pt"})
    payload = {"mmtransfer_version": FORMAT_VERSION, "weights": "trainable" if trainable_only else "full"}
    (directory / CONFIG_NAME).write_text(json.dumps(payload | to_dict(config), indent=2))
    model.tokenizer.save_pretrained(directory)


def _distinct(model: MultimodalGPT, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` with one name per tied group of the model's (the first in sorted order, as ``save_model``
    keeps); loading restores the tie from the config."""
    names: dict[int, list[str]] = {}
    for name, value in model.state_dict(keep_vars=True).items():
        names.setdefault(id(value), []).append(name)
    dropped = {n for group in names.values() for n in sorted(group)[1:]}
    return {n: t.detach().contiguous() for n, t in tensors.items() if n not in dropped}


def _unwrapped(decoder: torch.nn.Module) -> torch.nn.Module:
    """The base HF model inside a peft wrapper (or the decoder itself)."""
    return decoder.get_base_model() if hasattr(decoder, "get_base_model") else decoder


def load(directory: str | Path, device: str | torch.device = "cpu") -> MultimodalGPT:
    """Load a model saved by ``save_pretrained``; it gives the same outputs as the saved one.
    ``device="auto"``: CUDA when there is one, else the CPU."""
    directory = Path(directory)
    data = read_json(directory / CONFIG_NAME)
    version = data.pop("mmtransfer_version", None)
    kind = data.pop("weights", None)
    if version != FORMAT_VERSION or kind not in ("full", "trainable"):
        raise ConfigError(f"{directory / CONFIG_NAME}: not an mmtransfer model config (version {version})")
    data.setdefault("chat_template", "plain")  # saves from before conversations rendered prompts plainly
    config = from_dict(ModelConfig, data, where=str(directory / CONFIG_NAME))
    try:
        with torch.random.fork_rng():  # random init of weights that are about to be overwritten
            model = build_model(config, tokenizer_dir=str(directory))
    except (ValueError, KeyError, TypeError) as err:  # e.g. an architecture or encoder argument unknown here
        text = str(err) if len(str(err)) <= 300 else str(err)[:300] + "..."
        raise ConfigError(f"{directory / CONFIG_NAME}: cannot build the model it describes: {text}") from err
    _load_tensors(model, directory / WEIGHTS_NAME, strict=kind == "full")
    model.training_record = _training_record(directory / TRAINING_NAME)
    return model.to(resolve_device(device)).eval()


def _training_record(path: Path) -> TrainingRecord | None:
    """The training record saved beside a model, or None when it has none."""
    return from_dict(TrainingRecord, read_json(path), where=str(path)) if path.exists() else None


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> ``cuda`` when a GPU is there, else ``cpu``; anything else as ``torch.device`` reads it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _load_tensors(model: MultimodalGPT, path: Path, strict: bool) -> None:
    try:
        tensors = load_file(path)
    except (FileNotFoundError, SafetensorError, OSError) as err:
        raise ConfigError(f"{path}: cannot read weights: {err}") from None
    own = model.state_dict()
    unexpected = sorted(set(tensors) - set(own))
    bad_shape = sorted(k for k in tensors if k in own and own[k].shape != tensors[k].shape)
    # another float precision converts on load (GPU runs save frozen encoders in half precision), a
    # different kind (integer, bool, float) means the file is not what the config describes
    bad_dtype = sorted(k for k in tensors if k in own and _kind(own[k]) != _kind(tensors[k]))
    missing = _missing(model, own, tensors) if strict else []
    if unexpected or bad_shape or bad_dtype or missing:
        raise ConfigError(
            f"{path} does not match its config: {len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(bad_shape)} wrongly shaped, {len(bad_dtype)} wrongly typed tensors "
            f"(e.g. {(missing + unexpected + bad_shape + bad_dtype)[:3]})"
        )
    model.load_state_dict(tensors, strict=False)


def _kind(tensor: torch.Tensor) -> str:
    return "float" if tensor.is_floating_point() else "complex" if tensor.is_complex() else str(tensor.dtype)


def _missing(model: MultimodalGPT, own: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor]) -> list[str]:
    """Keys absent from the file, except tied copies that save_model dropped (they share storage)."""
    saved_ptrs = {own[k].data_ptr() for k in tensors if k in own}
    return sorted(k for k in own if k not in tensors and own[k].data_ptr() not in saved_ptrs)

