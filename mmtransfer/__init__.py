"""mmtransfer: plug vision and audio encoders into a pretrained causal LM and fine-tune it."""

from mmtransfer.builder import build_model
from mmtransfer.config import ModelConfig
from mmtransfer.encoders import ENCODERS, Encoder, build_encoder
from mmtransfer.model import MultimodalGPT
from mmtransfer.projectors import PROJECTORS, build_projector
from mmtransfer.saving import load, save_pretrained

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
