"""save_pretrained / load: exact round trips, adapter-only saves, clear errors, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import mmtransfer
from mmtransfer.config import ConfigError
from tests.tiny_models import decoder_config, tiny_model_config


def _batch(model: mmtransfer.MultimodalGPT) -> dict:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    clip = (rng.standard_normal(6000) * 0.1).astype(np.float32)
    return model.processor.from_prompts(["<image><audio> describe"], targets=[" a thing"], image=[image], audio=[clip],
                           sample_rate=16000)


@pytest.mark.parametrize("policy", ["frozen", "lora"])
def test_save_load_gives_identical_logits(tmp_path: Path, decoder_arch: str, policy: str) -> None:
    model = mmtransfer.build_model(tiny_model_config(decoder_arch, trainable={"decoder": policy})).eval()
    batch = _batch(model)
    before = model(**batch)
    model.save_pretrained(tmp_path / "m")
    assert {p.name for p in (tmp_path / "m").iterdir()} >= {"config.json", "model.safetensors", "README.md"}
    loaded = mmtransfer.load(tmp_path / "m")
    after = loaded(**_batch(loaded))
    assert torch.equal(before.logits, after.logits) and torch.equal(before.loss, after.loss)
    assert loaded.caption(Image.new("RGB", (32, 32)), max_new_tokens=4) == model.caption(
        Image.new("RGB", (32, 32)), max_new_tokens=4)


def test_full_save_needs_no_original_sources(tmp_path: Path) -> None:
    """The saved config rebuilds every part offline: encoders say pretrained=False, the decoder has its config."""
    model = mmtransfer.build_model(tiny_model_config())
    model.save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["decoder"]["pretrained"] is False and cfg["decoder"]["config"]["model_type"] == "gpt2"
    assert cfg["image_encoder"]["pretrained"] is False


def _local_decoder(tmp_path: Path) -> dict:
    """A 'pretrained' tiny decoder saved as a standard HF directory, as a hub download would be."""
    model = mmtransfer.build_model({"decoder": decoder_config("llama")})
    model.decoder.save_pretrained(tmp_path / "hf-decoder")
    model.tokenizer.save_pretrained(tmp_path / "hf-decoder")
    return {"model": str(tmp_path / "hf-decoder"), "pretrained": True}


def test_trainable_only_save_restores_base_from_its_source(tmp_path: Path) -> None:
    cfg = {"decoder": _local_decoder(tmp_path), "labels": ["no", "yes"], "classifier": "head",
           "trainable": {"decoder": "lora", "lora": {"r": 2}}}
    model = mmtransfer.build_model(cfg).eval()
    with torch.no_grad():  # make the adapters non-trivial (peft initialises B to zero)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    model.save_pretrained(tmp_path / "adapter", trainable_only=True)
    saved = load_file(tmp_path / "adapter" / "model.safetensors")
    assert saved and all("lora_" in k or k.startswith("head.") for k in saved)
    batch = model.processor.tokenize(["is this good?"])
    loaded = mmtransfer.load(tmp_path / "adapter")
    assert torch.equal(model(**batch).logits, loaded(**batch).logits)


def test_mismatched_tensors_fail_clearly(tmp_path: Path) -> None:
    model = mmtransfer.build_model(tiny_model_config())
    model.save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    tensors = load_file(weights)
    key = next(k for k in tensors if k.startswith("projectors."))
    tensors[key] = torch.zeros(3, 3)
    save_file(tensors, weights)
    with pytest.raises(ConfigError, match="does not match its config"):
        mmtransfer.load(tmp_path / "m")
    weights.write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match="cannot read weights"):
        mmtransfer.load(tmp_path / "m")


def test_bad_config_names_file_and_field(tmp_path: Path) -> None:
    model = mmtransfer.build_model(tiny_model_config())
    model.save_pretrained(tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    cfg = json.loads(path.read_text())
    cfg["decoder"]["modle"] = "typo"
    path.write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=r"config.json: decoder.modle: unknown key; did you mean .model.?"):
        mmtransfer.load(tmp_path / "m")
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        mmtransfer.load(tmp_path / "m")


def test_failed_save_leaves_the_previous_save_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = mmtransfer.build_model(tiny_model_config())
    model.save_pretrained(tmp_path / "m")
    before = (tmp_path / "m" / "model.safetensors").read_bytes()

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(model.tokenizer, "save_pretrained", boom)
    with torch.no_grad():
        next(model.projectors.parameters()).add_(1)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary directory left behind
