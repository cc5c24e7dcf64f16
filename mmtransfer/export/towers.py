"""Image encoders -> a vision tower that transformers' LLaVA-style classes hold, giving the same patch tokens.

``LlavaForConditionalGeneration`` reads ``hidden_states[vision_feature_layer]`` of its tower and, with
``vision_feature_select_strategy="default"``, drops the first (class) token. Our encoders hand the projector
the tokens after the tower's final norm, so each tower maps onto a class whose last hidden state is that:

- timm ViT (one class token, no pre-norm) -> ``ViTModel`` (it applies ``layernorm`` to every token, like
  timm's ``norm``), with ``tie_last_hidden_states`` so that ``hidden_states[-1]`` is that normed output;
- OpenCLIP ViT whose tokens skip ``ln_post`` (``final_ln_after_pool``) -> ``CLIPVisionModel``;
- timm CNN feature maps (NCHW) -> ``TimmWrapperModel`` under ``FastVlmForConditionalGeneration``, which flattens
  the tower's ``last_hidden_state`` [B, C, H, W] to [B, H*W, C] as our encoder does.

``TimmWrapperModel`` cannot hold a ViT under LLaVA (transformers 5.x): LLaVA indexes its ``hidden_states``, which
it takes from timm's ``forward_intermediates`` as NCHW maps without the final norm. An OpenCLIP tower that
normalises its patch tokens with ``ln_post`` (the default) has no class either: ``CLIPVisionModel`` applies
``post_layernorm`` to the pooled token only. Whatever the checks here miss, the export's verification (features
of the saved folder against ours) refuses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import CLIPVisionConfig, PreTrainedConfig, TimmWrapperConfig, ViTConfig

from mmtransfer.encoders.base import Encoder
from mmtransfer.encoders.vision import OpenClipEncoder, TimmEncoder
from mmtransfer.errors import ConfigError

QKV = "{qkv}"  # in a target name: the fused q/k/v tensor is split into q_proj, k_proj and v_proj

VIT_RULES = [  # timm VisionTransformer -> transformers ViTModel
    (r"cls_token", "embeddings.cls_token"),
    (r"pos_embed", "embeddings.position_embeddings"),
    (r"patch_embed\.proj\.(weight|bias)", r"embeddings.patch_embeddings.projection.\1"),
    (r"blocks\.(\d+)\.norm1\.(weight|bias)", r"layers.\1.layernorm_before.\2"),
    (r"blocks\.(\d+)\.norm2\.(weight|bias)", r"layers.\1.layernorm_after.\2"),
    (r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", rf"layers.\1.attention.{QKV}_proj.\2"),
    (r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"layers.\1.attention.o_proj.\2"),
    (r"blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"layers.\1.mlp.\2.\3"),
    (r"norm\.(weight|bias)", r"layernorm.\1"),
    (r"fc_norm\..*|attn_pool\..*|head\..*", None),  # after pooling: not on the token path
]
CLIP_RULES = [  # OpenCLIP VisionTransformer -> transformers CLIPVisionModel
    (r"class_embedding", "embeddings.class_embedding"),
    (r"positional_embedding", "embeddings.position_embedding.weight"),
    (r"conv1\.weight", "embeddings.patch_embedding.weight"),
    (r"ln_pre\.(weight|bias)", r"pre_layrnorm.\1"),
    (r"transformer\.resblocks\.(\d+)\.ln_1\.(weight|bias)", r"encoder.layers.\1.layer_norm1.\2"),
    (r"transformer\.resblocks\.(\d+)\.ln_2\.(weight|bias)", r"encoder.layers.\1.layer_norm2.\2"),
    (r"transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)", rf"encoder.layers.\1.self_attn.{QKV}_proj.\2"),
    (r"transformer\.resblocks\.(\d+)\.attn\.out_proj\.(weight|bias)", r"encoder.layers.\1.self_attn.out_proj.\2"),
    (r"transformer\.resblocks\.(\d+)\.mlp\.c_fc\.(weight|bias)", r"encoder.layers.\1.mlp.fc1.\2"),
    (r"transformer\.resblocks\.(\d+)\.mlp\.c_proj\.(weight|bias)", r"encoder.layers.\1.mlp.fc2.\2"),
    (r"ln_post\.(weight|bias)", r"post_layernorm.\1"),
    (r"proj", None),  # the contrastive projection: not on the token path
]


@dataclass
class Tower:
    """A converted image tower.

    ``model_type``: the transformers class family that holds it ("llava" or "fast_vlm"); ``config``: its
    vision config; ``state``: its tensors (names inside the tower); ``strategy``: LLaVA's feature selection
    ("default" drops the class token); ``extra_tokens``: tokens beyond the patches (LlavaProcessor's
    ``num_additional_image_tokens``); ``patch_size``: input pixels per token side; ``input_size``: (C, H, W);
    ``pretrained_cfg``: a timm data config that reproduces the encoder's preprocessing."""

    model_type: str
    config: PreTrainedConfig
    state: dict[str, torch.Tensor]
    strategy: str
    extra_tokens: int
    patch_size: int
    input_size: tuple[int, int, int]
    pretrained_cfg: dict[str, Any]

    @property
    def num_tokens(self) -> int:
        """Image tokens per image after the feature selection."""
        _, height, width = self.input_size
        dropped = 1 if self.strategy == "default" else 0
        return (height // self.patch_size) * (width // self.patch_size) + self.extra_tokens - dropped


def convert_tower(encoder: Encoder) -> Tower:
    """The transformers tower for our image ``encoder``; ConfigError naming the encoder when none holds it."""
    if isinstance(encoder, TimmEncoder):
        return _timm_cnn(encoder) if encoder.tokens == "feature_map" else _timm_vit(encoder)
    if isinstance(encoder, OpenClipEncoder):
        return _open_clip(encoder)
    raise ConfigError(f"image_encoder: {type(encoder).__name__} has no transformers vision class that LLaVA holds "
                      "(timm ViTs and CNNs, and OpenCLIP ViTs, export)")


def _timm_vit(encoder: TimmEncoder) -> Tower:
    vit, where = encoder.model, f"image_encoder: timm '{encoder.model_name}'"
    if getattr(vit, "cls_token", None) is None or vit.num_prefix_tokens != 1:
        raise ConfigError(f"{where}: has {vit.num_prefix_tokens} prefix tokens (class / register); LLaVA's ViT "
                          "tower needs exactly one class token")
    if not hasattr(vit, "blocks") or not hasattr(vit.blocks[0], "attn"):
        raise ConfigError(f"{where}: a {type(vit).__name__} is not a plain ViT that transformers' ViTModel holds")
    if not isinstance(vit.norm, nn.LayerNorm):
        raise ConfigError(f"{where}: its tokens end without a LayerNorm ({type(vit.norm).__name__}; e.g. fc_norm after "
                          "pooling instead), but ViTModel's end with one")
    block = vit.blocks[0]
    config = ViTConfig(
        hidden_size=vit.embed_dim, num_hidden_layers=len(vit.blocks), num_attention_heads=block.attn.num_heads,
        intermediate_size=block.mlp.fc1.out_features, image_size=_square(vit.patch_embed.img_size, where),
        patch_size=_square(vit.patch_embed.patch_size, where), num_channels=encoder.data_config["input_size"][0],
        layer_norm_eps=vit.norm.eps,
        qkv_bias=block.attn.qkv.bias is not None, hidden_act=_activation(block.mlp.act, where),
        tie_last_hidden_states=True,  # hidden_states[-1] is the output after ``layernorm``, as ours
    )
    state = _rename(vit.state_dict(), VIT_RULES, where, "ViTModel")
    return Tower("llava", config, state, "default", 1, config.patch_size, tuple(encoder.data_config["input_size"]),
                 dict(encoder.data_config))


def _timm_cnn(encoder: TimmEncoder) -> Tower:
    net, where = encoder.model, f"image_encoder: timm '{encoder.model_name}'"
    if getattr(net, "output_fmt", "NCHW") != "NCHW":
        raise ConfigError(f"{where}: its feature map is {net.output_fmt}; FastVLM's tower flattens NCHW maps only")
    reduction = net.feature_info[-1]["reduction"] if getattr(net, "feature_info", None) else None
    if not reduction:
        raise ConfigError(f"{where}: timm reports no stride for its last feature map; the processor needs it")
    config = TimmWrapperConfig(architecture=encoder.model_name, model_args=encoder.model_kwargs or None,
                               hidden_size=encoder.out_dim, do_pooling=False)
    state = {f"timm_model.{k}": v for k, v in net.state_dict().items()}
    return Tower("fast_vlm", config, state, "full", 0, reduction, tuple(encoder.data_config["input_size"]),
                 dict(encoder.data_config))


def _open_clip(encoder: OpenClipEncoder) -> Tower:
    visual, where = encoder.visual, f"image_encoder: OpenCLIP '{encoder.model_name}'"
    if visual.attn_pool is not None:
        raise ConfigError(f"{where}: its tokens come from an attentional pooler, which CLIPVisionModel lacks")
    if not visual.final_ln_after_pool:
        raise ConfigError(f"{where}: ln_post normalises every patch token, but CLIPVisionModel applies "
                          "post_layernorm to the pooled token only, so LLaVA would read other features (a tower "
                          "built with vision_cfg final_ln_after_pool: true exports)")
    block = visual.transformer.resblocks[0]
    config = CLIPVisionConfig(
        hidden_size=visual.transformer.width, num_hidden_layers=len(visual.transformer.resblocks),
        num_attention_heads=block.attn.num_heads, intermediate_size=block.mlp.c_fc.out_features,
        image_size=_square(visual.image_size, where), patch_size=_square(visual.patch_size, where),
        layer_norm_eps=getattr(visual.ln_pre, "eps", 1e-5), hidden_act=_activation(block.mlp.gelu, where),
    )
    cfg = encoder.preprocess_cfg
    crop = {"shortest": "center", "squash": "squash"}.get(cfg["resize_mode"])
    if crop is None:
        raise ConfigError(f"{where}: preprocess resize_mode '{cfg['resize_mode']}' has no timm equivalent for the "
                          "exported image processor (shortest and squash do)")
    size = tuple(cfg["size"]) if isinstance(cfg["size"], (list, tuple)) else (cfg["size"], cfg["size"])
    pretrained_cfg = {"input_size": (3, *size), "interpolation": cfg["interpolation"], "mean": tuple(cfg["mean"]),
                      "std": tuple(cfg["std"]), "crop_pct": 1.0, "crop_mode": crop}
    strategy = "full" if visual.pool_type == "none" else "default"
    state = _rename(visual.state_dict(), CLIP_RULES, where, "CLIPVisionModel")
    return Tower("llava", config, state, strategy, 1, config.patch_size, (3, *size), pretrained_cfg)


def _rename(state: dict[str, torch.Tensor], rules: list[tuple[str, str | None]], where: str,
            target: str) -> dict[str, torch.Tensor]:
    """Tensors renamed by ``rules`` (regex -> target name, or None to drop); a fused q/k/v tensor [3D, ...] is
    split into three [D, ...] ones. A tensor no rule names is a part ``target`` cannot hold: ConfigError."""
    out, unmapped = {}, []
    for key, value in state.items():
        match, name = next(((m, t) for p, t in rules if (m := re.fullmatch(p, key))), (None, None))
        if match is None:
            unmapped.append(key)
        elif name is not None and QKV in name:
            for part, chunk in zip("qkv", value.chunk(3)):
                out[match.expand(name.replace(QKV, part))] = chunk.clone()
        elif name is not None:
            out[match.expand(name)] = value
    if unmapped:
        raise ConfigError(f"{where}: has weights {target} cannot hold: {', '.join(unmapped[:4])}"
                          f"{' ...' if len(unmapped) > 4 else ''}")
    return out


def _activation(act: nn.Module, where: str) -> str:
    """The transformers activation name (``ACT2FN`` key) of a tower's MLP activation."""
    if isinstance(act, nn.GELU):
        return "gelu" if act.approximate == "none" else "gelu_pytorch_tanh"
    if type(act).__name__ == "QuickGELU":
        return "quick_gelu"
    raise ConfigError(f"{where}: its MLP activation {type(act).__name__} has no transformers equivalent here")


def _square(size: int | tuple[int, ...] | list[int], where: str) -> int:
    """One side of a square image / patch size; ConfigError for a rectangle."""
    sides = {size} if isinstance(size, int) else set(size)
    if len(sides) != 1:
        raise ConfigError(f"{where}: non-square size {tuple(size)}; the exported tower takes square inputs")
    return sides.pop()
