"""Storage dtypes per component (``decoder.dtype``, an encoder's ``dtype``): frozen parts in half precision,
trained parts in fp32; saves keep them; bad values are ConfigErrors before any weight loads; the decoder
loads straight into its dtype with the configured attention implementation and device map."""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from transformers import AutoConfig, AutoModelForCausalLM

import mmtransfer
from mmtransfer.bundled import RECIPES
from mmtransfer.config import ConfigError
from mmtransfer.model import builder
from mmtransfer.synthetic import write_all
from mmtransfer.train import load_train_config, train
from tests.test_train import _overrides
from tests.tiny_models import DECODERS, TOKENIZER, tiny_model_config


def _dtypes(model: torch.nn.Module) -> dict[str, torch.dtype]:
    return {n: t.dtype for n, t in model.state_dict().items()}


def _kinds(model: mmtransfer.MultimodalGPT, part: str) -> Counter:
    """(dtype, trains) -> count of ``part``'s parameters."""
    return Counter((p.dtype, p.requires_grad) for n, p in model.named_parameters() if n.startswith(part))


def _batch(model: mmtransfer.MultimodalGPT) -> dict[str, Any]:
    red = [Image.new("RGB", (32, 32), "red")]
    return model.processor.from_prompts(["<image> what colour?"], image=red)


def test_a_bf16_frozen_decoder_saves_and_loads_with_its_dtypes_and_outputs(tmp_path: Path) -> None:
    cfg = tiny_model_config("llama", audio_encoder=None, audio_projector=None)
    cfg["decoder"] |= {"dtype": "bf16"}
    cfg["image_encoder"] |= {"dtype": "fp16"}
    model = mmtransfer.build_model(cfg).eval()
    assert set(_kinds(model, "decoder.")) == {(torch.bfloat16, False)}
    assert set(_kinds(model, "encoders.image.")) == {(torch.float16, False)}
    assert set(_kinds(model, "projectors.")) == {(torch.float32, True)}
    model.save_pretrained(str(tmp_path / "saved"))
    loaded = mmtransfer.load(tmp_path / "saved")
    assert _dtypes(loaded) == _dtypes(model)
    batch = _batch(model)
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)


@pytest.mark.parametrize(("policy", "frozen_dtype"), [("lora", torch.bfloat16), ("full", None), ("last:1", None)])
def test_what_trains_keeps_fp32_master_weights(policy: str, frozen_dtype: torch.dtype | None) -> None:
    """LoRA: the frozen base in bf16, the adapters in fp32; a decoder that trains (in full or in part) in fp32."""
    cfg = tiny_model_config("gpt2", audio_encoder=None, audio_projector=None, trainable={"decoder": policy})
    cfg["decoder"] |= {"dtype": "bf16"}
    kinds = _kinds(mmtransfer.build_model(cfg), "decoder.")
    assert (torch.float32, True) in kinds
    assert {d for d, trains in kinds if trains} == {torch.float32}
    assert {d for d, trains in kinds if not trains} <= {frozen_dtype or torch.float32}
    assert policy == "full" or {d for d, trains in kinds if not trains}  # LoRA and last:1 freeze some


@pytest.mark.parametrize(("where", "value", "field"), [
    ("decoder", "float64", "decoder.dtype"),
    ("decoder", "bfloat16", "decoder.dtype"),
    ("image_encoder", "half", "image_encoder.dtype"),
])
def test_an_unsupported_dtype_is_a_config_error_before_any_weight_loads(
    where: str, value: str, field: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("weights were loaded before the config was checked")

    monkeypatch.setattr(builder, "load_decoder", never)
    monkeypatch.setattr(builder, "build_encoder", never)
    cfg = tiny_model_config("gpt2")
    cfg[where] = cfg[where] | {"dtype": value}
    with pytest.raises(ConfigError, match=rf"^{field}: '{value}' is not a dtype; supported: auto, fp32, bf16, fp16"):
        mmtransfer.build_model(cfg)


def test_a_bad_attention_implementation_is_a_config_error_before_any_weight_loads(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(builder, "load_decoder", lambda *a, **k: pytest.fail("weights loaded"))
    cfg = tiny_model_config("gpt2")
    cfg["decoder"] |= {"attn_implementation": "flash"}
    with pytest.raises(ConfigError, match="decoder.attn_implementation: 'flash' is not supported; supported: sdpa"):
        mmtransfer.build_model(cfg)
    if importlib.util.find_spec("flash_attn") is None:
        cfg["decoder"] |= {"attn_implementation": "flash_attention_2"}
        with pytest.raises(ConfigError, match="'flash_attention_2' needs the flash_attn package"):
            mmtransfer.build_model(cfg)


def test_a_pretrained_decoder_loads_straight_into_its_dtype(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bf16 checkpoint with ``dtype: bf16``: from_pretrained gets dtype, attention and device map, and no fp32
    copy is made; with ``auto`` (fp32) the same checkpoint is upcast."""
    hf = dict(DECODERS["llama"])
    AutoModelForCausalLM.from_config(AutoConfig.for_model(hf.pop("model_type"), **hf), dtype=torch.bfloat16) \
        .save_pretrained(tmp_path / "lm")
    calls: list[dict[str, Any]] = []
    real = AutoModelForCausalLM.from_pretrained

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    dec = {"model": str(tmp_path / "lm"), "tokenizer": TOKENIZER, "dtype": "bf16", "attn_implementation": "eager",
           "device_map": "cpu"}
    model = mmtransfer.build_model({"decoder": dec})
    assert calls == [{"dtype": torch.bfloat16, "attn_implementation": "eager", "device_map": "cpu"}]
    assert set(_kinds(model, "decoder.")) == {(torch.bfloat16, False)}
    assert model.decoder.config._attn_implementation == "eager"
    model = mmtransfer.build_model({"decoder": dec | {"dtype": "auto", "attn_implementation": None}})
    assert calls[-1] == {"dtype": torch.float32, "device_map": "cpu"}
    assert set(_kinds(model, "decoder.")) == {(torch.float32, False)}


@pytest.mark.filterwarnings("ignore:precision bf16 on cpu:UserWarning")
def test_training_with_a_bf16_frozen_base_saves_its_dtypes(tmp_path: Path) -> None:
    """Probe on a bf16 frozen decoder, then LoRA on it (bf16 autocast): the final save keeps the bf16 base and
    the fp32 adapters and head, and loads back with them."""
    synthetic = write_all(tmp_path / "synthetic", n_train=8, n_test=2)
    path = RECIPES / "classification-tiny.yaml"
    args = _overrides(path, synthetic, tmp_path / "run", 4) + ["model.decoder.dtype=bf16", "precision=bf16",
                                                               "batch_size=4", "data.0.eval=null"]
    train(load_train_config(path, args))
    model = mmtransfer.load(tmp_path / "run" / "final")
    kinds = _kinds(model, "decoder.")
    assert {d for d, trains in kinds if not trains} == {torch.bfloat16}
    assert {d for d, trains in kinds if trains} == {torch.float32}
    assert model.head.weight.dtype == torch.float32
    assert all(torch.isfinite(p.float()).all() for p in model.parameters())
