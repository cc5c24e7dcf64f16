"""MultimodalGPT on tiny GPT-2 and Llama decoders: loss masking, trainable policies, both architectures."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import mmtransfer
from mmtransfer.errors import InputError
from mmtransfer.model.splice import IGNORE_INDEX
from mmtransfer.trainable import count_parameters, layer_stack
from tests.tiny_models import tiny_model_config


def _image(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))


def _audio(seconds: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(int(16000 * seconds)).astype(np.float32) * 0.1


def test_loss_is_taken_on_target_tokens_only(tiny_model: mmtransfer.MultimodalGPT) -> None:
    batch = tiny_model.processor.from_prompts(
        ["<image>Question: colour?", "Q:"], targets=[" red", " a blue square"], image=[_image(0), _image(1)]
    )
    out = tiny_model(**batch)
    embeds, mask, pos, labels = tiny_model.embed(batch["input_ids"], batch["attention_mask"], batch["labels"],
                                                 image=batch["image"])
    n_prefix = tiny_model.encode("image", batch["image"])[0].shape[1]
    target_ids = [tiny_model.tokenizer(t, add_special_tokens=False).input_ids for t in [" red", " a blue square"]]
    eos = tiny_model.tokenizer.eos_token_id
    for row, ids in enumerate(target_ids):  # labels hold exactly the target + EOS, at the end of each row
        kept = labels[row][labels[row] != IGNORE_INDEX].tolist()
        assert kept == ids + [eos]
    assert mask.shape[1] == batch["input_ids"].shape[1] - 1 + n_prefix
    full = tiny_model(batch["input_ids"], batch["attention_mask"], image=batch["image"]).logits  # no labels
    assert full.shape[1] == labels.shape[1] and out.logits.shape[1] < full.shape[1]  # the LM head skips the prefix
    assert torch.allclose(out.logits, full[:, -out.logits.shape[1]:], atol=1e-5)
    logits = full[:, :-1].reshape(-1, full.shape[-1])
    manual = torch.nn.functional.cross_entropy(logits, labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)
    assert torch.allclose(out.loss, manual, atol=1e-6)


def test_prompt_tokens_do_not_change_the_loss_denominator(tiny_model: mmtransfer.MultimodalGPT) -> None:
    short = tiny_model.processor.from_prompts(["x"], targets=[" red"], image=[_image(0)])
    long = tiny_model.processor.from_prompts(["x y z w v"], targets=[" red"], image=[_image(0)])
    assert (short["labels"] != IGNORE_INDEX).sum() == (long["labels"] != IGNORE_INDEX).sum()


def test_from_prompts_takes_media_by_modality_name_and_refuses_others(tiny_model: mmtransfer.MultimodalGPT) -> None:
    proc = tiny_model.processor
    batch = proc.from_prompts(["<image> a", "<image> b"], image=[_image(0), _image(1)], audio=None)
    assert batch["image"]["pixel_values"].shape[0] == 2 and "audio" not in batch
    with pytest.raises(InputError, match="no modality 'images'; known: image, audio, video$"):
        proc.from_prompts(["<image> a"], images=[_image(0)])
    with pytest.raises(InputError, match="no modality 'images'"):
        proc.from_prompts(["a"], images=None)
    with pytest.raises(InputError, match="got 1 image inputs for 2 prompts"):
        proc.from_prompts(["a", "b"], image=[_image(0)])


def test_text_only_and_audio_only_inputs(tiny_model: mmtransfer.MultimodalGPT) -> None:
    text = tiny_model.processor.from_prompts(["hello there"], targets=[" world"])
    assert torch.isfinite(tiny_model(**text).loss)
    audio = tiny_model.processor.from_prompts([""], targets=[" one"], audio=[_audio(0.5, 0)])
    assert torch.isfinite(tiny_model(**audio).loss)


def test_placeholder_without_input_is_an_error(tiny_model: mmtransfer.MultimodalGPT) -> None:
    with pytest.raises(ValueError, match="no image input"):
        tiny_model.processor.from_prompts(["<image> what?"])


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_trainable_policies(arch: str) -> None:
    cfg = tiny_model_config(arch)
    frozen = mmtransfer.build_model(cfg)
    trainable, total = count_parameters(frozen)
    assert trainable == sum(p.numel() for p in frozen.projectors.parameters())

    cfg["trainable"] = {"decoder": "last:1", "image_encoder": "full"}
    last = mmtransfer.build_model(cfg)
    layers = layer_stack(last.decoder)
    assert len(layers) == 2
    assert all(p.requires_grad for p in layers[1].parameters())
    assert not any(p.requires_grad for p in layers[0].parameters())
    assert all(p.requires_grad for p in last.encoders["image"].parameters())
    assert not any(p.requires_grad for p in last.encoders["audio"].parameters())

    cfg["trainable"] = {"decoder": "lora", "lora": {"r": 2}}
    lora = mmtransfer.build_model(cfg)
    names = [n for n, p in lora.decoder.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert count_parameters(lora)[1] > total


def test_frozen_encoders_stay_in_eval_mode(tiny_model: mmtransfer.MultimodalGPT) -> None:
    tiny_model.train()
    assert not tiny_model.encoders["image"].training
    assert tiny_model.projectors["image"].training and tiny_model.decoder.training


def test_bad_policy_names_the_field() -> None:
    with pytest.raises(ValueError, match="trainable.decoder"):
        mmtransfer.build_model(tiny_model_config(trainable={"decoder": "some"}))
    with pytest.raises(ValueError, match="trainable.image_encoder"):
        mmtransfer.build_model(tiny_model_config(trainable={"image_encoder": "lora"}))


def test_classification_head_uses_last_real_token(decoder_arch: str) -> None:
    model = mmtransfer.build_model(
        {"decoder": tiny_model_config(decoder_arch)["decoder"], "labels": ["neg", "pos"], "classifier": "head"}
    ).eval()
    batch = model.processor.tokenize(["good film", "a truly terrible film"])
    out = model(**batch, class_labels=torch.tensor([1, 0]))
    assert out.logits.shape == (2, 2) and torch.isfinite(out.loss)
    single = model(**model.processor.tokenize(["good film"])).logits
    assert torch.allclose(out.logits[0], single[0], atol=1e-5)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_lora_knows_the_decoders_weight_layout(arch: str) -> None:
    """GPT-2 stores projections transposed (``Conv1D``); merged LoRA weights must equal the adapters' output."""
    torch.manual_seed(0)
    cfg = tiny_model_config(arch, trainable={"decoder": "lora", "lora": {"r": 2}})
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*fan_in_fan_out.*")
        model = mmtransfer.build_model(cfg)
    assert model.decoder.peft_config["default"].fan_in_fan_out == (arch == "gpt2")
    for name, p in model.decoder.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p)  # adapters start as a no-op; give them an effect to merge
    model.eval()
    ids = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        adapted = model.decoder(input_ids=ids).logits
        merged = model.decoder.merge_and_unload()(input_ids=ids).logits
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=1e-5)


def test_lora_adapters_frozen_by_one_stage_train_again_in_a_later_lora_stage() -> None:
    from mmtransfer.config import TrainableConfig

    model = mmtransfer.build_model(tiny_model_config(trainable={"decoder": "lora"}))
    lora = {n for n, p in model.decoder.named_parameters() if p.requires_grad}
    assert lora and all("lora_" in n for n in lora)
    model.set_trainable(TrainableConfig(decoder="frozen"))
    assert not any(p.requires_grad for p in model.decoder.parameters())
    model.set_trainable(TrainableConfig(decoder="lora"))
    assert {n for n, p in model.decoder.named_parameters() if p.requires_grad} == lora


def test_building_and_loading_a_lora_model_warns_nothing(tmp_path) -> None:
    """peft reads transformers' deprecated ``is_gradient_checkpointing``; users should not see that on every load."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        mmtransfer.build_model(tiny_model_config(trainable={"decoder": "lora"})).save_pretrained(tmp_path / "m")
        mmtransfer.load(tmp_path / "m")
    assert not [w for w in seen if issubclass(w.category, FutureWarning)], [str(w.message) for w in seen]
