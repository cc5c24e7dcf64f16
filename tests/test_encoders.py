"""Every registered encoder, built tiny from configs: shapes, masks, config round trips, loading."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import (
    HubertConfig,
    HubertModel,
    Wav2Vec2FeatureExtractor,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperModel,
)

from mmtransfer import weights
from mmtransfer.bundled import ASSETS
from mmtransfer.encoders import ENCODERS, Encoder, build_encoder
from mmtransfer.io import load_audio
from tests.tiny import TINY_ENCODER_KWARGS

IMAGE, SPEECH = ASSETS / "sample.png", ASSETS / "sample.wav"
AUDIO_ENCODERS = [n for n in ENCODERS.names() if n in ("whisper", "wav2vec2", "fbank")]


@pytest.fixture(scope="module")
def encoders() -> dict[str, Encoder]:
    """One tiny eval-mode encoder per registered name, built once for the module."""
    torch.manual_seed(0)
    return {name: build_encoder(name, **TINY_ENCODER_KWARGS[name]).eval() for name in ENCODERS.names()}


def _items(encoder: Encoder) -> list[Any]:
    """Two inputs per modality; the audio ones differ in length (1.56 s file, 0.4 s array)."""
    if encoder.modality == "image":
        return [IMAGE, IMAGE]
    speech = load_audio(SPEECH, encoder.sample_rate)
    return [SPEECH, speech[4000:10400]]


def _run(encoder: Encoder, items: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return encoder(**encoder.preprocess(items))


def test_every_registered_encoder_has_tiny_kwargs() -> None:
    assert (
        sorted(TINY_ENCODER_KWARGS)
        == ENCODERS.names()
        == ["fbank", "open_clip", "timm", "wav2vec2", "whisper"]
    )


@pytest.mark.parametrize("name", ENCODERS.names())
def test_output_shapes_and_mask(encoders: dict[str, Encoder], name: str) -> None:
    encoder = encoders[name]
    features, mask = _run(encoder, _items(encoder))
    assert features.dtype == torch.float32 and features.ndim == 3
    assert features.shape[0] == 2 and features.shape[2] == encoder.out_dim
    assert mask.dtype == torch.bool and mask.shape == features.shape[:2]
    assert mask[:, 0].all()
    assert (mask.int().diff(dim=1) <= 0).all(), "valid tokens must come first"
    assert torch.isfinite(features).all()
    if encoder.modality == "image":
        assert mask.all()
    else:
        assert mask[0].all() and not mask[1].all()


def test_image_preprocess_follows_the_model_config(encoders: dict[str, Encoder]) -> None:
    timm_px = encoders["timm"].preprocess([IMAGE])["pixel_values"]
    clip_px = encoders["open_clip"].preprocess([str(IMAGE)])["pixel_values"]
    assert timm_px.shape == clip_px.shape == (1, 3, 32, 32)
    # white background: timm's ViT config normalises with mean/std 0.5, OpenCLIP with the OpenAI stats
    assert timm_px[0, :, 0, 0].tolist() == pytest.approx([1.0, 1.0, 1.0], abs=1e-3)
    mean, std = torch.tensor(open_clip.OPENAI_DATASET_MEAN), torch.tensor(open_clip.OPENAI_DATASET_STD)
    assert torch.allclose(clip_px[0, :, 0, 0], (1 - mean) / std, atol=1e-3)


@pytest.mark.parametrize("name", AUDIO_ENCODERS)
def test_audio_preprocess_takes_paths_and_arrays(encoders: dict[str, Encoder], name: str) -> None:
    encoder = encoders[name]
    assert encoder.sample_rate == 16000
    from_path = encoder.preprocess([SPEECH])
    from_array = encoder.preprocess([load_audio(SPEECH, 16000)])
    assert from_path.keys() == from_array.keys()
    for key in from_path:
        assert torch.equal(from_path[key], from_array[key])


@pytest.mark.parametrize("name", AUDIO_ENCODERS)
def test_padding_does_not_change_valid_features(encoders: dict[str, Encoder], name: str) -> None:
    encoder = encoders[name]
    items = _items(encoder)
    batched, batch_mask = _run(encoder, items)
    for row, item in enumerate(items):
        alone, alone_mask = _run(encoder, [item])
        n = alone.shape[1]
        assert alone_mask.all() and int(batch_mask[row].sum()) == n
        torch.testing.assert_close(batched[row, :n], alone[0], atol=1e-5, rtol=1e-5)


def test_whisper_mask_counts_real_audio_frames(encoders: dict[str, Encoder]) -> None:
    _, mask = _run(encoders["whisper"], _items(encoders["whisper"]))
    samples = [len(load_audio(SPEECH, 16000)), 6400]
    expected = [math.ceil(math.ceil(n / 160) / 2) for n in samples]  # mel frames (hop 160) / conv stride 2
    assert mask.sum(1).tolist() == expected
    assert mask.shape[1] == max(expected)  # cut to the longest valid length, not the 2 s window


@pytest.mark.parametrize("name", ENCODERS.names())
def test_to_config_round_trip(encoders: dict[str, Encoder], name: str) -> None:
    encoder = encoders[name]
    config = json.loads(json.dumps(encoder.to_config()))
    assert config["name"] == name
    rebuilt = build_encoder(**config).eval()
    rebuilt.load_state_dict(encoder.state_dict(), strict=True)
    assert rebuilt.to_config() == config
    items = _items(encoder)
    batch, rebuilt_batch = encoder.preprocess(items), rebuilt.preprocess(items)
    for key in batch:
        assert torch.equal(batch[key], rebuilt_batch[key])
    for ours, theirs in zip(_run(encoder, items), _run(rebuilt, items)):
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize(
    ("model_name", "model_kwargs", "tokens", "n_tokens", "out_dim"),
    [
        ("resnet10t", {}, "feature_map", 4, 512),  # 64 px / 32 = 2x2 map
        (
            "vit_tiny_patch16_224",
            {"img_size": 64, "patch_size": 16, "embed_dim": 32, "depth": 1, "num_heads": 2, "reg_tokens": 2},
            "patch",
            16,
            32,
        ),  # cls + 2 registers dropped
    ],
)
def test_timm_token_kinds(
    model_name: str, model_kwargs: dict, tokens: str, n_tokens: int, out_dim: int
) -> None:
    encoder = build_encoder(
        "timm",
        model_name=model_name,
        pretrained=False,
        model_kwargs=model_kwargs,
        data_config={"input_size": [3, 64, 64]},
    ).eval()
    assert encoder.tokens == tokens and encoder.out_dim == out_dim
    batch = encoder.preprocess([IMAGE])
    assert batch["pixel_values"].shape == (1, 3, 64, 64)
    features, mask = _run(encoder, [IMAGE])
    assert features.shape == (1, n_tokens, out_dim) and mask.all()
    if tokens == "feature_map":
        fmap = encoder.model.forward_features(batch["pixel_values"])  # [1, C, 2, 2]
        torch.testing.assert_close(features[0, 1], fmap[0, :, 0, 1])  # row-major flattening


def test_unknown_encoder_lists_valid_names() -> None:
    with pytest.raises(KeyError, match="fbank, open_clip, timm, wav2vec2, whisper"):
        build_encoder("no_such_encoder")


def test_bad_timm_tokens_and_whisper_window() -> None:
    with pytest.raises(ValueError, match="tokens must be one of"):
        build_encoder("timm", **{**TINY_ENCODER_KWARGS["timm"], "tokens": "pooled"})
    with pytest.raises(ValueError, match="chunk_length to 2"):
        build_encoder(
            "whisper", **{**TINY_ENCODER_KWARGS["whisper"], "feature_extractor": {"chunk_length": 3}}
        )


def _same_weights(module: torch.nn.Module, reference: torch.nn.Module) -> bool:
    theirs = reference.state_dict()
    return all(torch.equal(value, theirs[key]) for key, value in module.state_dict().items())


def test_timm_pretrained_uses_weights_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kwargs = TINY_ENCODER_KWARGS["timm"]["model_kwargs"]
    reference = timm.create_model("vit_tiny_patch16_224", **kwargs)
    save_file(reference.state_dict(), str(tmp_path / "vit.safetensors"))
    overlay = {"file": str(tmp_path / "vit.safetensors"), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    monkeypatch.setattr(weights, "timm_pretrained_overlay", lambda name: overlay)
    encoder = build_encoder("timm", model_name="vit_tiny_patch16_224", model_kwargs=kwargs)
    assert _same_weights(encoder.model, reference)
    assert encoder.data_config["mean"] == (0.5, 0.5, 0.5)
    config = encoder.to_config()
    assert config["pretrained"] is False
    rebuilt = build_encoder(**config)  # offline, no weights: preprocessing must still match the weights'
    image = Image.new("RGB", (40, 40), (200, 30, 30))
    assert torch.equal(rebuilt.preprocess([image])["pixel_values"], encoder.preprocess([image])["pixel_values"])


def test_open_clip_pretrained_from_file(tmp_path: Path) -> None:
    config = {
        "embed_dim": 16,
        "vision_cfg": TINY_ENCODER_KWARGS["open_clip"]["vision_cfg"],
        "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
    }
    (tmp_path / "mmt-test-tiny-clip.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "mmt-test-tiny-clip.json")
    clip = open_clip.create_model("mmt-test-tiny-clip")
    torch.save(clip.state_dict(), tmp_path / "clip.pt")
    encoder = build_encoder(
        "open_clip", model_name="mmt-test-tiny-clip", pretrained=str(tmp_path / "clip.pt")
    )
    assert _same_weights(encoder.visual, clip.visual)
    assert encoder.to_config()["pretrained"] is None
    with pytest.raises(ValueError, match="vision_cfg overrides"):
        build_encoder(
            "open_clip",
            model_name="mmt-test-tiny-clip",
            pretrained=str(tmp_path / "clip.pt"),
            vision_cfg={"layers": 1},
        )


def test_whisper_pretrained_from_resolved_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = WhisperConfig(
        **TINY_ENCODER_KWARGS["whisper"]["hf_config"],
        decoder_layers=1,
        decoder_ffn_dim=64,
        decoder_attention_heads=2,
        vocab_size=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
    )
    reference = WhisperModel(config)
    reference.save_pretrained(tmp_path)
    WhisperFeatureExtractor(chunk_length=2).save_pretrained(tmp_path)
    monkeypatch.setattr(weights, "resolve", lambda name: tmp_path)
    encoder = build_encoder("whisper", model="tiny/whisper")
    assert _same_weights(encoder.encoder, reference.encoder)
    assert encoder.feature_extractor.chunk_length == 2  # read from preprocessor_config.json
    config = encoder.to_config()
    assert config["model"] == "tiny/whisper" and config["pretrained"] is False
    assert config["feature_extractor"]["chunk_length"] == 2


def test_hubert_pretrained_from_resolved_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hf_config = {**TINY_ENCODER_KWARGS["wav2vec2"]["hf_config"], "feat_extract_norm": "group"}
    reference = HubertModel(HubertConfig(**hf_config))
    reference.save_pretrained(tmp_path)
    Wav2Vec2FeatureExtractor(return_attention_mask=False).save_pretrained(tmp_path)
    monkeypatch.setattr(weights, "resolve", lambda name: tmp_path)
    encoder = build_encoder("wav2vec2", model="tiny/hubert").eval()
    assert type(encoder.model).__name__ == "HubertModel"
    assert _same_weights(encoder.model, reference)
    config = encoder.to_config()
    assert config["model_type"] == "hubert" and config["pretrained"] is False
    rebuilt = build_encoder(**config).eval()
    rebuilt.load_state_dict(encoder.state_dict(), strict=True)
    features, mask = _run(encoder, _items(encoder))
    assert torch.equal(features, _run(rebuilt, _items(rebuilt))[0])
    assert (
        mask.sum(1).tolist()
        == encoder.model._get_feat_extract_output_lengths(torch.tensor([25026, 6400])).tolist()
    )


def test_pretrained_hf_encoder_needs_a_model() -> None:
    with pytest.raises(ValueError, match="needs `model`"):
        build_encoder("whisper")


def test_fbank_rejects_audio_shorter_than_a_window(encoders: dict[str, Encoder]) -> None:
    with pytest.raises(ValueError, match="shorter than one 25 ms"):
        encoders["fbank"].preprocess([np.zeros(100, dtype=np.float32)])


# Per encoder that supports gradient checkpointing: the module each checkpointed block runs first. Its pre-hook
# fires in the forward pass and again when the backward pass recomputes the block (hooks on the blocks themselves
# stay outside transformers' checkpoint, and a recomputation stops once it has what the backward needs).
FIRST_IN_BLOCK: dict[str, Callable[[Encoder], list[torch.nn.Module]]] = {
    "timm": lambda e: [block.norm1 for block in e.model.blocks],
    "open_clip": lambda e: [block.ln_1 for block in e.visual.transformer.resblocks],
    "whisper": lambda e: [layer.self_attn_layer_norm for layer in e.encoder.layers],
    "wav2vec2": lambda e: [layer.attention for layer in e.model.encoder.layers],
}


def _training_step(name: str, checkpointing: bool | None) -> tuple[int, list[int], dict[str, torch.Tensor]]:
    """One forward + backward of a fresh tiny encoder in training mode with checkpointing on, off, or turned on
    then off again (None): (number of blocks, [block runs in the forward, in the backward], parameter grads)."""
    torch.manual_seed(0)
    kwargs = TINY_ENCODER_KWARGS[name]
    if name == "wav2vec2":  # no random layer drop or time masking (numpy's RNG): both runs must see the same
        kwargs = {**kwargs, "hf_config": {**kwargs["hf_config"], "layerdrop": 0.0, "mask_time_prob": 0.0}}
    encoder = build_encoder(name, **kwargs).train()
    if checkpointing is not False:
        encoder.set_grad_checkpointing(True)
    if checkpointing is None:
        encoder.set_grad_checkpointing(False)
    blocks, calls = FIRST_IN_BLOCK[name](encoder), []
    for first in blocks:
        first.register_forward_pre_hook(lambda *_: calls.append(1))
    features, mask = encoder(**encoder.preprocess(_items(encoder)))
    forward_calls = len(calls)
    features[mask].square().mean().backward()
    grads = {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}
    return len(blocks), [forward_calls, len(calls) - forward_calls], grads


def test_every_encoder_either_checkpoints_or_refuses() -> None:
    assert sorted([*FIRST_IN_BLOCK, "fbank"]) == ENCODERS.names()


@pytest.mark.parametrize("name", sorted(FIRST_IN_BLOCK))
def test_grad_checkpointing_recomputes_every_block_with_the_same_gradients(name: str) -> None:
    n, calls_off, grads_off = _training_step(name, False)
    assert n == 2 and calls_off == [n, 0]  # without checkpointing each block runs once, in the forward pass
    _, calls_on, grads_on = _training_step(name, True)
    assert calls_on == [n, n]  # with it each block runs again in the backward pass: the recomputation
    _, calls_reset, _ = _training_step(name, None)
    assert calls_reset == [n, 0]  # set_grad_checkpointing(False) turns it off again
    assert grads_off.keys() == grads_on.keys() and len(grads_off) > 0
    for key in grads_off:
        torch.testing.assert_close(grads_on[key], grads_off[key], atol=1e-6, rtol=1e-5, msg=key)


def test_fbank_refuses_grad_checkpointing(encoders: dict[str, Encoder]) -> None:
    with pytest.raises(NotImplementedError, match="audio encoder FbankEncoder has no layers to recompute"):
        encoders["fbank"].set_grad_checkpointing(True)
    encoders["fbank"].set_grad_checkpointing(False)  # turning off what never runs is fine
