"""The encoder contract shared by every vision and audio encoder."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mmtransfer.registry import Registry

ENCODERS: Registry[Encoder] = Registry("encoder")


class Encoder(nn.Module):
    """Base class: raw inputs -> ``preprocess`` -> tensors -> ``forward`` -> (features, mask).

    Subclasses set ``modality`` ("image" or "audio") and ``out_dim`` and implement:

    - ``preprocess(items) -> dict[str, Tensor]``: a list of raw items (PIL images / file paths for
      images; 1-D float arrays at ``sample_rate`` for audio) to a batch of tensors, using the same
      preprocessing as the encoder's pretraining (timm data config, OpenCLIP transforms, the HF
      feature extractor).
    - ``forward(**batch) -> (features [B, N, out_dim], mask [B, N] bool)``; the mask is True on
      valid tokens and every row's valid tokens come first.
    - ``to_config() -> dict``: keyword arguments for ``build_encoder`` that rebuild the same
      architecture and preprocessing offline, with no weights downloaded (``pretrained=False``).
    """

    modality: str = ""
    out_dim: int = 0
    sample_rate: int | None = None  # audio encoders: the rate ``preprocess`` expects

    def preprocess(self, items: list[Any]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def to_config(self) -> dict[str, Any]:
        raise NotImplementedError

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Turn activation checkpointing of the wrapped backbone on or off (timm / OpenCLIP or transformers API).

        Raises ``NotImplementedError`` when asked to turn it on in an encoder whose backbone has neither API:
        nothing would be recomputed, and a run that asked for it would silently keep every activation in memory.
        """
        found = False
        for module in self.children():
            if hasattr(module, "set_grad_checkpointing"):  # timm, OpenCLIP
                module.set_grad_checkpointing(enable)
            elif hasattr(module, "activation_checkpointing_enable"):  # transformers
                if enable:
                    module.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
                else:
                    module.activation_checkpointing_disable()
            else:
                continue
            found = True
        if enable and not found:
            raise NotImplementedError(
                f"the {self.modality} encoder {type(self).__name__} has no layers to recompute: gradient "
                "checkpointing is not supported for it (turn gradient_checkpointing off, or use an encoder "
                "that supports it)"
            )


def build_encoder(name: str, **kwargs: Any) -> Encoder:
    """Build a registered encoder by name, e.g. ``build_encoder("timm", model_name="resnet18")``."""
    return ENCODERS.build(name, **kwargs)
