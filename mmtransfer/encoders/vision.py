"""Image encoders: any timm backbone and the OpenCLIP ViT visual tower, returning token sequences."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

import open_clip
import timm
import torch
from open_clip.model import _build_vision_tower
from open_clip.transform import PreprocessCfg, merge_preprocess_dict

from mmtransfer import weights
from mmtransfer.encoders.base import ENCODERS, Encoder
from mmtransfer.errors import ConfigError
from mmtransfer.io import load_image

TIMM_TOKENS = ("auto", "patch", "feature_map")


def _json_ready(value: Any) -> Any:
    """Tuples (as timm/open_clip configs use) -> lists, recursively, so the config survives JSON."""
    if isinstance(value, (tuple, list)):
        return [_json_ready(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    return value


class _ImageEncoder(Encoder):
    """Shared image ``preprocess``: PIL images or paths -> ``pixel_values`` [B, 3, H, W]."""

    modality = "image"
    transform: Callable[[Any], torch.Tensor]

    def preprocess(self, items: list[Any]) -> dict[str, torch.Tensor]:
        return {"pixel_values": torch.stack([self.transform(load_image(item)) for item in items])}

    @staticmethod
    def _all_valid(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
        return features, mask


@ENCODERS.register("timm")
class TimmEncoder(_ImageEncoder):
    """A timm backbone's last-stage tokens: ViT patch tokens or a CNN's flattened feature map.

    ``tokens="patch"`` drops the model's ``num_prefix_tokens`` (class/register tokens) from
    ``forward_features``; ``"feature_map"`` turns [B, C, H, W] (or NHWC, e.g. Swin) into
    [B, H*W, C]; ``"auto"`` picks "patch" for ViT-likes (models with ``num_prefix_tokens``), else "feature_map".
    ``data_config`` overrides entries of timm's resolved eval data config (e.g. ``input_size``).
    """

    def __init__(
        self,
        model_name: str,
        pretrained: bool = True,
        tokens: str = "auto",
        model_kwargs: dict[str, Any] | None = None,
        data_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if tokens not in TIMM_TOKENS:
            raise ValueError(f"tokens must be one of {TIMM_TOKENS}, got '{tokens}'")
        self.model_name, self.model_kwargs = model_name, dict(model_kwargs or {})
        self.model = self._create(model_name, pretrained, self.model_kwargs)
        self.model.reset_classifier(0)  # the head is never used; drop its weights
        if tokens == "auto":
            tokens = "patch" if hasattr(self.model, "num_prefix_tokens") else "feature_map"
        self.tokens = tokens
        self.out_dim = self.model.num_features
        self.data_config_overrides = dict(data_config or {})
        self.data_config = {**self._native_data_config(self.model), **self.data_config_overrides}
        self.transform = timm.data.create_transform(**self.data_config, is_training=False)

    @staticmethod
    def _create(model_name: str, pretrained: bool, model_kwargs: dict[str, Any]) -> torch.nn.Module:
        if not timm.is_model(model_name):  # before the weights lookup, which would call it missing weights
            close = difflib.get_close_matches(model_name, timm.list_models(), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else " (timm.list_models() lists them)"
            raise ConfigError(f"image_encoder.model_name: timm has no architecture '{model_name}'{hint}")
        # the local weights file plus the mean / std / interpolation those weights were trained with
        overlay = weights.timm_pretrained_overlay(model_name) if pretrained else {}
        if overlay:
            model_kwargs = {**model_kwargs, "pretrained_cfg_overlay": overlay}
        return timm.create_model(model_name, pretrained=pretrained, **model_kwargs)

    @staticmethod
    def _native_data_config(model: torch.nn.Module) -> dict[str, Any]:
        config = timm.data.resolve_data_config({}, model=model)
        # timm keeps the pretrained cfg's input size even when img_size is overridden at creation,
        # and a fixed-size ViT then rejects it: follow the patch embedding's size instead.
        img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
        if img_size is not None:
            config["input_size"] = (3, *img_size)
        return config

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pixel_values [B, 3, H, W] -> (features [B, N, out_dim], mask [B, N] all True)."""
        features = self.model.forward_features(pixel_values)
        if self.tokens == "patch":
            features = features[:, self.model.num_prefix_tokens :]
        elif features.ndim == 4:  # NCHW, unless the model says NHWC (e.g. Swin)
            if getattr(self.model, "output_fmt", "NCHW") != "NHWC":
                features = features.permute(0, 2, 3, 1)
            features = features.flatten(1, 2)
        return self._all_valid(features)

    def to_config(self) -> dict[str, Any]:
        return _json_ready(
            {
                "name": "timm",
                "model_name": self.model_name,
                "pretrained": False,
                "tokens": self.tokens,
                "model_kwargs": self.model_kwargs,
                "data_config": self.data_config,  # resolved: the pretrained weights' mean/std survive a reload
            }
        )


