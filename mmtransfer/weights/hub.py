"""The Hugging Face side of the walk: what the local HF cache holds (no network) and the hub, used only
when ``HF_HUB_OFFLINE`` is unset and the endpoint answers within a few seconds."""

from __future__ import annotations

import functools
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

HUB_PROBE_TIMEOUT_S = 3.0
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "vocab.txt")
HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]


def env_flag(variable: str) -> bool:
    """True when the environment variable is set to a true value (1, on, yes, true)."""
    return os.environ.get(variable, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set to a true value."""
    return env_flag("HF_HUB_OFFLINE")


@functools.cache
def hub_reachable() -> bool:
    """Whether the hub endpoint accepts a TCP connection within a few seconds. Runs in a thread because
    name resolution has no timeout of its own; cached per process."""
    from huggingface_hub import constants

    url = urlparse(os.environ.get("HF_ENDPOINT") or constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((url.hostname, port), timeout=HUB_PROBE_TIMEOUT_S).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(HUB_PROBE_TIMEOUT_S)
    return bool(result and result[0])


def hub_skip_reason() -> str | None:
    """Why the hub is not consulted now; None when it may be."""
    if hub_offline():
        return "skipped: HF_HUB_OFFLINE is set"
    if not hub_reachable():
        return f"skipped: endpoint unreachable within {HUB_PROBE_TIMEOUT_S:.0f} s"
    return None


def hf_cache_dir() -> str | None:
    """``HF_HUB_CACHE`` read now (huggingface_hub reads it once, at import); None: its default."""
    return os.environ.get("HF_HUB_CACHE")


def _has_any(directory: Path, names: tuple[str, ...]) -> bool:
    return any((directory / n).is_file() for n in names)


def model_complete(directory: Path) -> bool:
    """A config and weights are there."""
    return (directory / "config.json").is_file() and _has_any(directory, WEIGHT_FILES)


def tokenizer_complete(directory: Path) -> bool:
    """Some tokenizer file is there."""
    return _has_any(directory, TOKENIZER_FILES)


def hf_cached(name: str, complete: Callable[[Path], bool]) -> Path | None:
    """The cached snapshot of repo ``name`` if it holds what ``complete`` asks for (no network)."""
    from huggingface_hub import snapshot_download

    try:
        path = Path(snapshot_download(name, cache_dir=hf_cache_dir(), local_files_only=True))
    except (OSError, ValueError):  # not cached, or not a valid repo id
        return None
    return path if complete(path) else None


def hub_download(name: str, complete: Callable[[Path], bool], weights: bool) -> Path:
    """Download repo ``name`` (config, tokenizer, safetensors; .bin weights only when no safetensors)."""
    from huggingface_hub import snapshot_download

    patterns = HUB_PATTERNS if weights else [p for p in HUB_PATTERNS if p != "*.safetensors"]
    path = Path(snapshot_download(name, cache_dir=hf_cache_dir(), allow_patterns=patterns))
    if weights and not complete(path):
        path = Path(snapshot_download(name, cache_dir=hf_cache_dir(), allow_patterns="pytorch_model*"))
    if not complete(path):
        raise FileNotFoundError(f"the hub repo has no {'model weights' if weights else 'tokenizer'} files")
    return path


def timm_hf_cached(model_name: str) -> Path | None:
    """timm's own pretrained file for ``model_name`` if it is in the Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(model_name)
    repo = cfg.hf_hub_id if cfg is not None else None
    if not repo:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo, filename, cache_dir=hf_cache_dir())
        if isinstance(found, str):
            return Path(found)
    return None
