"""Quantised decoder base (``decoder.quantization``, QLoRA): bitsandbytes 4- and 8-bit on the CPU, LoRA adapters
trained in fp32 on top, saves that keep only what trains and load onto a quantised or an unquantised base, and
config errors before any weight loads."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from transformers import AutoConfig, AutoModelForCausalLM

import mmtransfer
from mmtransfer import extras
from mmtransfer.bundled import RECIPES
from mmtransfer.errors import ConfigError, MissingDependencyError
from mmtransfer.model import builder
from mmtransfer.model.precision import is_quantized
from mmtransfer.synthetic import write_all
from mmtransfer.train import load_train_config, train
from tests.runs import interrupt_then_resume
from tests.test_train import _losses, _overrides
from tests.tiny_models import DECODERS, IMAGE_ENCODER, TOKENIZER

needs_bnb = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None,
                               reason="bitsandbytes not installed (pip install 'mmtransfer[quantization]')")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama saved like a pretrained checkpoint (width 64: bitsandbytes packs 4-bit weights in blocks)."""
    cfg = dict(DECODERS["llama"]) | {"hidden_size": 64, "intermediate_size": 128}
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg))
    path = tmp_path_factory.mktemp("llama")
    model.save_pretrained(path)
    return path


def _config(llama_dir: Path, quantization: dict[str, Any] | None) -> dict[str, Any]:
    return {"decoder": {"model": str(llama_dir), "tokenizer": TOKENIZER, "quantization": quantization},
            "image_encoder": dict(IMAGE_ENCODER),  # random, so it trains (and saves) with the adapters
            "trainable": {"decoder": "lora", "image_encoder": "full"}}


def _batch(model: mmtransfer.MultimodalGPT, targets: bool = False) -> dict[str, Any]:
    return model.processor.from_prompts(["<image> what colour?"], targets=["red"] if targets else None,
                                        image=[Image.new("RGB", (32, 32), "red")])


def _step(model: mmtransfer.MultimodalGPT) -> None:
    """One AdamW step on a non-zero LoRA B so the adapters change the logits."""
    model.train()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(**_batch(model, targets=True)).loss.backward()
    opt.step()
    model.eval()


def _logits(model: mmtransfer.MultimodalGPT) -> torch.Tensor:
    with torch.no_grad():
        return model(**_batch(model)).logits


def _adapters(model: mmtransfer.MultimodalGPT) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _requantize(directory: Path, quantization: dict[str, Any] | None) -> None:
    config = json.loads((directory / "config.json").read_text())
    config["decoder"]["quantization"] = quantization
    (directory / "config.json").write_text(json.dumps(config))


@needs_bnb
@pytest.mark.parametrize("bits", [4, 8])
def test_lora_trains_on_a_quantized_base_and_reloads_it(llama_dir: Path, tmp_path: Path, bits: int) -> None:
    model = mmtransfer.build_model(_config(llama_dir, {"bits": bits}))
    layer = model.decoder.get_base_model().model.layers[0].mlp.up_proj.base_layer
    assert type(layer).__name__ == ("Linear4bit" if bits == 4 else "Linear8bitLt")
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    assert all("lora_" in n for n, p in model.decoder.named_parameters() if p.requires_grad)
    assert not any(p.requires_grad for n, p in model.decoder.named_parameters() if "lora_" not in n)
    before = _adapters(model)
    _step(model)
    after = _adapters(model)
    assert any(not torch.equal(before[n], after[n]) for n in before if "lora_A" in n)
    model.save_pretrained(str(tmp_path / "saved"))  # a quantised base always saves what trains only
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert saved["weights"] == "trainable" and saved["decoder"]["quantization"] == {"bits": bits}
    loaded = mmtransfer.load(tmp_path / "saved")
    assert is_quantized(loaded.decoder)
    assert torch.equal(_logits(loaded), _logits(model))


