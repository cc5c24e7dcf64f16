"""GGUF causal LM (llama.cpp's format, possibly quantized) -> float32 safetensors + tokenizer."""

from __future__ import annotations

from pathlib import Path

from mmtransfer.extras import require


def convert_causal_lm(files: list[Path], out: Path) -> None:
    """GGUF causal LM -> float32 safetensors + tokenizer. A model loaded from GGUF is flagged as
    quantized and refuses ``save_pretrained``, so its (dequantized) weights go into a fresh model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    require(["gguf"], f"converting {files[0].name}")  # transformers reads GGUF through it
    (gguf,) = files
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if len(tokenizer) < 1000:
        raise ValueError(f"the tokenizer read from {gguf.name} has only {len(tokenizer)} tokens")
    config = loaded.config
    del config.quantization_config
    tokenizer.model_max_length = config.max_position_embeddings
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
