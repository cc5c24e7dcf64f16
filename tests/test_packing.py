"""Sequence packing: a packed batch gives every sample the loss it has alone (fp32, GPT-2 and Llama tiny
decoders, image + audio + text-only samples in one batch), positions restart per sample, attention stays
inside each sample, a short run with ``packing: true`` trains, and bad settings are named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import mmtransfer
from mmtransfer.bundled import RECIPES
from mmtransfer.config import ConfigError
from mmtransfer.data import MODEL_INPUTS, Collator
from mmtransfer.model.splice import IGNORE_INDEX
from mmtransfer.packing import pack, plan_rows
from mmtransfer.synthetic import write_all
from mmtransfer.train import load_train_config, train
from tests.tiny_models import TOKENIZER, VOCAB, tiny_model_config

RATE = 16000


def _conversations(seed: int = 0, image_seed: int | None = None) -> list[list[dict[str, Any]]]:
    """Six samples of different lengths: image, audio, image + audio, and text-only ones."""
    rng = np.random.default_rng(seed)
    img_rng = np.random.default_rng(seed if image_seed is None else image_seed)

    def image() -> Image.Image:
        return Image.fromarray(img_rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))

    def clip(seconds: float) -> dict[str, Any]:
        return {"type": "audio", "audio": (rng.standard_normal(int(RATE * seconds)) * 0.1).astype(np.float32),
                "sample_rate": RATE}

    def turn(content: Any, answer: str) -> list[dict[str, Any]]:
        return [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]

    return [
        turn([{"type": "image", "image": image()}, {"type": "text", "text": "what is this?"}], "a red square"),
        turn("hello there, how are you today?", "fine"),
        turn([clip(1.0), {"type": "text", "text": "which digits?"}], "one two three"),
        turn("hi", "a much longer answer with quite a few words in it"),
        turn([{"type": "image", "image": image()}, clip(0.5)], "blue; four"),
        turn("positive or negative: a fine film", "positive"),
    ]


def _batch(model: mmtransfer.MultimodalGPT, conversations: list[Any]) -> dict[str, Any]:
    return model.processor(conversations, labels=True)


def test_plan_rows_fills_rows_under_the_budget() -> None:
    assert plan_rows([5, 3, 4, 2], 8) == [[0, 1], [2, 3]]  # first fit, longest first
    assert plan_rows([3, 3, 3], 100) == [[0, 1, 2]]
    assert plan_rows([1, 1, 5, 5], 6) == [[0, 2], [1, 3]]  # longest first: 2 rows (first fit in order: 3)
    assert plan_rows([10, 2, 3], 4) == [[0], [1], [2]]  # longer than the budget: a row of its own, not cut
    assert all(sum([5, 3, 4, 2][i] for i in r) <= 8 for r in plan_rows([5, 3, 4, 2], 8))
    with pytest.raises(ValueError, match="pack_tokens"):
        plan_rows([1], 0)


@torch.no_grad()
def test_packed_batch_gives_each_sample_its_own_loss(tiny_model: mmtransfer.MultimodalGPT) -> None:
    model = tiny_model.float()
    convs = _conversations()
    batch = _batch(model, convs)
    assert {"image", "audio"} <= set(batch)
    embeds, mask, _, _ = model.embed(batch["input_ids"], batch["attention_mask"], batch["labels"],
                                     image=batch["image"], audio=batch["audio"])
    lengths = mask.sum(1).tolist()
    budget = max(lengths) + min(lengths)  # the longest sample shares its row with the shortest at least
    rows = plan_rows(lengths, budget)
    assert len(rows) < len(convs) and max(len(r) for r in rows) > 1

    padded = model(**batch)
    packed = model(**batch, pack_tokens=budget)
    alone = torch.stack([model(**_batch(model, [c])).loss for c in convs])
    assert packed.sample_loss.shape == (len(convs),)
    torch.testing.assert_close(packed.sample_loss, alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(packed.loss, padded.loss, rtol=0, atol=1e-5)  # the mean over all targets
    n_targets = int((batch["labels"] != IGNORE_INDEX).sum())
    assert packed.logits.shape == (n_targets, model.decoder.config.vocab_size)  # logits at targets only


def test_a_packed_batch_without_targets_keeps_its_graph(tiny_model: mmtransfer.MultimodalGPT) -> None:
    batch = _batch(tiny_model, _conversations()[:2])
    batch["labels"] = torch.full_like(batch["labels"], IGNORE_INDEX)
    tiny_model.decoder.requires_grad_(True)
    out = tiny_model(**batch, pack_tokens=64)
    assert float(out.loss.detach()) == 0.0 and out.loss.requires_grad and out.sample_loss.isnan().all()
    out.loss.backward()
    assert all(p.grad is not None for p in tiny_model.decoder.parameters())  # every one took part (DDP needs it)


def _decoder(config: dict[str, Any]) -> mmtransfer.MultimodalGPT:
    base = {"num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
            "num_key_value_heads": 1, "head_dim": 16, "vocab_size": VOCAB, "bos_token_id": 0, "eos_token_id": 0,
            "pad_token_id": 0}
    decoder = {"model": "tiny", "pretrained": False, "config": base | config, "tokenizer": TOKENIZER}
    return mmtransfer.build_model(tiny_model_config() | {"decoder": decoder}).eval()


def _varlen_reference(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: Any,
                      scaling: float | None = None, dropout: float = 0.0, position_ids: Any = None,
                      **kwargs: Any) -> tuple[torch.Tensor, None]:
    """What ``flash_attn_varlen_func`` computes, on the CPU: causal attention inside each span of the one flat row
    [1, H, T, D], the spans given by the ``cu_seq_lens_q`` kwarg as in transformers' flash path, which must agree
    with transformers' own reading of the position ids (its fallback)."""
    from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

    assert attention_mask is None and query.shape[0] == 1
    cu_seqlens = kwargs["cu_seq_lens_q"]
    assert kwargs["max_length_q"] == int(cu_seqlens.diff().max())
    if position_ids is not None:  # GPTBigCode's attention never sees them
        assert cu_seqlens.equal(prepare_fa_kwargs_from_position_ids(position_ids)[0][0])
    out = torch.empty_like(query)
    for a, b in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist()):
        out[:, :, a:b] = F.scaled_dot_product_attention(query[:, :, a:b], key[:, :, a:b], value[:, :, a:b],
                                                        is_causal=True, scale=scaling, enable_gqa=True)
    return out.transpose(1, 2), None


