"""Encoders: importing this package registers every built-in encoder in ``ENCODERS``."""

from mmtransfer.encoders import audio, vision  # noqa: F401  (registration side effects)
from mmtransfer.encoders.base import ENCODERS, Encoder, build_encoder

__all__ = ["ENCODERS", "Encoder", "build_encoder"]
