"""The conversion cache: pip-packaged weights converted once into ``$MMTRANSFER_CACHE`` (default
``~/.cache/mmtransfer/weights``), one directory per entry, marked with the source versions it came from."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from mmtransfer.atomic import atomic_dir
from mmtransfer.errors import WeightsNotFoundError
from mmtransfer.weights.catalogue import PACKAGED, Packaged
from mmtransfer.weights.substitute import substitute_for

log = logging.getLogger(__name__)

CACHE_ENV = "MMTRANSFER_CACHE"
DEFAULT_CACHE = "~/.cache/mmtransfer/weights"
MARKER = ".mmtransfer.json"


def cache_root() -> Path:
    """Where converted pip-packaged weights live (``$MMTRANSFER_CACHE`` or ``~/.cache/mmtransfer/weights``)."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def converted_dir(entry: Packaged) -> Path | None:
    """The finished conversion for ``entry`` if present and made from the installed package versions."""
    target = cache_root() / entry.dirname
    try:
        marker = json.loads((target / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return target if marker.get("sources") == entry.stamp() else None


def not_installed(entry: Packaged) -> str:
    """The reason a missing package gives, with the command that installs it."""
    return f"package not installed; {entry.install_hint()}"


def unknown() -> str:
    """The reason a name without pip-packaged weights gives, with the names there are."""
    return f"no pip-packaged weights known; known: {', '.join(PACKAGED)}"


def _make_readable(directory: Path) -> None:
    """mkdtemp makes a private directory and some writers private files; a cache may be shared."""
    directory.chmod(0o755)
    for path in directory.iterdir():
        path.chmod(0o755 if path.is_dir() else 0o644)


def prepare(name: str) -> Path:
    """Convert the pip-packaged weights known as ``name`` into the cache (once) and return the
    directory. Raises ``WeightsNotFoundError`` when the name is unknown, its package missing, or it
    names a substitute that is not allowed."""
    entry = PACKAGED.get(name)
    if entry is None:
        raise WeightsNotFoundError(f"'{name}': {unknown()}")
    if entry.substitute is not None:
        return prepare(substitute_for(name, entry))
    done = converted_dir(entry)
    if done is not None:
        return done
    files = entry.paths()
    if files is None:
        raise WeightsNotFoundError(f"'{name}': {not_installed(entry)}")
    target = cache_root() / entry.dirname
    log.info("converting '%s' from %s into %s", name, ", ".join(entry.stamp()), target)
    start = time.perf_counter()
    with atomic_dir(target) as tmp:  # a failed conversion leaves nothing; a stale one is swapped out
        entry.convert(files, tmp)
        marker = {"sources": entry.stamp(), "seconds": round(time.perf_counter() - start, 1)}
        (tmp / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
        _make_readable(tmp)
    log.info("converted '%s' in %.1f s", name, time.perf_counter() - start)
    return target