@torch.no_grad()
@pytest.mark.parametrize("arch", ["gpt2", "llama", "gpt_bigcode"])
def test_the_varlen_layout_packs_the_same(arch: str) -> None:
    """The flash-attention layout (one flat row, no mask, restarting position ids, the spans as flash kwargs)
    under a reference of the varlen kernel registered like a flash implementation: every sample's loss equals
    its loss alone."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import flash_attention_mask

    AttentionInterface.register("varlen_reference", _varlen_reference)
    AttentionMaskInterface.register("varlen_reference", flash_attention_mask)
    model = _decoder({"model_type": "gpt_bigcode", "n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 256}
                     ) if arch == "gpt_bigcode" else mmtransfer.build_model(tiny_model_config(arch)).eval()
    alone = torch.stack([model(**_batch(model, [c])).loss for c in _conversations()])
    model.decoder.set_attn_implementation("varlen_reference")
    torch.testing.assert_close(model(**_batch(model, _conversations()), pack_tokens=64).sample_loss, alone,
                               rtol=0, atol=1e-5)


@torch.no_grad()
def test_targets_from_the_first_token_score_alike_padded_packed_and_alone(
        tiny_model: mmtransfer.MultimodalGPT) -> None:
    """Plain LM rows with a target on every token: the first token of a left-padded row is not scored from the
    padding before it, so the padded loss, the packed loss and the token-weighted losses alone agree."""
    ids = [tiny_model.tokenizer(t)["input_ids"] for t in ("the cat sat on the mat today", "a dog")]
    width = max(map(len, ids))
    input_ids = torch.tensor([[0] * (width - len(x)) + x for x in ids])
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
    labels = input_ids.masked_fill(mask == 0, IGNORE_INDEX)
    padded = tiny_model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
    packed = tiny_model(input_ids=input_ids, attention_mask=mask, labels=labels, pack_tokens=64).loss
    alone = [tiny_model(input_ids=torch.tensor([x]), attention_mask=torch.ones(1, len(x), dtype=torch.long),
                        labels=torch.tensor([x])).loss for x in ids]
    weighted = sum(loss * (len(x) - 1) for loss, x in zip(alone, ids)) / sum(len(x) - 1 for x in ids)
    torch.testing.assert_close(padded, weighted, rtol=0, atol=1e-5)
    torch.testing.assert_close(packed, padded, rtol=0, atol=1e-5)


@torch.no_grad()
def test_decoders_packing_cannot_serve_are_refused_by_name() -> None:
    """A sliding window shorter than a sample, a router auxiliary loss, ALiBi: each a ConfigError naming it;
    a window no sample exceeds packs exactly."""
    conversations = _conversations()
    window = _decoder({"model_type": "mistral", "sliding_window": 8, "max_position_embeddings": 256})
    with pytest.raises(ConfigError, match=r"packing: a sample of \d+ positions is longer than MistralForCausalLM's "
                                          r"sliding window \(8\)"):
        window(**_batch(window, conversations), pack_tokens=64)
    wide = _decoder({"model_type": "gemma3_text", "sliding_window": 512, "max_position_embeddings": 1024})
    alone = torch.stack([wide(**_batch(wide, [c])).loss for c in conversations])
    torch.testing.assert_close(wide(**_batch(wide, conversations), pack_tokens=64).sample_loss, alone,
                               rtol=0, atol=1e-5)
    moe = _decoder({"model_type": "mixtral", "num_local_experts": 2, "num_experts_per_tok": 1,
                    "output_router_logits": True})
    with pytest.raises(ConfigError, match=r"MixtralForCausalLM adds a router auxiliary loss"):
        moe(**_batch(moe, conversations), pack_tokens=64)
    bloom = _decoder({"model_type": "bloom", "n_layer": 2, "n_head": 2})
    with pytest.raises(ConfigError, match=r"packing: BloomForCausalLM does not take a block-diagonal 4-D"):
        bloom(**_batch(bloom, conversations), pack_tokens=64)


@torch.no_grad()
def test_eager_attention_packs_the_same(tiny_model: mmtransfer.MultimodalGPT) -> None:
    model = tiny_model.float()
    batch = _batch(model, _conversations())
    alone = torch.stack([model(**_batch(model, [c])).loss for c in _conversations()])
    model.decoder.set_attn_implementation("eager")  # the additive float form of the block-diagonal mask
    torch.testing.assert_close(model(**batch, pack_tokens=64).sample_loss, alone, rtol=0, atol=1e-5)


@torch.no_grad()
def test_positions_restart_and_labels_stop_at_sample_boundaries(tiny_model: mmtransfer.MultimodalGPT) -> None:
    batch = _batch(tiny_model, _conversations())
    embeds, mask, positions, labels = tiny_model.embed(batch["input_ids"], batch["attention_mask"],
                                                       batch["labels"], image=batch["image"], audio=batch["audio"])
    lengths = mask.sum(1)
    packed = pack(embeds, mask, positions, labels, int(lengths.max() + lengths.min()))
    for r, samples in enumerate(packed.rows):
        start = 0
        for i in samples:
            n = int(lengths[i])
            span = slice(start, start + n)
            assert packed.position_ids[r, span].tolist() == list(range(n))
            assert (packed.sample_ids[r, span] == i).all()
            assert packed.labels[r, start] == IGNORE_INDEX  # never predicted from the sample before
            real = labels[i][mask[i].bool()]
            assert packed.labels[r, start + 1 : start + n].tolist() == real[1:].tolist()
            torch.testing.assert_close(packed.inputs_embeds[r, span], embeds[i][mask[i].bool()])
            # block-diagonal and causal: a position sees its own sample's earlier positions only
            block = packed.attention_mask[r, 0, span]
            assert block[:, span].equal(torch.ones(n, n, dtype=torch.bool).tril())
            assert not block[:, :start].any() and not block[:, start + n :].any()
            start += n
        assert (packed.sample_ids[r, start:] == -1).all()  # padding only at the end of a row
    assert 0 <= packed.padding < 1
    flat = pack(embeds, mask, positions, labels, 8, "flash_attention_2")  # varlen: one row, no mask, no padding
    assert flat.attention_mask is None and flat.inputs_embeds.shape[:2] == (1, int(lengths.sum()))
    assert int((flat.position_ids == 0).sum()) == len(lengths)


def test_the_shifted_loss_never_crosses_a_sample_boundary() -> None:
    """Labels on every token (plain LM data): the first token of a sample is not predicted by the one before."""
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1], [0, 0, 1, 1]])
    labels = torch.where(mask.bool(), torch.arange(12).view(3, 4) + 10, IGNORE_INDEX)
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    packed = pack(torch.randn(3, 4, 8), mask, positions, labels, budget=16)
    assert packed.rows == [[0, 1, 2]]
    assert packed.labels.tolist() == [[IGNORE_INDEX, 12, 13, IGNORE_INDEX, 15, 16, 17, IGNORE_INDEX, 21]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 0, 1, 2, 3, 0, 1]]


@torch.no_grad()
def test_a_sample_does_not_see_the_others_in_its_row(tiny_model: mmtransfer.MultimodalGPT) -> None:
    model = tiny_model.float()
    a, b = _batch(model, _conversations()), _batch(model, _conversations(image_seed=7))  # other images
    assert not torch.equal(a["image"]["pixel_values"], b["image"]["pixel_values"])
    budget = 10_000  # everything in one row: the image samples come before the others
    out_a, out_b = model(**a, pack_tokens=budget), model(**b, pack_tokens=budget)
    has_image = torch.tensor([0, 4])
    others = torch.tensor([1, 2, 3, 5])
    assert not torch.allclose(out_a.sample_loss[has_image], out_b.sample_loss[has_image])
    torch.testing.assert_close(out_a.sample_loss[others], out_b.sample_loss[others], rtol=0, atol=1e-6)
    embeds, mask, positions, labels = model.embed(a["input_ids"], a["attention_mask"], a["labels"],
                                                  image=a["image"], audio=a["audio"])
    packed_a = pack(embeds, mask, positions, labels, budget)
    embeds, mask, positions, labels = model.embed(b["input_ids"], b["attention_mask"], b["labels"],
                                                  image=b["image"], audio=b["audio"])
    packed_b = pack(embeds, mask, positions, labels, budget)
    assert len(packed_a.rows) == 1

    def logits(p: Any) -> torch.Tensor:
        return model.decoder(inputs_embeds=p.inputs_embeds, attention_mask=p.attention_mask,
                             position_ids=p.position_ids).logits

    later = packed_a.sample_ids >= 1  # every position of sample 1 onwards (sample 4 has an image too)
    later &= packed_a.sample_ids != 4
    torch.testing.assert_close(logits(packed_a)[later], logits(packed_b)[later], rtol=0, atol=1e-5)


def test_collator_carries_the_budget_to_the_model(tiny_model: mmtransfer.MultimodalGPT) -> None:
    items = [{"messages": c, "references": []} for c in _conversations()]
    plain = Collator(tiny_model, "chat")(items)
    batch = Collator(tiny_model, "chat", pack_tokens=48)(items)
    assert {"image", "audio"} <= set(batch)
    assert "pack_tokens" not in plain and int(batch["pack_tokens"]) == 48 and "pack_tokens" in MODEL_INPUTS
    with torch.no_grad():
        out = tiny_model(**{k: v for k, v in batch.items() if k in MODEL_INPUTS})
        ref = tiny_model(**{k: v for k, v in plain.items() if k in MODEL_INPUTS})
    assert out.sample_loss is not None and ref.sample_loss is None
    torch.testing.assert_close(out.loss, ref.loss, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="pack_tokens"):
        Collator(tiny_model, "chat", pack_tokens=0)


def test_packing_run_trains(tmp_path: Path) -> None:
    data = write_all(tmp_path / "data", n_train=48, n_test=8)
    cfg = load_train_config(RECIPES / "chat-tiny.yaml", [
        f"data=[{{task: chat, name: mixed, train: {data / 'chat_mixed_train.jsonl'}}}]",
        f"output_dir={tmp_path / 'run'}", "stages.0.steps=14", "batch_size=8", "log_every=1", "eval_every=0",
        "packing=true", "pack_tokens=96",
    ])
    seen = []
    original = mmtransfer.MultimodalGPT._forward_packed

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        mask, budget = args[1], args[4]
        seen.append((budget, len(plan_rows(mask.sum(1).tolist(), budget)), len(mask)))  # budget, rows, samples
        return original(self, *args, **kwargs)

    mmtransfer.MultimodalGPT._forward_packed = spy
    try:
        train(cfg)
    finally:
        mmtransfer.MultimodalGPT._forward_packed = original
    assert seen and {budget for budget, _, _ in seen} == {96}
    assert any(rows < samples for _, rows, samples in seen)  # several samples shared a row
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) >= 12 and all(np.isfinite(losses))
    k = len(losses) // 4
    assert sum(losses[-k:]) / k < sum(losses[:k]) / k  # the loss goes down


def test_packing_settings_are_checked() -> None:
    recipe = RECIPES / "chat-tiny.yaml"
    assert load_train_config(recipe, ["packing=true", "pack_tokens=64"]).pack_tokens == 64
    with pytest.raises(ConfigError, match="pack_tokens: must be >= 1"):
        load_train_config(recipe, ["packing=true", "pack_tokens=0"])
    with pytest.raises(ConfigError, match="packing: expected bool"):
        load_train_config(recipe, ["packing=sometimes"])
    with pytest.raises(ConfigError, match="did you mean 'pack_tokens'"):
        load_train_config(recipe, ["pack_token=64"])
    with pytest.raises(ConfigError, match="packing: needs the LM loss"):
        load_train_config(recipe, ["packing=true", "model.classifier=head", "model.labels=[a, b]"])
    head = mmtransfer.build_model(tiny_model_config(classifier="head", labels=["a", "b"]))
    batch = head.processor.tokenize(["a fine film"])
    with pytest.raises(ConfigError, match="packing: needs the LM loss"):
        head(**batch, class_labels=torch.tensor([0]), pack_tokens=64)