@ENCODERS.register("open_clip")
class OpenClipEncoder(_ImageEncoder):
    """The OpenCLIP ViT visual tower's patch tokens (after ``ln_post``, before the projection).

    ``model_name`` is a built-in OpenCLIP config (``open_clip.list_models()``); ``pretrained`` is an
    OpenCLIP tag or a local checkpoint file of the whole CLIP model (its text tower is discarded).
    ``vision_cfg`` overrides the config's vision entries for a randomly initialised tower, and
    ``preprocess_cfg`` overrides the resolved OpenCLIP preprocessing (size, mean, std, ...).
    """

    def __init__(
        self,
        model_name: str,
        pretrained: str | None = None,
        vision_cfg: dict[str, Any] | None = None,
        preprocess_cfg: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.model_name, self.vision_cfg = model_name, dict(vision_cfg or {})
        self.visual = self._create(model_name, pretrained, self.vision_cfg)
        self.visual.output_tokens = True
        # an attentional pooler (CoCa) emits its queries at the projection width
        pooled = self.visual.attn_pool is not None
        self.out_dim = self.visual.output_dim if pooled else self.visual.transformer.width
        base = getattr(self.visual, "preprocess_cfg", None) or {"size": self.visual.image_size}
        self.preprocess_cfg = merge_preprocess_dict(
            merge_preprocess_dict(PreprocessCfg(), base), preprocess_cfg or {}
        )
        cfg = self.preprocess_cfg
        self.transform = open_clip.image_transform(
            cfg["size"],
            is_train=False,
            mean=cfg["mean"],
            std=cfg["std"],
            resize_mode=cfg["resize_mode"],
            interpolation=cfg["interpolation"],
            fill_color=cfg["fill_color"],
        )

    @staticmethod
    def _create(model_name: str, pretrained: str | None, vision_cfg: dict[str, Any]) -> torch.nn.Module:
        model_cfg = open_clip.get_model_config(model_name)
        if model_cfg is None:
            raise ValueError(f"unknown OpenCLIP model '{model_name}' (see open_clip.list_models())")
        if pretrained:
            if vision_cfg:
                raise ValueError("vision_cfg overrides need a randomly initialised tower (pretrained=None)")
            visual = open_clip.create_model(model_name, pretrained=pretrained).visual
        else:
            visual = _build_vision_tower(
                model_cfg["embed_dim"],
                {**model_cfg["vision_cfg"], **vision_cfg},
                quick_gelu=model_cfg.get("quick_gelu", False),
            )
        if not hasattr(visual, "output_tokens"):  # ModifiedResNet and timm towers have no token output
            raise ValueError(
                f"OpenCLIP '{model_name}' has a {type(visual).__name__} visual tower; only ViT towers give "
                "patch tokens here (use the 'timm' encoder for timm/CNN backbones)"
            )
        return visual

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pixel_values [B, 3, H, W] -> (patch tokens [B, N, width], mask [B, N] all True)."""
        _, tokens = self.visual(pixel_values)
        return self._all_valid(tokens)

    def to_config(self) -> dict[str, Any]:
        return _json_ready(
            {
                "name": "open_clip",
                "model_name": self.model_name,
                "pretrained": None,
                "vision_cfg": self.vision_cfg,
                "preprocess_cfg": self.preprocess_cfg,
            }
        )
