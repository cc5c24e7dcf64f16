"""Make ``mmtransfer/assets/tiny-tokenizer``: a 512-token byte-level BPE for tiny test and demo models.

Byte-level, so it encodes any text; trained on a small fixed word list so it is deterministic.
Run: ``python mmtransfer/assets/make_tokenizer.py``.
"""

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

WORDS = (
    "a an the of in on at with and is are photo picture image of red green blue yellow black white "
    "circle square triangle star small large left right top bottom one two three four five six seven "
    "eight nine zero question answer what how many colour color shape where caption text label "
    "positive negative good bad movie film great terrible"
).split()


def corpus() -> list[str]:
    """Every ordered pair and triple of a slice of the word list: enough for a few hundred merges."""
    return [f"{a} {b} {c}" for a in WORDS for b in WORDS[:20] for c in WORDS[:10]]


def main(out: Path = Path(__file__).parent / "tiny-tokenizer") -> None:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    fast.save_pretrained(out)
    print(f"wrote {out} ({len(fast)} tokens)")


if __name__ == "__main__":
    main()
