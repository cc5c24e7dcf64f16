"""``known_weights()``: every name with pip-packaged weights and where the resolution walk finds it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mmtransfer.weights.catalogue import PACKAGED, Packaged
from mmtransfer.weights.resolve import target_for, walk
from mmtransfer.weights.substitute import SUBSTITUTE_ENV, substitution_allowed


@dataclass(frozen=True)
class KnownWeights:
    """One row of ``known_weights()``."""

    name: str
    kind: str
    source: str
    status: str
    note: str
    installed: bool  # the source packages are installed and may be used, so ``prepare`` can convert
    path: Path | None  # where resolution answers (or will, once converted); None: not here yet


def _row(name: str, entry: Packaged) -> KnownWeights:
    found, _ = walk(name, target_for(entry.kind), act=False)
    refused = entry.substitute is not None and not substitution_allowed()
    if found is not None:
        status = found.status
    elif refused:
        status = f"substitute (needs {SUBSTITUTE_ENV}=1)"
    else:
        status = "missing: " + entry.install_hint()
    return KnownWeights(
        name=name,
        kind=entry.kind,
        source=", ".join(s.pin for s in entry.sources),
        status=status,
        note=entry.note,
        installed=not refused and entry.paths() is not None,
        path=found.path if found is not None else None,
    )


def known_weights() -> list[KnownWeights]:
    """Every name with pip-packaged weights: where they come from and whether they are here, as the
    same walk that ``resolve`` and ``timm_checkpoint`` take finds them (nothing downloaded or converted)."""
    return [_row(name, entry) for name, entry in PACKAGED.items()]
