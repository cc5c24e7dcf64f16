"""The one resolution walk, shared by models, tokenizers, timm checkpoints and the status listing.

``walk`` tries the sources in order and stops at the first that has the weights: files bundled with the
package (by their name, e.g. ``mmtransfer/tiny-tokenizer``), a local directory,
the Hugging Face cache, the hub (only when online), then pip-packaged weights (converted once). A
``Target`` says what counts as found for each kind. With ``act=False`` the walk downloads, converts and
logs nothing and answers where the weights are or would come from: that is ``mmtransfer weights list``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmtransfer.bundled import BUNDLED
from mmtransfer.errors import WeightsNotFoundError
from mmtransfer.weights.cache import cache_root, converted_dir, not_installed, prepare, unknown
from mmtransfer.weights.catalogue import PACKAGED, Packaged
from mmtransfer.weights.hub import (
    hf_cached,
    hub_download,
    hub_skip_reason,
    model_complete,
    timm_hf_cached,
    tokenizer_complete,
)
from mmtransfer.weights.substitute import SUBSTITUTE_ENV, substitute_for, substitution_allowed

LOCAL, HF_CACHE, HUB, PACKAGES = "local directory", "Hugging Face cache", "Hugging Face hub", "pip-packaged weights"
BUNDLE = "bundled with mmtransfer"
_TIMM_PACKAGED = "a timm checkpoint is packaged, see timm_checkpoint()"


@dataclass(frozen=True)
class Target:
    """What a walk looks for, and what each source must hold to provide it."""

    what: str  # "model", "tokenizer" or "timm weights": named in messages
    local: bool  # an existing directory called ``name`` is the answer
    cached: Callable[[str], Path | None]  # the Hugging Face cache, no network
    cache_miss: str  # what the cache step reports when it has nothing ("{}": the name)
    download: Callable[[str], Path | None]  # from the hub; None: the caller's library downloads itself
    refuse: Callable[[str, Packaged], str | None]  # why packaged weights of this kind do not serve
    file: str = ""  # the file of a converted directory that is the answer ("": the directory)


@dataclass(frozen=True)
class Found:
    """Where a walk stopped: the source, the status the listing shows and the weights' path (None: on
    the hub, fetched when loaded)."""

    step: str
    status: str
    path: Path | None


def _refuse_model(name: str, entry: Packaged) -> str | None:
    if entry.kind == "vision":
        return _TIMM_PACKAGED
    return f"{entry.note}; resolve_tokenizer() works" if entry.kind == "tokenizer" else None


def _refuse_tokenizer(name: str, entry: Packaged) -> str | None:
    return _TIMM_PACKAGED if entry.kind == "vision" else None


def _refuse_timm(name: str, entry: Packaged) -> str | None:
    return None if entry.kind == "vision" else f"'{name}' is packaged as {entry.kind} weights, not for timm"


MODEL = Target(
    "model",
    True,
    lambda name: hf_cached(name, model_complete),
    "no complete snapshot of '{}'",
    lambda name: hub_download(name, model_complete, weights=True),
    _refuse_model,
)
TOKENIZER = Target(
    "tokenizer",
    True,
    lambda name: hf_cached(name, tokenizer_complete),
    "no complete snapshot of '{}'",
    lambda name: hub_download(name, tokenizer_complete, weights=False),
    _refuse_tokenizer,
)
TIMM = Target(
    "timm weights",
    False,
    timm_hf_cached,
    "no timm weights for '{}'",
    lambda name: None,
    _refuse_timm,
    file="model.safetensors",
)


def target_for(kind: str) -> Target:
    """The target that serves a catalogue kind (decoder, audio, vision, tokenizer)."""
    return {"vision": TIMM, "tokenizer": TOKENIZER}.get(kind, MODEL)


def walk(name: str, target: Target, act: bool = True) -> tuple[Found | None, list[str]]:
    """Try every source in order for ``name``: the first that has ``target``, and what each earlier
    one answered. ``act=False``: download and convert nothing (where the weights are or would be)."""
    if target.local and name in BUNDLED:  # files that ship inside the package (the tiny tokenizer)
        return Found(BUNDLE, BUNDLE, BUNDLED[name]), []
    tried: list[str] = []
    for step in ([_local] if target.local else []) + [_hf_cache, _hub, _packaged]:
        result = step(name, target, act)
        if isinstance(result, Found):
            return result, tried
        tried.append(result)
    return None, tried


def _local(name: str, target: Target, act: bool) -> Found | str:
    local = Path(name).expanduser().absolute()
    if local.is_dir():
        return Found(LOCAL, LOCAL, local)
    return f"{LOCAL} {local}: not a directory"


def _hf_cache(name: str, target: Target, act: bool) -> Found | str:
    cached = target.cached(name)
    if cached is not None:
        return Found(HF_CACHE, "in HF cache", cached)
    return f"{HF_CACHE}: {target.cache_miss.format(name)}"


def _hub(name: str, target: Target, act: bool) -> Found | str:
    reason = hub_skip_reason()
    if reason is None and not act:
        return Found(HUB, "on the hub (fetched when first used)", None)
    if reason is None:
        try:
            return Found(HUB, "downloaded", target.download(name))
        except Exception as err:  # noqa: BLE001 - any hub failure moves on to the next source
            reason = f"failed: {type(err).__name__}: {err}".splitlines()[0]
    return f"{HUB}: {reason}"


def _packaged(name: str, target: Target, act: bool) -> Found | str:
    entry = PACKAGED.get(name)
    if entry is None:
        return f"{PACKAGES}: {unknown()}"
    if entry.substitute is not None:
        return _substituted(name, entry, target, act)
    refused = target.refuse(name, entry)
    if refused is not None:
        return f"{PACKAGES}: {refused}"
    if not act:
        return _packaged_status(entry, target)
    try:
        return Found(PACKAGES, "converted", _inside(prepare(name), target))
    except WeightsNotFoundError as err:
        return f"{PACKAGES}: {_reason(err)}"


def _packaged_status(entry: Packaged, target: Target) -> Found | str:
    """Where ``prepare`` puts the weights of ``entry``, without converting them."""
    done = converted_dir(entry)
    if done is not None:
        return Found(PACKAGES, "converted", _inside(done, target))
    if entry.paths() is None:
        return f"{PACKAGES}: {not_installed(entry)}"
    return Found(PACKAGES, "installed (not converted yet)", _inside(cache_root() / entry.dirname, target))


def _substituted(name: str, entry: Packaged, target: Target, act: bool) -> Found | str:
    """The walk for the name whose weights ``entry`` holds, when the user allows substitutes."""
    try:
        other = substitute_for(name, entry, warn=act)
    except WeightsNotFoundError as err:
        return f"{PACKAGES}: {_reason(err)}"
    found, tried = walk(other, target, act)
    if found is None:
        return f"{PACKAGES}: the allowed substitute '{other}' is not here either ({tried[-1]})"
    return dataclasses.replace(found, status=f"substitute {other}: {found.status}")


def _inside(directory: Path, target: Target) -> Path:
    return directory / target.file if target.file else directory


def _reason(err: WeightsNotFoundError) -> str:
    """The message of ``err`` without its leading ``'name': ``."""
    return str(err).split(": ", 1)[-1]


def _not_found_message(name: str, target: Target, tried: list[str]) -> str:
    entry = PACKAGED.get(name)
    lines = [f"no {target.what} found for '{name}'. Tried, in order:"]
    lines += [f"  {i}. {t}" for i, t in enumerate(tried, 1)]
    local = "pass a local directory in Hugging Face layout, or " if target.local else ""
    lines.append(f"To get them: {local}copy a Hugging Face cache (HF_HUB_CACHE) from a machine with")
    lines.append("  hub access, or run where the hub is reachable")
    if entry is not None and entry.substitute is not None and not substitution_allowed():
        lines.append(f"  or: set {SUBSTITUTE_ENV}=1 to serve it with the weights of '{entry.substitute}'")
    elif entry is not None and (target.what == "tokenizer" or entry.kind != "tokenizer"):
        lines.append(f"  or: {entry.install_hint()}")
    return "\n".join(lines)


def locate(name: str, target: Target) -> Found:
    """Where ``walk`` finds ``name``; raises ``WeightsNotFoundError`` listing every source tried."""
    found, tried = walk(name, target)
    if found is None:
        raise WeightsNotFoundError(_not_found_message(name, target, tried))
    return found


def _directory(name: str, target: Target) -> Path:
    path = locate(name, target).path
    assert path is not None, "only the timm target leaves the download to its library"
    return path


def resolve(name: str) -> Path:
    """Return a local directory in standard Hugging Face layout with the weights and config of
    ``name`` (and its tokenizer / preprocessor files where the model has them)."""
    return _directory(name, MODEL)


def resolve_tokenizer(name: str) -> Path:
    """Return a directory with the tokenizer files of ``name`` (the model directory when the whole
    model is available)."""
    return _directory(name, TOKENIZER)


def timm_pretrained_overlay(model_name: str) -> dict[str, Any]:
    """``pretrained_cfg_overlay`` for ``timm.create_model(model_name, pretrained=True, ...)``: the local
    ``file`` plus the preprocessing (mean, std, interpolation) these weights were trained with.
    ``{}`` when nothing is local but the hub is reachable (timm downloads its own weights)."""
    found = locate(model_name, TIMM)
    if found.path is None:
        return {}
    preprocessing = PACKAGED[model_name].timm_cfg if found.step == PACKAGES else {}
    return {"file": str(found.path), **preprocessing}


def timm_checkpoint(model_name: str) -> Path | None:
    """Return a local checkpoint file with pretrained weights for a timm model; None when none is local
    but the hub is reachable (let timm download). Pass ``timm_pretrained_overlay`` to timm, which also
    carries the preprocessing the file needs."""
    file = timm_pretrained_overlay(model_name).get("file")
    return Path(file) if file else None
