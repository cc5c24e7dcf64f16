"""Optional packages: which pip extra provides each, and a check that names what is missing.

A run checks what it will need when it starts (``require``), so a missing scorer fails in the first
second with the pip command instead of at the first evaluation an hour in.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable

from mmtransfer.errors import MissingDependencyError

# import name -> (pip distribution, the mmtransfer extra that installs it)
OPTIONAL: dict[str, tuple[str, str]] = {
    "pycocoevalcap": ("pycocoevalcap", "metrics"),
    "jiwer": ("jiwer", "metrics"),
    "sklearn": ("scikit-learn", "metrics"),
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
    "mlflow": ("mlflow-skinny", "mlflow"),
    "av": ("av", "video"),
    "fastapi": ("fastapi", "serve"),
    "uvicorn": ("uvicorn", "serve"),
    "gguf": ("gguf", "offline-weights"),
    "bitsandbytes": ("bitsandbytes", "quantization"),
    "webdataset": ("webdataset", "streaming"),
    "datasets": ("datasets", "streaming"),
}


def missing(modules: Iterable[str]) -> list[str]:
    """The modules of ``modules`` that cannot be imported (found without importing them)."""
    return [m for m in modules if importlib.util.find_spec(m) is None]


def require(modules: Iterable[str], what: str) -> None:
    """Raise ``MissingDependencyError`` naming ``what`` needs them and the pip command, if any is absent."""
    absent = missing(modules)
    if not absent:
        return
    names = ", ".join(OPTIONAL.get(m, (m, ""))[0] for m in absent)
    extras = sorted({OPTIONAL[m][1] for m in absent if m in OPTIONAL})
    how = f"pip install 'mmtransfer[{','.join(extras)}]'" if extras else f"pip install {names}"
    raise MissingDependencyError(f"{what} needs {names}, which is not installed: {how}")
