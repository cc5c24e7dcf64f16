"""``export --format hf``: a LLaVA-style model -> a folder transformers opens on its own, with the same logits and
greedy output; parts LLaVA cannot hold are refused before anything is written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor

import mmtransfer
from mmtransfer import cli
from mmtransfer.errors import ConfigError
from mmtransfer.export import export
from mmtransfer.export import hf as export_hf
from tests.tiny import TINY_ENCODER_KWARGS
from tests.tiny_models import CHATML, chatml_model_config, tiny_model_config

TOL = 1e-5
OPEN_CLIP = {"name": "open_clip", **TINY_ENCODER_KWARGS["open_clip"]}
OPEN_CLIP_TOKENS = {**OPEN_CLIP, "vision_cfg": {**OPEN_CLIP["vision_cfg"], "final_ln_after_pool": True}}
TIMM_CNN = {"name": "timm", "model_name": "test_resnet", "pretrained": False,
            "data_config": {"input_size": [3, 64, 64]}}  # stride 32: 2 x 2 tokens
VIT = tiny_model_config()["image_encoder"]


def image_config(arch: str = "gpt2", **overrides: Any) -> dict[str, Any]:
    """The tiny image model (ViT + MLP) without the audio encoder."""
    cfg = tiny_model_config(arch, **overrides)
    cfg.pop("audio_encoder"), cfg.pop("audio_projector")
    return cfg


def images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (40 + 7 * i, 50, 3), dtype=np.uint8)) for i in range(n)]


def conversations(pictures: list[Image.Image]) -> list[list[dict[str, Any]]]:
    """One user turn per image, of different lengths (so a batch is left-padded)."""
    texts = ["What is in it?", "Describe the picture in a few words please.", "Colour?"]
    return [[{"role": "user", "content": [{"type": "image", "image": img}, {"type": "text", "text": texts[i % 3]}]}]
            for i, img in enumerate(pictures)]


def llava_inputs(batch: dict[str, Any], image_id: int, count: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Our batch (one placeholder per image) -> LLaVA's ids with ``count`` image tokens per image, left-padded,
    and position ids from the mask, as ours."""
    rows = [[t for x in ids[mask.bool()].tolist() for t in ([x] * count if x == image_id else [x])]
            for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id)
    attention_mask = torch.zeros_like(input_ids)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row):], attention_mask[i, width - len(row):] = torch.tensor(row), 1
    return {"input_ids": input_ids, "attention_mask": attention_mask,
            "position_ids": (attention_mask.cumsum(1) - 1).clamp(min=0)}


def max_logit_diff(model: mmtransfer.MultimodalGPT, loaded: Any, n_images: int) -> float:
    """Max |logit difference| over the decoder's vocabulary at every real position of a batch of ``n_images``."""
    batch = model.processor(conversations(images(n_images)), add_generation_prompt=True)
    cfg = loaded.config
    inputs = llava_inputs(batch, cfg.image_token_id, cfg.image_seq_length, model.tokenizer.pad_token_id)
    with torch.no_grad():
        ours = model(batch["input_ids"], batch["attention_mask"], image=batch["image"]).logits
        theirs = loaded(**inputs, pixel_values=batch["image"]["pixel_values"]).logits[..., : ours.shape[-1]]
    real = inputs["attention_mask"].bool()
    assert ours.shape == theirs.shape
    return (ours[real] - theirs[real]).abs().max().item()


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Path]:
    """(our model, the transformers model loaded from its export, the folder) for each decoder."""
    torch.manual_seed(0)
    model = mmtransfer.build_model(image_config(request.param)).eval()
    out = export(model, tmp_path_factory.mktemp(request.param) / "hf")
    return model, AutoModelForImageTextToText.from_pretrained(out).eval(), out


def test_export_is_llava_with_the_same_logits(exported: tuple[Any, Any, Path]) -> None:
    model, loaded, out = exported
    assert type(loaded).__name__ == "LlavaForConditionalGeneration"
    assert loaded.config.vision_config.model_type == "vit"
    assert loaded.config.image_seq_length == 16  # 32 x 32 pixels, 8 x 8 patches; the class token dropped
    assert max_logit_diff(model, loaded, 1) < TOL
    assert max_logit_diff(model, loaded, 3) < TOL  # batched, left-padded


def test_export_generates_the_same_greedy_text(exported: tuple[Any, Any, Path]) -> None:
    model, loaded, _ = exported
    convs = conversations(images(2))
    ours_batched = model.chat(convs, max_new_tokens=8)
    assert ours_batched == [model.chat(c, max_new_tokens=8) for c in convs]
    assert any(ours_batched)  # not all empty: the comparison below means something
    cfg = loaded.config
    for rows in (convs, *[[c] for c in convs]):  # batched, then one at a time
        batch = model.processor(rows, add_generation_prompt=True)
        inputs = llava_inputs(batch, cfg.image_token_id, cfg.image_seq_length, model.tokenizer.pad_token_id)
        inputs.pop("position_ids")  # generate derives them from the mask, as ours
        out = loaded.generate(**inputs, pixel_values=batch["image"]["pixel_values"], max_new_tokens=8,
                              do_sample=False)
        texts = [t.strip() for t in model.tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:],
                                                                 skip_special_tokens=True)]
        assert texts == [ours_batched[convs.index(c)] for c in rows]


