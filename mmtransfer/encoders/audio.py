"""Audio encoders: the Whisper encoder, wav2vec2/HuBERT and a light log-mel transformer."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    PreTrainedModel,
    Wav2Vec2FeatureExtractor,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperModel,
)
from transformers.feature_extraction_sequence_utils import SequenceFeatureExtractor
from transformers.models.whisper.modeling_whisper import WhisperEncoder as HFWhisperEncoder

from mmtransfer import weights
from mmtransfer.encoders.base import ENCODERS, Encoder
from mmtransfer.io import load_audio


def _valid_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """lengths [B] -> mask [B, max_len], True on the first ``lengths[b]`` positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


class _AudioEncoder(Encoder):
    modality = "audio"

    def _waves(self, items: list[Any]) -> list[np.ndarray]:
        """Arrays (assumed at ``sample_rate``) or file paths -> float32 mono arrays at ``sample_rate``."""
        return [load_audio(item, self.sample_rate) for item in items]


class _HFAudioEncoder(_AudioEncoder):
    """Shared loading for transformers encoders: ``model`` + ``pretrained`` or ``hf_config``."""

    feature_extractor: SequenceFeatureExtractor

    def _load(
        self,
        model: str | None,
        pretrained: bool,
        hf_config: dict[str, Any] | None,
        feature_extractor: dict[str, Any] | None,
        extractor_cls: type[SequenceFeatureExtractor],
        from_pretrained: Callable[..., PreTrainedModel],
        from_config: Callable[[dict[str, Any]], PreTrainedModel],
    ) -> PreTrainedModel:
        """Load (pretrained) or build (random init) the network.

        Sets ``model_id``, ``feature_extractor`` and ``sample_rate`` on the way.

        With ``pretrained``, ``hf_config`` entries override the loaded config (e.g. dropout) and
        ``feature_extractor`` entries override the saved preprocessor config.
        """
        self.model_id = model
        hf_config, extractor_kwargs = dict(hf_config or {}), dict(feature_extractor or {})
        if pretrained:
            if model is None:
                raise ValueError("pretrained=True needs `model` (a hub id or a local directory)")
            path = weights.resolve(model)
            # fp32 like every other encoder; transformers 5 would otherwise keep the checkpoint's dtype
            network = from_pretrained(path, dtype=torch.float32, **hf_config)
            self.feature_extractor = extractor_cls.from_pretrained(path, **extractor_kwargs)
        else:
            network = from_config(hf_config)
            self.feature_extractor = extractor_cls(**extractor_kwargs)
        self.sample_rate = self.feature_extractor.sampling_rate
        return network

    def _extractor_config(self) -> dict[str, Any]:
        """The feature extractor's constructor arguments, to rebuild it without its saved config."""
        params = inspect.signature(type(self.feature_extractor).__init__).parameters
        return {k: v for k, v in self.feature_extractor.to_dict().items() if k in params}

    def _hf_config(self, config: Any) -> dict[str, Any]:
        """Config entries that differ from the defaults (keeps a saved config.json short)."""
        return {
            k: v for k, v in config.to_diff_dict().items() if k not in ("transformers_version", "model_type")
        }


def _whisper_from_pretrained(path: str, max_source_positions: int | None = None, **kw: Any) -> HFWhisperEncoder:
    """A pretrained Whisper encoder; a smaller ``max_source_positions`` (a shorter ``chunk_length``) keeps the
    first rows of the pretrained positional table instead of failing on the size mismatch."""
    encoder = WhisperModel.from_pretrained(path, **kw).encoder
    full = encoder.config.max_source_positions
    if max_source_positions is not None and max_source_positions != full:
        if max_source_positions > full:
            raise ValueError(f"max_source_positions {max_source_positions} exceeds the checkpoint's {full}")
        table = encoder.embed_positions.weight.data[:max_source_positions].clone()
        encoder.embed_positions = nn.Embedding.from_pretrained(table, freeze=True)
        encoder.config.max_source_positions = encoder.max_source_positions = max_source_positions
    return encoder


