"""mmtransfer: plug vision and audio encoders into a pretrained causal LM and fine-tune it.

The names below load on first use (PEP 562), so that ``import mmtransfer`` and the command line's ``--help``
do not wait for torch and transformers.
"""

import importlib
import logging
from typing import Any

# When bitsandbytes is installed, peft imports it, and its CPU backend tries to fetch an optional kernel
# from the hub at import time; offline that logs two warnings on every command, and the fallback it then
# uses is the correct (slower) one. Their loggers stay quiet below ERROR.
for _name in ("bitsandbytes.backends.cpu.ops", "kernels._internals.hf_hub"):
    logging.getLogger(_name).setLevel(logging.ERROR)

__version__ = "0.1.0"

_EXPORTS = {
    "build_model": "mmtransfer.model.builder",
    "ModelConfig": "mmtransfer.config",
    "ENCODERS": "mmtransfer.encoders",
    "Encoder": "mmtransfer.encoders",
    "build_encoder": "mmtransfer.encoders",
    "MultimodalGPT": "mmtransfer.model",
    "PROJECTORS": "mmtransfer.projectors",
    "build_projector": "mmtransfer.projectors",
    "load": "mmtransfer.model.saving",
    "save_pretrained": "mmtransfer.model.saving",
}


def __getattr__(name: str) -> Any:
    """An exported name from its module, or a submodule (``mmtransfer.tasks``), imported on first use."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module 'mmtransfer' has no attribute '{name}'") from None


def list_encoders() -> list[str]:
    """Names accepted by ``build_encoder`` and the ``name`` field of an encoder config."""
    return __getattr__("ENCODERS").names()


def list_projectors() -> list[str]:
    """Names accepted by ``build_projector`` and the ``name`` field of a projector config."""
    return __getattr__("PROJECTORS").names()


__all__ = [
    "Encoder",
    "ModelConfig",
    "MultimodalGPT",
    "build_encoder",
    "build_model",
    "build_projector",
    "list_encoders",
    "list_projectors",
    "load",
    "save_pretrained",
]
