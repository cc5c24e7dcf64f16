"""Tiny encoder kwargs (width 32, 2 layers), built offline from configs: ``build_encoder(name, **kwargs)``."""

from __future__ import annotations

from typing import Any

TINY_ENCODER_KWARGS: dict[str, dict[str, Any]] = {
    "timm": {
        "model_name": "vit_tiny_patch16_224",
        "pretrained": False,
        "model_kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2},
    },
    "open_clip": {
        "model_name": "ViT-B-32",
        "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "head_width": 16},
    },
    "whisper": {
        "pretrained": False,
        "hf_config": {
            "d_model": 32,
            "encoder_layers": 2,
            "encoder_attention_heads": 2,
            "encoder_ffn_dim": 64,
            "num_mel_bins": 80,
            "max_source_positions": 100,
        },
        "feature_extractor": {"chunk_length": 2},  # 2 s = 200 mel frames = 2 * max_source_positions
    },
    "wav2vec2": {
        "pretrained": False,
        "model_type": "wav2vec2",
        "hf_config": {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "conv_dim": [16, 16, 16],
            "conv_kernel": [10, 8, 4],
            "conv_stride": [5, 8, 8],
            "num_conv_pos_embeddings": 16,
            "num_conv_pos_embedding_groups": 2,
            "feat_extract_norm": "layer",
        },
        "feature_extractor": {"return_attention_mask": True},
    },
    "fbank": {"n_mels": 40, "dim": 32, "layers": 2, "heads": 2},
}