@ENCODERS.register("whisper")
class WhisperEncoder(_HFAudioEncoder):
    """The Whisper encoder on log-mel features from ``WhisperFeatureExtractor``.

    Whisper always sees a fixed ``chunk_length`` window (longer audio is truncated, shorter audio
    zero-padded, exactly as in pretraining), so each item's features do not depend on the batch.
    The mask marks the ``ceil(mel_frames / 2)`` frames that cover real audio, and the output is cut
    to the longest valid length in the batch: the trailing frames only encode padding, and
    dropping them saves decoder compute.
    """

    def __init__(
        self,
        model: str | None = None,
        pretrained: bool = True,
        hf_config: dict[str, Any] | None = None,
        feature_extractor: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.encoder = self._load(
            model,
            pretrained,
            hf_config,
            feature_extractor,
            WhisperFeatureExtractor,
            _whisper_from_pretrained,
            lambda cfg: HFWhisperEncoder(WhisperConfig(**cfg)),
        )
        config = self.encoder.config
        expected = 2 * config.max_source_positions  # conv2 has stride 2
        if self.feature_extractor.nb_max_frames != expected:
            raise ValueError(
                f"the feature extractor gives {self.feature_extractor.nb_max_frames} mel frames but the "
                f"encoder expects {expected}: set feature_extractor chunk_length to "
                f"{expected * self.feature_extractor.hop_length / self.feature_extractor.sampling_rate:g}"
            )
        self.out_dim = config.d_model

    def preprocess(self, items: list[Any]) -> dict[str, torch.Tensor]:
        """-> input_features [B, n_mels, frames], feature_lengths [B] (mel frames of real audio)."""
        out = self.feature_extractor(
            self._waves(items),
            sampling_rate=self.sample_rate,
            return_attention_mask=True,
            return_tensors="pt",
        )
        return {"input_features": out["input_features"], "feature_lengths": out["attention_mask"].sum(-1)}

    def forward(
        self, input_features: torch.Tensor, feature_lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (features [B, N, d_model], mask [B, N]) with N = the longest valid length in the batch."""
        hidden = self.encoder(input_features.to(self.encoder.dtype)).last_hidden_state
        lengths = torch.div(feature_lengths + 1, 2, rounding_mode="floor")
        n = int(lengths.max())
        return hidden[:, :n], _valid_mask(lengths, n)

    def to_config(self) -> dict[str, Any]:
        return {
            "name": "whisper",
            "model": self.model_id,
            "pretrained": False,
            "hf_config": self._hf_config(self.encoder.config),
            "feature_extractor": self._extractor_config(),
        }


@ENCODERS.register("wav2vec2")
class Wav2Vec2Encoder(_HFAudioEncoder):
    """wav2vec2 / HuBERT (any ``AutoModel`` with a conv feature encoder) on raw waveforms.

    ``model_type`` picks the architecture for random init; a pretrained model's comes from its
    config. Utterances are normalised over their own samples (the extractor always gets the
    lengths), but the model only receives the ``attention_mask`` when its feature extractor is
    configured to return one: group-norm models such as wav2vec2-base were trained on zero-padded
    batches without a mask, so padding changes their outputs slightly.
    """

    def __init__(
        self,
        model: str | None = None,
        pretrained: bool = True,
        model_type: str = "wav2vec2",
        hf_config: dict[str, Any] | None = None,
        feature_extractor: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.model = self._load(
            model,
            pretrained,
            hf_config,
            feature_extractor,
            Wav2Vec2FeatureExtractor,
            AutoModel.from_pretrained,
            lambda cfg: AutoModel.from_config(AutoConfig.for_model(model_type, **cfg)),
        )
        if not hasattr(self.model, "_get_feat_extract_output_lengths"):
            raise ValueError(
                f"'{self.model.config.model_type}' has no conv feature encoder (not wav2vec2-like)"
            )
        self.out_dim = self.model.config.hidden_size

    def preprocess(self, items: list[Any]) -> dict[str, torch.Tensor]:
        """-> input_values [B, T] (zero-padded), attention_mask [B, T] (1 on real samples)."""
        out = self.feature_extractor(
            self._waves(items),
            sampling_rate=self.sample_rate,
            padding="longest",
            return_attention_mask=True,
            return_tensors="pt",
        )
        return {"input_values": out["input_values"], "attention_mask": out["attention_mask"]}

    def forward(
        self, input_values: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (features [B, N, hidden_size], mask [B, N]) with N frames at 20 ms (320x downsampling)."""
        model_mask = attention_mask if self.feature_extractor.return_attention_mask else None
        hidden = self.model(input_values.to(self.model.dtype), attention_mask=model_mask).last_hidden_state
        lengths = self.model._get_feat_extract_output_lengths(attention_mask.sum(-1))
        return hidden, _valid_mask(lengths, hidden.shape[1])

    def to_config(self) -> dict[str, Any]:
        return {
            "name": "wav2vec2",
            "model": self.model_id,
            "pretrained": False,
            "model_type": self.model.config.model_type,
            "hf_config": self._hf_config(self.model.config),
            "feature_extractor": self._extractor_config(),
        }


def _sinusoids(length: int, dim: int, device: torch.device) -> torch.Tensor:
    """Fixed sinusoidal positions [length, dim] (dim even)."""
    position = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freqs = torch.exp(
        torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim)
    )
    table = torch.zeros(length, dim, device=device)
    table[:, 0::2] = torch.sin(position * freqs)
    table[:, 1::2] = torch.cos(position * freqs)
    return table


@ENCODERS.register("fbank")
class FbankEncoder(_AudioEncoder):
    """A small encoder to train from scratch: Kaldi log-mel fbank (25 ms window, 10 ms hop) with
    per-utterance mean/variance normalisation -> two stride-2 convs (40 ms per token) -> a
    pre-norm ``nn.TransformerEncoder`` with sinusoidal positions.
    """

    def __init__(
        self, n_mels: int = 80, dim: int = 64, layers: int = 2, heads: int = 4, sample_rate: int = 16000
    ) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"dim must be even (sinusoidal positions), got {dim}")
        self.n_mels, self.dim, self.layers, self.heads = n_mels, dim, layers, heads
        self.sample_rate, self.out_dim = sample_rate, dim
        self.subsample = nn.ModuleList(
            [nn.Conv1d(n_mels, dim, 3, stride=2, padding=1), nn.Conv1d(dim, dim, 3, stride=2, padding=1)]
        )
        layer = nn.TransformerEncoderLayer(
            dim, heads, 4 * dim, dropout=0.1, activation="gelu", batch_first=True, norm_first=True
        )
        self.transformer = nn.TransformerEncoder(
            layer, layers, norm=nn.LayerNorm(dim), enable_nested_tensor=False
        )

    def _fbank(self, wave: np.ndarray) -> torch.Tensor:
        """[T] samples -> normalised log-mel [frames, n_mels]."""
        # Kaldi's conventions assume int16-scaled samples; scaling only moves the energy floor
        samples = torch.from_numpy(wave)[None] * 32768.0
        if samples.shape[1] < self.sample_rate * 0.025:
            raise ValueError(f"audio of {samples.shape[1]} samples is shorter than one 25 ms fbank window")
        feats = torchaudio.compliance.kaldi.fbank(
            samples, num_mel_bins=self.n_mels, sample_frequency=self.sample_rate, dither=0.0
        )
        return (feats - feats.mean(0)) / (feats.std(0, unbiased=False) + 1e-5)

    def preprocess(self, items: list[Any]) -> dict[str, torch.Tensor]:
        """-> input_features [B, frames, n_mels] (zero-padded), feature_lengths [B]."""
        feats = [self._fbank(wave) for wave in self._waves(items)]
        return {
            "input_features": nn.utils.rnn.pad_sequence(feats, batch_first=True),
            "feature_lengths": torch.tensor([len(f) for f in feats]),
        }

    def forward(
        self, input_features: torch.Tensor, feature_lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (features [B, ceil(frames/4), dim], mask [B, N]); padding never reaches valid frames."""
        x, lengths = input_features.transpose(1, 2), feature_lengths  # [B, n_mels, frames]
        for conv in self.subsample:
            # zero the padding so each conv sees what it sees at the end of a lone utterance
            x = x * _valid_mask(lengths, x.shape[-1])[:, None, :]
            x = F.gelu(conv(x))
            lengths = torch.div(lengths + 1, 2, rounding_mode="floor")
        x = x.transpose(1, 2)
        mask = _valid_mask(lengths, x.shape[1])
        x = x + _sinusoids(x.shape[1], self.dim, x.device).to(x.dtype)
        x = self.transformer(x, src_key_padding_mask=~mask)
        return x.masked_fill(~mask[..., None], 0.0), mask

    def to_config(self) -> dict[str, Any]:
        return {
            "name": "fbank",
            "n_mels": self.n_mels,
            "dim": self.dim,
            "layers": self.layers,
            "heads": self.heads,
            "sample_rate": self.sample_rate,
        }
