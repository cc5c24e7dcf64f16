"""``mmtransfer demo``: build a tiny image + audio model offline, caption and transcribe the samples in
the package's ``assets/``, save, load back, and check the reloaded model gives the same outputs.

The tiny model has random weights, so its text is noise: the demo shows the whole path (encoders ->
projectors -> splice -> decoder -> generate -> save -> load) runs on a fresh machine in seconds.
"""

from __future__ import annotations

from pathlib import Path

import torch

import mmtransfer
from mmtransfer.bundled import ASSETS, TINY_TOKENIZER


def tiny_config() -> dict:
    """A 2-layer, width-64 GPT-2 decoder with a tiny ViT and a from-scratch fbank audio encoder."""
    return {
        "decoder": {
            "model": "tiny-gpt2", "pretrained": False, "tokenizer": TINY_TOKENIZER,
            "config": {"model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 2, "vocab_size": 434,
                       "bos_token_id": 0, "eos_token_id": 0},
        },
        "image_encoder": {"name": "timm", "model_name": "vit_tiny_patch16_224", "pretrained": False,
                          "model_kwargs": {"img_size": 64, "patch_size": 16, "embed_dim": 64, "depth": 2,
                                           "num_heads": 2}},
        "image_projector": {"name": "mlp"},
        "audio_encoder": {"name": "fbank", "n_mels": 40, "dim": 64, "layers": 2, "heads": 2},
        "audio_projector": {"name": "frame_stack", "k": 4},
    }


def run_demo(out_dir: str | Path) -> None:
    torch.manual_seed(0)
    model = mmtransfer.build_model(tiny_config()).eval()
    image, audio = ASSETS / "sample.png", ASSETS / "sample.wav"
    caption = model.caption(str(image), max_new_tokens=8)
    transcript = model.transcribe(str(audio), max_new_tokens=8)
    answer = model.answer(str(image), "what shape is on the left?", max_new_tokens=8)
    print("tiny random model (untrained: outputs are noise)")
    print(f"  caption({image.name})    -> {caption!r}")
    print(f"  transcribe({audio.name}) -> {transcript!r}")
    print(f"  answer({image.name}, ...) -> {answer!r}")
    model.save_pretrained(out_dir)
    loaded = mmtransfer.load(out_dir)
    same = (loaded.caption(str(image), max_new_tokens=8), loaded.transcribe(str(audio), max_new_tokens=8)) == (
        caption, transcript)
    print(f"saved to {out_dir}; reloaded model gives the same outputs: {same}")
    if not same:
        raise SystemExit("reloaded model differs from the saved one")
