"""Serving a name with other weights than it says (the base SmolLM2 name with the Instruct weights) is
opt-in: only with ``MMTRANSFER_ALLOW_SUBSTITUTE=1``, and then with a warning naming both models."""

from __future__ import annotations

import logging

from mmtransfer.errors import WeightsNotFoundError
from mmtransfer.weights.catalogue import Packaged
from mmtransfer.weights.hub import env_flag

log = logging.getLogger(__name__)

SUBSTITUTE_ENV = "MMTRANSFER_ALLOW_SUBSTITUTE"


def substitution_allowed() -> bool:
    """Whether the user allows substitutes (``MMTRANSFER_ALLOW_SUBSTITUTE`` set to a true value)."""
    return env_flag(SUBSTITUTE_ENV)


def refusal(name: str, entry: Packaged) -> str:
    """Why ``name`` is not served by ``entry.substitute``, and how to change that."""
    have = "installed" if entry.paths() is not None else f"not installed: {entry.install_hint()}"
    return (
        f"only the weights of '{entry.substitute}' are packaged ({have}); name '{entry.substitute}' "
        f"instead, or set {SUBSTITUTE_ENV}=1 to let them serve '{name}'"
    )


def substitute_for(name: str, entry: Packaged, warn: bool = True) -> str:
    """The name whose weights will serve ``name`` (``warn``: after a one-line warning naming both);
    raises ``WeightsNotFoundError`` when substitutes are not allowed."""
    if entry.substitute is None or not substitution_allowed():
        raise WeightsNotFoundError(f"'{name}': {refusal(name, entry)}")
    if warn:
        log.warning("serving '%s' with the weights of '%s' (%s is set)", name, entry.substitute, SUBSTITUTE_ENV)
    return entry.substitute
