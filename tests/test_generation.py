"""Batched generation equals one-at-a-time generation, for every API method and both decoders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import mmtransfer
from tests.tiny_models import tiny_model_config


def _images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (32 + 8 * i, 40, 3), dtype=np.uint8)) for i in range(n)]


def _clips(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [(rng.standard_normal(4000 + 3000 * i) * 0.1).astype(np.float32) for i in range(n)]


@pytest.fixture
def peaked(tiny_model: mmtransfer.MultimodalGPT) -> mmtransfer.MultimodalGPT:
    """Scale the LM head so that greedy choices are not near-ties that float noise could flip."""
    with torch.no_grad():
        tiny_model.decoder.get_output_embeddings().weight.mul_(20)
    return tiny_model


def test_batched_caption_equals_single(peaked: mmtransfer.MultimodalGPT) -> None:
    images = _images(3)
    batched = peaked.caption(images, max_new_tokens=8)
    single = [peaked.caption(im, max_new_tokens=8) for im in images]
    assert batched == single
    assert all(single)  # words, not empty strings: the equality above compares something


def test_batched_transcribe_of_different_lengths_equals_single(peaked: mmtransfer.MultimodalGPT) -> None:
    clips = _clips(3)  # different durations -> different prefix lengths -> different left padding
    batched = peaked.transcribe(clips, sample_rate=16000, max_new_tokens=8)
    single = [peaked.transcribe(c, sample_rate=16000, max_new_tokens=8) for c in clips]
    assert batched == single


def test_batched_answer_with_prompts_of_different_lengths_equals_single(peaked: mmtransfer.MultimodalGPT) -> None:
    images = _images(3)
    questions = ["what?", "what colour is the big square on the left?", "how many?"]
    batched = peaked.answer(images, questions, max_new_tokens=8)
    assert batched == [peaked.answer(im, q, max_new_tokens=8) for im, q in zip(images, questions)]


def test_token_ids_match_between_batch_and_single(peaked: mmtransfer.MultimodalGPT) -> None:
    """Compare raw token ids (decoded text could hide differences in special tokens)."""
    clips = _clips(2)
    batch = peaked.processor.from_prompts(["<audio>"] * 2, audio=clips, sample_rate=16000)
    embeds, mask, pos, _ = peaked.embed(batch["input_ids"], batch["attention_mask"], audio=batch["audio"])
    together = peaked.decoder.generate(inputs_embeds=embeds, attention_mask=mask, position_ids=pos,
                                       max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None)
    for i, clip in enumerate(clips):
        one = peaked.processor.from_prompts(["<audio>"], audio=[clip], sample_rate=16000)
        e, m, p, _ = peaked.embed(one["input_ids"], one["attention_mask"], audio=one["audio"])
        alone = peaked.decoder.generate(inputs_embeds=e, attention_mask=m, position_ids=p,
                                        max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None)
        assert together[i].tolist() == alone[0].tolist()


def test_beam_search_and_sampling(peaked: mmtransfer.MultimodalGPT) -> None:
    images = _images(2)
    beams = peaked.caption(images, max_new_tokens=6, num_beams=3)
    assert len(beams) == 2 and all(beams)
    assert peaked.caption(images, max_new_tokens=6, num_beams=1) == peaked.caption(images, max_new_tokens=6)
    torch.manual_seed(3)
    first = peaked.caption(images, max_new_tokens=6, do_sample=True, temperature=0.8, top_p=0.9)
    torch.manual_seed(3)
    assert peaked.caption(images, max_new_tokens=6, do_sample=True, temperature=0.8, top_p=0.9) == first


def test_max_new_tokens_bounds_the_output(peaked: mmtransfer.MultimodalGPT) -> None:
    batch = peaked.processor.from_prompts(["<image>"], image=_images(1))
    embeds, mask, pos, _ = peaked.embed(batch["input_ids"], batch["attention_mask"], image=batch["image"])
    out = peaked.decoder.generate(inputs_embeds=embeds, attention_mask=mask, position_ids=pos,
                                  max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert out.shape[1] <= 5


def test_classify_zero_and_few_shot(tiny_model: mmtransfer.MultimodalGPT) -> None:
    tiny_model.config.labels = ["negative", "positive"]
    texts = ["a great film", "terrible", "good movie, bad ending"]
    zero = tiny_model.classify(texts)
    assert len(zero) == 3 and set(zero) <= {"negative", "positive"}
    assert tiny_model.classify(texts[0]) == zero[0]
    assert tiny_model.classify(texts, batch_size=1) == zero
    few = tiny_model.classify(texts, shots=[("great", "positive"), ("bad", "negative")])
    assert set(few) <= {"negative", "positive"}


@pytest.mark.parametrize("lora", [False, True])
def test_label_scoring_with_a_shared_prompt_equals_scoring_each_pair(decoder_arch: str, lora: bool) -> None:
    """``classify`` runs each prompt once and scores targets from its KV cache: the same log-probabilities as
    running every (prompt, target) pair in full, for targets of one and of several tokens."""
    cfg = tiny_model_config(decoder_arch) | ({"trainable": {"decoder": "lora"}} if lora else {})
    model = mmtransfer.build_model(cfg).eval()
    prompts = ["a fine film\nLabel:", "dull <image> <|endoftext|>\nLabel:", "x"]
    targets = [" positive", " negative", " very mixed feelings indeed"]
    with torch.no_grad():
        shared = model._label_scores(prompts, targets)
        pairs = model.processor.tokenize([p for p in prompts for _ in targets],
                                         [t for _ in prompts for t in targets], add_eos=False)
        each = model.sequence_logprobs(pairs).view(len(prompts), len(targets))
    torch.testing.assert_close(shared, each, atol=1e-4, rtol=0)
    model.config.labels = ["positive", "negative", "very mixed feelings indeed"]
    assert model.classify(prompts) == [model.config.labels[j] for j in each.argmax(-1).tolist()]


def test_repetition_options_reach_generate_and_stop_the_loops(peaked: mmtransfer.MultimodalGPT,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """``no_repeat_ngram_size=1``: no new token repeats in a row (the tiny model repeats without it);
    ``repetition_penalty`` reaches ``generate`` as given."""
    calls = []
    real = peaked.decoder.generate

    def spy(*args: object, **kwargs: object) -> torch.Tensor:
        out = real(*args, **kwargs)
        calls.append((kwargs, out))
        return out

    monkeypatch.setattr(peaked.decoder, "generate", spy)
    images = _images(3)
    special = set(peaked.tokenizer.all_special_ids)

    def new_tokens(**gen: object) -> list[list[int]]:
        peaked.caption(images, max_new_tokens=8, **gen)
        return [[t for t in row.tolist() if t not in special] for row in calls[-1][1]]

    assert any(len(set(row)) < len(row) for row in new_tokens())
    assert all(len(set(row)) == len(row) for row in new_tokens(no_repeat_ngram_size=1))
    new_tokens(repetition_penalty=1.3)
    assert calls[-1][0]["repetition_penalty"] == 1.3 and calls[0][0]["no_repeat_ngram_size"] == 0