def test_processor_gives_our_pixels_and_image_tokens(exported: tuple[Any, Any, Path]) -> None:
    model, loaded, out = exported
    processor = AutoProcessor.from_pretrained(out)
    picture = images(2)[1]
    prompt = "Describe the picture in a few words please."
    inputs = processor(images=[picture], text=[f"<image>{prompt}"], return_tensors="pt")
    assert torch.equal(inputs["pixel_values"], model.encoders["image"].preprocess([picture])["pixel_values"])
    batch = model.processor(conversations([picture, picture])[1:], add_generation_prompt=True)
    cfg = loaded.config
    expected = llava_inputs(batch, cfg.image_token_id, cfg.image_seq_length, model.tokenizer.pad_token_id)
    assert inputs["input_ids"].tolist() == expected["input_ids"].tolist()
    generated = loaded.generate(**inputs, max_new_tokens=8, do_sample=False)[:, inputs["input_ids"].shape[1]:]
    assert processor.batch_decode(generated, skip_special_tokens=True)[0].strip() == model.chat(
        conversations([picture, picture])[1], max_new_tokens=8)


def _prompted_like_any_hf_model(model: mmtransfer.MultimodalGPT, out: Path) -> None:
    """The standard content parts through the export's chat template and processor give our ids and our answer."""
    processor = AutoProcessor.from_pretrained(out)
    loaded = AutoModelForImageTextToText.from_pretrained(out).eval()
    picture = images(2)[1]
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": "Describe the picture in a few words please."}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    inputs = processor(images=[picture], text=[prompt], return_tensors="pt")
    ours = [conversation[0], {"role": "user", "content": [{"type": "image", "image": picture},
                                                          conversation[1]["content"][1]]}]
    batch = model.processor([ours], add_generation_prompt=True)
    cfg = loaded.config
    expected = llava_inputs(batch, cfg.image_token_id, cfg.image_seq_length, model.tokenizer.pad_token_id)
    assert inputs["input_ids"].tolist() == expected["input_ids"].tolist()
    generated = loaded.generate(**inputs, max_new_tokens=8, do_sample=False)[:, inputs["input_ids"].shape[1]:]
    assert processor.batch_decode(generated, skip_special_tokens=True)[0].strip() == model.chat(
        ours, max_new_tokens=8)
    assert processor.apply_chat_template([{"role": "user", "content": "hi"}]) == processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": "hi"}]}])  # string content still renders


def test_the_export_takes_standard_content_parts(exported: tuple[Any, Any, Path]) -> None:
    model, _, out = exported  # our plain template
    _prompted_like_any_hf_model(model, out)


def test_the_export_keeps_a_jinja_chat_template(tmp_path: Path) -> None:
    """SmolLM2-Instruct's ChatML template, behind the preamble that turns content parts into strings."""
    torch.manual_seed(0)
    cfg = chatml_model_config(tmp_path / "tok", "llama")
    cfg.pop("audio_encoder"), cfg.pop("audio_projector")
    model = mmtransfer.build_model(cfg).eval()
    assert model.processor.template == CHATML
    _prompted_like_any_hf_model(model, export(model, tmp_path / "hf"))


def test_placeholder_rows_are_zero_and_suppressed(exported: tuple[Any, Any, Path]) -> None:
    model, loaded, _ = exported
    own = model.decoder.get_input_embeddings().num_embeddings
    assert loaded.config.text_config.vocab_size == len(model.tokenizer) > own
    assert not loaded.lm_head.weight[own:].any() and not loaded.get_input_embeddings().weight[own:].any()
    assert loaded.generation_config.suppress_tokens == list(range(own, len(model.tokenizer)))


def test_lora_is_merged_and_the_model_keeps_its_adapters(tmp_path: Path) -> None:
    model = mmtransfer.build_model(image_config("llama", trainable={"decoder": "lora"})).eval()
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)  # peft starts B at zero: a merge would change nothing
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = export(model, tmp_path / "hf")
    loaded = AutoModelForImageTextToText.from_pretrained(out).eval()
    assert not any("lora" in k for k in loaded.state_dict())
    assert max_logit_diff(model, loaded, 2) < TOL
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(v, after[k]) for k, v in before.items())


def test_a_decoder_stored_in_bf16_exports_in_float32(tmp_path: Path) -> None:
    model = mmtransfer.build_model(image_config("llama")).eval()
    model.decoder.to(torch.bfloat16)  # frozen parts may be stored in half precision; the projector stays fp32
    out = export(model, tmp_path / "hf")  # its check allows for the half-precision decoder's rounding
    assert {t.dtype for t in load_file(out / "model.safetensors").values()} == {torch.float32}
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"


