"""faster-whisper (CTranslate2) Whisper -> Hugging Face ``WhisperForConditionalGeneration``.

``read_ct2`` parses CTranslate2's ``model.bin``, ``whisper_state_dict`` / ``whisper_config_kwargs``
map its variables onto transformers' Whisper, and ``convert_whisper`` writes the model, processor and
generation config.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

import torch

_CT2_DTYPES = {
    0: torch.float32,
    1: torch.int8,
    2: torch.int16,
    3: torch.int32,
    4: torch.float16,
    5: torch.bfloat16,
}


def read_ct2(data: bytes | bytearray) -> tuple[str, dict[str, torch.Tensor]]:
    """Parse a CTranslate2 ``model.bin`` (binary version >= 4): the spec name and every variable,
    aliases resolved. Layout: version, spec name, revision, variables (name, rank, dims, dtype id,
    byte count, bytes), then aliases (name, target). Strings are uint16 length (with NUL) + UTF-8."""
    buf = memoryview(bytearray(data))
    offset = 0

    def take(fmt: str) -> Any:
        nonlocal offset
        (value,) = struct.unpack_from("<" + fmt, buf, offset)
        offset += struct.calcsize(fmt)
        return value

    def string() -> str:
        nonlocal offset
        size = take("H")
        text = bytes(buf[offset : offset + size - 1]).decode("utf-8")
        offset += size
        return text

    version = take("I")
    if version < 4:
        raise ValueError(f"CTranslate2 binary version {version} is not supported (need >= 4)")
    spec = string()
    take("I")  # spec revision
    variables: dict[str, torch.Tensor] = {}
    for _ in range(take("I")):
        name = string()
        shape = [take("I") for _ in range(take("B"))]
        dtype = _CT2_DTYPES[take("B")]
        nbytes = take("I")
        count = nbytes // torch.empty((), dtype=dtype).element_size()
        variables[name] = torch.frombuffer(buf, dtype=dtype, count=count, offset=offset).reshape(shape)
        offset += nbytes
    for _ in range(take("I")):
        alias = string()
        variables[alias] = variables[string()]
    return spec, variables


def _ct2_layers(variables: dict[str, torch.Tensor], side: str) -> int:
    return len({m.group(1) for k in variables if (m := re.match(rf"{side}/layer_(\d+)/", k))})


def whisper_state_dict(variables: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a CTranslate2 WhisperSpec onto ``WhisperForConditionalGeneration`` keys, as float32.

    CTranslate2 fuses self-attention q/k/v (and cross-attention k/v) into one linear whose k bias is
    zero (Whisper's k_proj has none); ``proj_out`` is tied to the token embeddings and omitted."""
    sd: dict[str, torch.Tensor] = {}

    def linear(dst: str, src: str) -> None:
        sd[f"{dst}.weight"] = variables[f"{src}/weight"]
        if f"{src}/bias" in variables:
            sd[f"{dst}.bias"] = variables[f"{src}/bias"]

    def norm(dst: str, src: str) -> None:
        sd[f"{dst}.weight"], sd[f"{dst}.bias"] = variables[f"{src}/gamma"], variables[f"{src}/beta"]

    def fused(dst: str, src: str, names: list[str]) -> None:
        weights = variables[f"{src}/weight"].chunk(len(names))
        biases = variables[f"{src}/bias"].chunk(len(names))
        for name, weight, bias in zip(names, weights, biases):
            sd[f"{dst}.{name}.weight"] = weight
            if name != "k_proj":
                sd[f"{dst}.{name}.bias"] = bias

    for side in ("encoder", "decoder"):
        prefix = f"model.{side}"
        sd[f"{prefix}.embed_positions.weight"] = variables[f"{side}/position_encodings/encodings"]
        norm(f"{prefix}.layer_norm", f"{side}/layer_norm")
        for i in range(_ct2_layers(variables, side)):
            dst, src = f"{prefix}.layers.{i}", f"{side}/layer_{i}"
            fused(f"{dst}.self_attn", f"{src}/self_attention/linear_0", ["q_proj", "k_proj", "v_proj"])
            linear(f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
            norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
            if side == "decoder":
                linear(f"{dst}.encoder_attn.q_proj", f"{src}/attention/linear_0")
                fused(f"{dst}.encoder_attn", f"{src}/attention/linear_1", ["k_proj", "v_proj"])
                linear(f"{dst}.encoder_attn.out_proj", f"{src}/attention/linear_2")
                norm(f"{dst}.encoder_attn_layer_norm", f"{src}/attention/layer_norm")
            linear(f"{dst}.fc1", f"{src}/ffn/linear_0")
            linear(f"{dst}.fc2", f"{src}/ffn/linear_1")
            norm(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")
    for conv in ("conv1", "conv2"):
        linear(f"model.encoder.{conv}", f"encoder/{conv}")
    sd["model.decoder.embed_tokens.weight"] = variables["decoder/embeddings/weight"]
    not_float = sorted(k for k, v in sd.items() if not v.is_floating_point())
    if not_float:
        raise ValueError(f"quantized CTranslate2 weights are not supported (e.g. {not_float[0]})")
    return {k: v.float().contiguous() for k, v in sd.items()}


def whisper_config_kwargs(variables: dict[str, torch.Tensor]) -> dict[str, int]:
    """``WhisperConfig`` sizes read off the CTranslate2 variables' shapes."""
    vocab_size, d_model = variables["decoder/embeddings/weight"].shape
    return {
        "vocab_size": vocab_size,
        "d_model": d_model,
        "num_mel_bins": variables["encoder/conv1/weight"].shape[1],
        "encoder_layers": _ct2_layers(variables, "encoder"),
        "decoder_layers": _ct2_layers(variables, "decoder"),
        "encoder_attention_heads": int(variables["encoder/num_heads"]),
        "decoder_attention_heads": int(variables["decoder/num_heads"]),
        "encoder_ffn_dim": variables["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        "decoder_ffn_dim": variables["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        "max_source_positions": variables["encoder/position_encodings/encodings"].shape[0],
        "max_target_positions": variables["decoder/position_encodings/encodings"].shape[0],
    }


def convert_whisper(files: list[Path], out: Path) -> None:
    """faster-whisper directory (model.bin, possibly in parts, config.json, tokenizer.json) -> HF Whisper
    model, processor (feature extractor + tokenizer) and generation config."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    config_json, tokenizer_json, *parts = files
    _, variables = read_ct2(b"".join(p.read_bytes() for p in parts))
    ct2_config = json.loads(config_json.read_text())
    special = {t["content"]: t["id"] for t in json.loads(tokenizer_json.read_text())["added_tokens"]}
    eot = special["<|endoftext|>"]
    config = WhisperConfig(
        **whisper_config_kwargs(variables),
        decoder_start_token_id=special["<|startoftranscript|>"],
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        # only in generation_config.json: a copy in config.json makes generate() warn
        suppress_tokens=None,
        begin_suppress_tokens=None,
    )
    model = WhisperForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(whisper_state_dict(variables), strict=False)
    if unexpected or set(missing) != {"proj_out.weight"}:
        raise ValueError(f"CTranslate2 Whisper mapping: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model.generation_config = _whisper_generation_config(config, ct2_config, special)
    model.save_pretrained(out)
    tokenizer = _whisper_tokenizer(tokenizer_json, special, config.vocab_size)
    tokenizer.save_pretrained(out)
    WhisperFeatureExtractor(feature_size=config.num_mel_bins).save_pretrained(out)


def _whisper_tokenizer(tokenizer_json: Path, special: dict[str, int], vocab_size: int) -> Any:
    """The faster-whisper tokenizer.json as a ``WhisperTokenizer``, with the timestamp tokens that the
    upstream HF tokenizers add (so ``len(tokenizer) == vocab_size``)."""
    from tokenizers import AddedToken, Tokenizer
    from transformers import WhisperTokenizer

    tokenizer = WhisperTokenizer(
        tokenizer_object=Tokenizer.from_file(str(tokenizer_json)),
        unk_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=sorted(special, key=special.__getitem__),
        model_max_length=448,
    )
    timestamps = [f"<|{i * 0.02:.2f}|>" for i in range(vocab_size - len(tokenizer))]
    tokenizer.add_tokens([AddedToken(t, normalized=False, special=False) for t in timestamps])
    if len(tokenizer) != vocab_size:
        raise ValueError(f"Whisper tokenizer has {len(tokenizer)} tokens, the model {vocab_size}")
    return tokenizer


def _whisper_generation_config(config: Any, ct2_config: dict[str, Any], special: dict[str, int]) -> Any:
    """What ``WhisperForConditionalGeneration.generate`` needs to transcribe, as in the upstream repos."""
    from transformers import GenerationConfig

    multilingual = config.vocab_size >= 51865  # the rule transformers itself uses
    fields: dict[str, Any] = {
        "decoder_start_token_id": config.decoder_start_token_id,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
        "max_length": config.max_target_positions,
        "suppress_tokens": ct2_config["suppress_ids"],
        "begin_suppress_tokens": ct2_config["suppress_ids_begin"],
        "alignment_heads": ct2_config["alignment_heads"],
        "no_timestamps_token_id": special["<|notimestamps|>"],
        "prev_sot_token_id": special["<|startofprev|>"],
        "max_initial_timestamp_index": 50,
        "return_timestamps": False,
        "is_multilingual": multilingual,
    }
    if multilingual:
        lang_ids = set(ct2_config["lang_ids"])
        fields["lang_to_id"] = {t: i for t, i in special.items() if i in lang_ids}
        fields["task_to_id"] = {
            "transcribe": special["<|transcribe|>"],
            "translate": special["<|translate|>"],
        }
    # GenerationConfig(**fields) keeps the Whisper-only keys; .update() would silently drop them
    return GenerationConfig(**fields)
