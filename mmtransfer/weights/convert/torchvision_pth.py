"""A torchvision-style ``.pth`` state dict -> a timm ``model.safetensors``, matched tensor by tensor."""

from __future__ import annotations

from pathlib import Path

import torch

from mmtransfer.weights.convert import Converter


def timm_converter(model_name: str, bn_eps: float | None = None) -> Converter:
    """A converter from a .pth state dict whose tensors line up, in order, with timm's ``model_name``.

    ``bn_eps``: the BatchNorm epsilon the weights were trained with, folded into running_var when timm's
    model uses another one (so normalisation is unchanged)."""

    def convert(files: list[Path], out: Path) -> None:
        import timm
        from safetensors.torch import save_file

        (pth,) = files
        source = torch.load(pth, map_location="cpu", weights_only=True)
        model = timm.create_model(model_name, pretrained=False)
        target = model.state_dict()
        if len(source) != len(target):
            raise ValueError(f"{pth.name}: {len(source)} tensors, timm {model_name} has {len(target)}")
        mapped = {}
        for (src, value), (dst, ref) in zip(source.items(), target.items()):
            if value.shape != ref.shape:
                raise ValueError(f"{pth.name}: {src} {tuple(value.shape)} does not fit {dst} {tuple(ref.shape)}")
            mapped[dst] = value.clone()
        if bn_eps is not None:
            for name, module in model.named_modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    mapped[f"{name}.running_var"] += bn_eps - module.eps
        model.load_state_dict(mapped)
        save_file({k: v.contiguous() for k, v in mapped.items()}, out / "model.safetensors")

    return convert