@pytest.mark.parametrize("encoder,projector,vision,cls", [
    (VIT, {"name": "linear"}, "vit", "LlavaForConditionalGeneration"),
    (OPEN_CLIP_TOKENS, {"name": "mlp"}, "clip_vision_model", "LlavaForConditionalGeneration"),
    (TIMM_CNN, {"name": "mlp"}, "timm_wrapper", "FastVlmForConditionalGeneration"),
])
def test_other_towers_and_projectors_export(
    tmp_path: Path, encoder: dict[str, Any], projector: dict[str, Any], vision: str, cls: str
) -> None:
    model = mmtransfer.build_model(image_config("gpt2", image_encoder=encoder, image_projector=projector)).eval()
    out = export(model, tmp_path / "hf")
    loaded = AutoModelForImageTextToText.from_pretrained(out).eval()
    assert type(loaded).__name__ == cls and loaded.config.vision_config.model_type == vision
    assert max_logit_diff(model, loaded, 2) < TOL
    picture = images(1)[0]
    inputs = AutoProcessor.from_pretrained(out)(images=[picture], text=["<image>hi"], return_tensors="pt")
    assert torch.equal(inputs["pixel_values"], model.encoders["image"].preprocess([picture])["pixel_values"])
    assert int((inputs["input_ids"] == loaded.config.image_token_id).sum()) == loaded.config.image_seq_length


REFUSED = {
    "audio encoder": (tiny_model_config(), "audio_encoder: 'fbank'"),
    "resampler": (image_config(image_projector={"name": "resampler", "num_queries": 4}),
                  "image_projector: 'resampler'"),
    "pixel shuffle": (image_config(image_projector={"name": "pixel_shuffle", "factor": 2}),
                      "image_projector: 'pixel_shuffle' has no transformers equivalent: Idefics3's connector"),
    "clipcap mapper": (image_config(image_projector={"name": "transformer", "prefix_len": 4}),
                       "image_projector: 'transformer'"),
    "narrow mlp": (image_config(image_projector={"name": "mlp", "hidden_dim": 48}),
                   "image_projector: 'mlp' has hidden"),
    "head": (image_config(classifier="head", labels=["a", "b"]), "classifier: 'head'"),
    "ln_post tokens": (image_config(image_encoder=OPEN_CLIP), "image_encoder: OpenCLIP 'ViT-B-32': ln_post"),
    "register tokens": (image_config(image_encoder={**VIT, "model_kwargs": {**VIT["model_kwargs"], "reg_tokens": 2}}),
                        "image_encoder: timm 'vit_tiny_patch16_224': has 3 prefix tokens"),
    "pre-norm": (image_config(image_encoder={**VIT, "model_kwargs": {**VIT["model_kwargs"], "pre_norm": True}}),
                 "image_encoder: timm 'vit_tiny_patch16_224': has weights ViTModel cannot hold: norm_pre.weight"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_unmappable_parts_are_refused_before_writing(tmp_path: Path, case: str) -> None:
    config, message = REFUSED[case]
    model = mmtransfer.build_model(config)
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "old.txt").write_text("kept")
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(")):
        export(model, tmp_path / "hf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]
    assert [p.name for p in (tmp_path / "hf").iterdir()] == ["old.txt"]


def test_an_export_that_does_not_reproduce_the_model_leaves_nothing(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    model = mmtransfer.build_model(image_config())
    real = export_hf._projector_state

    def shifted(m: mmtransfer.MultimodalGPT) -> dict[str, torch.Tensor]:
        return {k: v + 0.01 if k == "linear_2.bias" else v for k, v in real(m).items()}

    monkeypatch.setattr(export_hf, "_projector_state", shifted)
    with pytest.raises(ConfigError, match="^image_encoder: the exported model does not reproduce"):
        export(model, tmp_path / "hf")
    assert list(tmp_path.iterdir()) == []


def test_unknown_format_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="format: 'onnx'"):
        export(mmtransfer.build_model(image_config()), tmp_path / "x", format="onnx")


def test_cli_exports_a_checkpoint_and_refuses_in_one_line(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    model = mmtransfer.build_model(image_config()).eval()
    model.save_pretrained(str(tmp_path / "ckpt"))
    assert cli.main(["export", str(tmp_path / "ckpt"), str(tmp_path / "hf"), "--format", "hf"]) == 0
    assert "LlavaForConditionalGeneration" in capsys.readouterr().out
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "hf").eval()
    assert max_logit_diff(model, loaded, 2) < TOL
    mmtransfer.build_model(tiny_model_config()).save_pretrained(str(tmp_path / "audio"))
    capsys.readouterr()
    assert cli.main(["export", str(tmp_path / "audio"), str(tmp_path / "hf2")]) == 2
    assert capsys.readouterr().err.startswith("mmtransfer: error: audio_encoder: 'fbank'")
    assert not (tmp_path / "hf2").exists()
