"""Atomic directory writes: a reader sees the old directory or the new one, complete, never a mix.

A write goes to a temporary ``.<name>.<random>.tmp`` beside the target, then two renames swap it in
(``target`` -> ``.<name>.old``, temporary -> ``target``). A process killed mid-write leaves its temporary
directory behind, and one killed between the renames leaves no ``target`` but a complete ``.<name>.old``:
``recover`` puts that back, and the next ``atomic_dir`` on the same target recovers first and removes the
leftovers. One writer per target at a time (in DDP only the main process saves).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``target``; when the block succeeds it replaces ``target``
    by renames (atomic on one file system), when it fails it is removed and ``target`` is untouched."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover(target)
    for leftover in _temporaries(target):  # from a write that was killed
        shutil.rmtree(leftover, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        _swap(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def recover(target: str | Path) -> Path:
    """Finish what a process killed between the two renames of a swap left: with ``target`` missing and
    its previous version beside it, put that back. Returns ``target``."""
    target = Path(target)
    old = _old(target)
    if not target.exists() and old.is_dir():
        os.replace(old, target)
    return target


def _old(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def _temporaries(target: Path) -> list[Path]:
    pattern = re.compile(rf"\.{re.escape(target.name)}\.[^.]+\.tmp")  # mkdtemp's random part has no dot
    return [p for p in target.parent.iterdir() if p.is_dir() and pattern.fullmatch(p.name)]


def _swap(new: Path, target: Path) -> None:
    if not target.exists():
        os.replace(new, target)
        return
    old = _old(target)
    shutil.rmtree(old, ignore_errors=True)
    os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)
