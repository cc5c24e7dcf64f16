"""Lazy package exports (PEP 562): a package's public names are imported from their submodules on first use, so
``import mmtransfer`` and the command line's ``--help`` do not wait for torch and transformers, and importing one
submodule does not load its package's heavy siblings."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, where: dict[str, str], *, submodules: bool = False) -> Callable[[str], Any]:
    """The module-level ``__getattr__`` of ``package``: ``name`` is imported from ``package.<where[name]>`` on first
    use and kept in the package's namespace. ``submodules=True`` also resolves any other name as a submodule
    (``mmtransfer.tasks``)."""

    def __getattr__(name: str) -> Any:
        if name in where:
            value = getattr(importlib.import_module(f"{package}.{where[name]}"), name)
            setattr(importlib.import_module(package), name, value)
            return value
        if submodules:
            try:
                return importlib.import_module(f"{package}.{name}")
            except ModuleNotFoundError as err:
                if err.name != f"{package}.{name}":
                    raise
        raise AttributeError(f"module '{package}' has no attribute '{name}'")

    return __getattr__
