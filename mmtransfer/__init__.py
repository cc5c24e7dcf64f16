"""mmtransfer: plug vision and audio encoders into a pretrained causal LM and fine-tune it.

The names below load on first use (PEP 562), so that ``import mmtransfer`` and the command line's ``--help``
do not wait for torch and transformers.
"""

import logging

from mmtransfer.lazy import lazy_exports

# When bitsandbytes is installed, peft imports it, and its CPU backend tries to fetch an optional kernel
# from the hub at import time; offline that logs two warnings on every command, and the fallback it then
# uses is the correct (slower) one. Their loggers stay quiet below ERROR.
for _name in ("bitsandbytes.backends.cpu.ops", "kernels._internals.hf_hub"):
    logging.getLogger(_name).setLevel(logging.ERROR)

__version__ = "0.1.0"

__getattr__ = lazy_exports(__name__, {
    "build_model": "model.builder",
    "ModelConfig": "config",
    "ENCODERS": "encoders",
    "Encoder": "encoders",
    "build_encoder": "encoders",
    "MultimodalGPT": "model",
    "PROJECTORS": "projectors",
    "build_projector": "projectors",
    "load": "model.saving",
    "save_pretrained": "model.saving",
}, submodules=True)


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
