"""mmtransfer: plug vision and audio encoders into a pretrained causal LM and fine-tune it."""

import logging

# When bitsandbytes is installed, peft imports it, and its CPU backend tries to fetch an optional kernel
# from the hub at import time; offline that logs two warnings on every command, and the fallback it then
# uses is the correct (slower) one. Their loggers stay quiet below ERROR.
for _name in ("bitsandbytes.backends.cpu.ops", "kernels._internals.hf_hub"):
    logging.getLogger(_name).setLevel(logging.ERROR)

from mmtransfer.builder import build_model  # noqa: E402 (after the logging set-up)
from mmtransfer.config import ModelConfig  # noqa: E402
from mmtransfer.encoders import ENCODERS, Encoder, build_encoder  # noqa: E402
from mmtransfer.model import MultimodalGPT  # noqa: E402
from mmtransfer.projectors import PROJECTORS, build_projector  # noqa: E402
from mmtransfer.saving import load, save_pretrained  # noqa: E402

__version__ = "0.1.0"


def list_encoders() -> list[str]:
    """Names accepted by ``build_encoder`` and the ``name`` field of an encoder config."""
    return ENCODERS.names()


def list_projectors() -> list[str]:
    """Names accepted by ``build_projector`` and the ``name`` field of a projector config."""
    return PROJECTORS.names()


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