@needs_bnb
def test_adapters_saved_alone_load_onto_an_unquantized_base_and_back(llama_dir: Path, tmp_path: Path) -> None:
    """4-bit-trained adapters on the fp32 base give nearly the same logits; fp32-trained ones load onto 4 bits."""
    quantized = mmtransfer.build_model(_config(llama_dir, {"bits": 4}))
    _step(quantized)
    quantized.save_pretrained(str(tmp_path / "q"), trainable_only=True)
    _requantize(tmp_path / "q", None)
    plain = mmtransfer.load(tmp_path / "q")
    assert not is_quantized(plain.decoder)
    trained = _adapters(quantized)
    assert _adapters(plain).keys() == trained.keys()
    assert all(torch.equal(t, trained[n]) for n, t in _adapters(plain).items())
    torch.testing.assert_close(_logits(plain), _logits(quantized), atol=0.1, rtol=0)  # 4-bit rounding only

    plain.save_pretrained(str(tmp_path / "p"), trainable_only=True)
    _requantize(tmp_path / "p", {"bits": 4})
    requantized = mmtransfer.load(tmp_path / "p")
    assert is_quantized(requantized.decoder)
    assert torch.equal(_logits(requantized), _logits(quantized))


@needs_bnb
def test_gradient_checkpointing_on_a_quantized_base_gives_the_same_adapter_gradients(llama_dir: Path) -> None:
    """No ``prepare_model_for_kbit_training`` needed: with checkpointing the adapters get the same gradients, even
    when the decoder's inputs require none."""
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = mmtransfer.build_model(_config(llama_dir, {"bits": 4}))
        if checkpointing:
            model.enable_gradient_checkpointing()
        model.train()  # text only: nothing before the frozen base needs gradients
        model(**model.processor.from_prompts(["what colour?"], targets=["red"])).loss.backward()
        grads.append({n: p.grad for n, p in model.decoder.named_parameters() if p.requires_grad})
    assert grads[1].keys() == grads[0].keys() and all(g is not None for g in grads[1].values())
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, msg=name)


@pytest.mark.parametrize(("quantization", "match"), [
    ({"bits": 3}, r"decoder\.quantization\.bits: 3 is not supported; supported: 4, 8"),
    ({"bits": 4, "quant_type": "int4"}, r"quant_type: 'int4' is not supported; supported: nf4, fp4"),
    ({"bits": 4, "group": 64}, r"decoder\.quantization\.group: unknown key"),
    ({"bits": 4, "compute_dtype": "fp64"}, r"compute_dtype: 'fp64' is not a dtype"),
    ("4bit", r"decoder\.quantization: expected a mapping"),
])
def test_bad_quantization_fails_before_any_weight_loads(llama_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                        quantization: Any, match: str) -> None:
    monkeypatch.setattr(builder, "load_decoder", lambda *a: pytest.fail("weights loaded before the check"))
    with pytest.raises(ConfigError, match=match):
        mmtransfer.build_model(_config(llama_dir, quantization))


def test_quantization_needs_pretrained_weights_and_bitsandbytes(llama_dir: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builder, "load_decoder", lambda *a: pytest.fail("weights loaded before the check"))
    cfg = _config(llama_dir, {"bits": 4})
    cfg["decoder"]["pretrained"] = False
    with pytest.raises(ConfigError, match=r"decoder\.quantization: needs pretrained weights"):
        mmtransfer.build_model(cfg)
    real = importlib.util.find_spec
    monkeypatch.setattr(extras.importlib.util, "find_spec", lambda m: None if m == "bitsandbytes" else real(m))
    with pytest.raises(MissingDependencyError, match=r"pip install 'mmtransfer\[quantization\]'"):
        mmtransfer.build_model(_config(llama_dir, {"bits": 4}))


@needs_bnb
def test_a_qlora_run_trains_checkpoints_and_resumes_exactly(llama_dir: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """captioning-tiny on the 4-bit Llama with LoRA: an interrupted run resumes from its (adapters-only)
    checkpoint with the same losses, and ``final/`` opens with a quantised base."""
    data = write_all(tmp_path / "data", n_train=16, n_test=4)
    path = RECIPES / "captioning-tiny.yaml"
    model = [f"model.decoder.model={llama_dir}", "model.decoder.config=null", "model.decoder.pretrained=true",
             "model.decoder.quantization={bits: 4}", "model.trainable.decoder=lora", "batch_size=4", "save_every=2",
             "data.0.eval=null"]
    train(load_train_config(path, _overrides(path, data, tmp_path / "a", 4) + model))
    cfg = load_train_config(path, _overrides(path, data, tmp_path / "b", 4) + model)
    interrupt_then_resume(cfg, monkeypatch, at_batch=4)  # during step 4: after the step-2 checkpoint
    assert dict(_losses(tmp_path / "b")) == dict(_losses(tmp_path / "a"))
    assert is_quantized(mmtransfer.load(tmp_path / "b" / "final").decoder)
