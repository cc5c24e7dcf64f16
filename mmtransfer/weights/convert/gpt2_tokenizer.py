"""GPT-2's byte-level BPE files (encoder.json + vocab.bpe) -> a ``GPT2Tokenizer`` directory."""

from __future__ import annotations

from pathlib import Path


def convert_gpt2_tokenizer(files: list[Path], out: Path) -> None:
    """GPT-2's encoder.json + vocab.bpe -> a GPT2Tokenizer directory."""
    from transformers import GPT2Tokenizer

    vocab, merges = files
    # transformers 5 takes vocab=/merges=; the old vocab_file= keyword is silently ignored
    tokenizer = GPT2Tokenizer(vocab=str(vocab), merges=str(merges), model_max_length=1024)
    if len(tokenizer) != 50257:
        raise ValueError(f"GPT-2 tokenizer has {len(tokenizer)} tokens, expected 50257")
    tokenizer.save_pretrained(out)
