"""Tiny model configs for tests: 2 layers, width 32, built offline from configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmtransfer.bundled import ASSETS

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = str(ASSETS / "tiny-tokenizer")
VOCAB = 434  # len(tiny-tokenizer) without the placeholder tokens

DECODERS: dict[str, dict[str, Any]] = {
    "gpt2": {"model_type": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 256,
             "vocab_size": VOCAB, "bos_token_id": 0, "eos_token_id": 0},
    "llama": {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 64,
              "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 256,
              "vocab_size": VOCAB, "bos_token_id": 0, "eos_token_id": 0},
}

IMAGE_ENCODER = {"name": "timm", "model_name": "vit_tiny_patch16_224", "pretrained": False,
                 "model_kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}}
AUDIO_ENCODER = {"name": "fbank", "n_mels": 40, "dim": 32, "layers": 2, "heads": 2}


def decoder_config(arch: str = "gpt2") -> dict[str, Any]:
    return {"model": f"tiny-{arch}", "pretrained": False, "config": dict(DECODERS[arch]), "tokenizer": TOKENIZER}


def tiny_model_config(arch: str = "gpt2", **overrides: Any) -> dict[str, Any]:
    """Image (tiny ViT + MLP) and audio (fbank + frame stacking) on a tiny decoder."""
    cfg = {
        "decoder": decoder_config(arch),
        "image_encoder": dict(IMAGE_ENCODER),
        "image_projector": {"name": "mlp"},
        "audio_encoder": dict(AUDIO_ENCODER),
        "audio_projector": {"name": "frame_stack", "k": 2},
    }
    return cfg | overrides


# SmolLM2-Instruct's chat template (ChatML with a default system prompt), for tests of templated decoders.
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def chatml_model_config(directory: Path, arch: str = "gpt2", **overrides: Any) -> dict[str, Any]:
    """``tiny_model_config`` whose tokenizer (written to ``directory``) has ChatML special tokens, the
    template above and ``<|im_end|>`` as EOS, like SmolLM2-Instruct's."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.eos_token, tok.chat_template = "<|im_end|>", CHATML
    tok.save_pretrained(directory)
    cfg = tiny_model_config(arch, **overrides)
    cfg["decoder"] = {**cfg["decoder"], "tokenizer": str(directory)}
    cfg["decoder"]["config"] = {**cfg["decoder"]["config"], "vocab_size": len(tok) + 2}  # + the placeholders
    return cfg
