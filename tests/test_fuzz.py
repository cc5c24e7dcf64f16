"""Property-based tests (hypothesis) over the batching path: tokenisation and label masking, collation with
skipped items, the splice of prefixes (random lengths, empty prefixes, padding on either side, all-padding
rows) and generation. Invariants: no exception, labels masked where they must be, and a batch gives what
each row gives alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import mmtransfer
from mmtransfer.data import Collator, Skip
from mmtransfer.splice import IGNORE_INDEX, splice
from tests.tiny_models import tiny_model_config

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SLOW = settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
PH_IMAGE, PH_AUDIO, PAD, D = 90, 91, 0, 3
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)  # any unicode but lone surrogates


@pytest.fixture(scope="module")
def model() -> mmtransfer.MultimodalGPT:
    return mmtransfer.build_model(tiny_model_config("gpt2")).eval()


# -- tokenisation and label masking ---------------------------------------------------------------
@FAST
@given(rows=st.lists(st.tuples(text, text.filter(bool)), min_size=1, max_size=5), add_eos=st.booleans())
def test_tokenize_masks_prompt_and_padding_and_batches_like_single_rows(
    model: mmtransfer.MultimodalGPT, rows: list[tuple[str, str]], add_eos: bool
) -> None:
    prompts, targets = [p for p, _ in rows], [t for _, t in rows]
    tok = model.processor.tokenize
    batch = tok(prompts, targets, add_eos=add_eos)
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    for i, (prompt, target) in enumerate(rows):
        n = int(mask[i].sum())
        assert mask[i].tolist() == [0] * (ids.shape[1] - n) + [1] * n  # left padding only
        n_target = len(model.tokenizer(target, add_special_tokens=False)["input_ids"]) + add_eos
        assert (labels[i, : ids.shape[1] - n_target] == IGNORE_INDEX).all()  # padding and prompt
        assert torch.equal(labels[i, ids.shape[1] - n_target :], ids[i, ids.shape[1] - n_target :])
        alone = tok([prompt], [target], add_eos=add_eos)
        for key in ("input_ids", "attention_mask", "labels"):
            assert torch.equal(batch[key][i, ids.shape[1] - n :], alone[key][0]), key


@FAST
@given(prompts=st.lists(text, min_size=1, max_size=4))
def test_tokenize_prompts_alone_never_crashes(model: mmtransfer.MultimodalGPT, prompts: list[str]) -> None:
    try:
        batch = model.processor.tokenize(prompts)
    except ValueError as err:  # only when there is nothing at all to condition on
        assert "every prompt is empty" in str(err)
        assert all(not model.tokenizer(p)["input_ids"] for p in prompts)
        return
    assert batch["input_ids"].shape == batch["attention_mask"].shape and "labels" not in batch


# -- collation with skipped items -----------------------------------------------------------------
IMAGES = [Image.new("RGB", (w, h), c) for w, h, c in [(1, 1, "red"), (7, 40, "blue"), (33, 5, "green")]]


@FAST
@given(entries=st.lists(st.one_of(st.tuples(st.integers(0, 2), text.filter(str.strip)), st.none()),
                        min_size=1, max_size=6),
       limit=st.sampled_from([None, 8, 30]))
def test_collate_drops_exactly_the_bad_items_and_keeps_rows_aligned(
    model: mmtransfer.MultimodalGPT, entries: list, limit: int | None
) -> None:
    items = []
    for line, entry in enumerate(entries, start=1):
        if entry is None:
            items.append(Skip("m.jsonl", line, "could not read image file"))
        else:
            image, caption = entry
            items.append({"image": IMAGES[image], "file": f"{image}.png", "target": " " + caption,
                          "references": [caption], "source": ("m.jsonl", line)})
    batch = Collator(model, "captioning", max_text_tokens=limit)(items)
    kept = [x for x in items if isinstance(x, dict) and x not in _too_long(model, items, limit)]
    assert batch["n_skipped"] == len(items) - len(kept) == len(batch["skipped"])
    assert batch["references"] == [x["references"] for x in kept]
    if not kept:
        assert "input_ids" not in batch
        return
    assert batch["input_ids"].shape[0] == batch["image"]["pixel_values"].shape[0] == len(kept)
    alone = [Collator(model, "captioning")([x]) for x in kept]
    width = batch["input_ids"].shape[1]
    for row, one in zip(range(len(kept)), alone):
        n = one["input_ids"].shape[1]
        assert width >= n and not batch["attention_mask"][row, : width - n].any()
        for key in ("input_ids", "attention_mask", "labels"):
            assert torch.equal(batch[key][row, width - n :], one[key][0]), key
        assert torch.equal(batch["image"]["pixel_values"][row], one["image"]["pixel_values"][0])
    placeholder = model.placeholders["image"]
    assert ((batch["input_ids"] == placeholder) & batch["attention_mask"].bool()).sum(1).tolist() == [1] * len(kept)
    assert (batch["labels"][batch["input_ids"] == placeholder] == IGNORE_INDEX).all()


def _too_long(model: mmtransfer.MultimodalGPT, items: list, limit: int | None) -> list:
    limit = limit or 256
    out = []
    for x in items:
        if isinstance(x, dict):
            n = int(model.processor.tokenize(["<image>"], [x["target"]])["attention_mask"].sum())
            if n > limit:
                out.append(x)
    return out


# -- splice ---------------------------------------------------------------------------------------
def _embed(ids: torch.Tensor) -> torch.Tensor:
    return torch.stack([ids.float(), ids.float() * 2, -ids.float()], -1)  # [B, T, D], a function of the id


@st.composite
def splice_rows(draw: st.DrawFn) -> list[dict]:
    """Rows of (text ids with one placeholder per modality, prefix lengths, valid counts, labels, padding side)."""
    modalities = draw(st.sampled_from([(), (PH_IMAGE,), (PH_AUDIO,), (PH_IMAGE, PH_AUDIO)]))
    rows = []
    for _ in range(draw(st.integers(1, 5))):
        text_ids = draw(st.lists(st.integers(1, 80), max_size=6))
        tokens = list(text_ids)
        for ph in modalities:
            tokens.insert(draw(st.integers(0, len(tokens))), ph)
        labels = [t if t not in modalities and draw(st.booleans()) else IGNORE_INDEX for t in tokens]
        valid = {ph: draw(st.integers(0, 4)) for ph in modalities}
        rows.append({"tokens": tokens, "labels": labels, "valid": valid, "left": draw(st.booleans())})
    return rows


def _batch(rows: list[dict], modalities: tuple, seed: int) -> tuple:
    width = max([len(r["tokens"]) for r in rows] + [1])
    ids = torch.full((len(rows), width), PAD)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX)
    for i, r in enumerate(rows):
        n = len(r["tokens"])
        cols = slice(width - n, width) if r["left"] else slice(0, n)
        ids[i, cols], attn[i, cols], labels[i, cols] = torch.tensor(r["tokens"]), 1, torch.tensor(r["labels"])
    prefixes = {}
    for ph in modalities:
        m = max([r["valid"][ph] for r in rows] + [1])
        g = torch.Generator().manual_seed(seed + ph)
        emb = torch.randn(len(rows), m, D, generator=g) + 1000 * ph  # distinguishable from token embeddings
        mask = torch.tensor([[k < r["valid"][ph] for k in range(m)] for r in rows], dtype=torch.bool)
        prefixes[ph] = (emb, mask)
    return ids, attn, prefixes, labels


@FAST
@given(rows=splice_rows(), seed=st.integers(0, 1000))
def test_splice_batched_equals_row_by_row_and_masks_labels(rows: list[dict], seed: int) -> None:
    modalities = tuple(rows[0]["valid"])
    ids, attn, prefixes, labels = _batch(rows, modalities, seed)
    emb, mask, pos, lab = splice(_embed, ids, attn, prefixes, labels)
    lengths = [len(r["tokens"]) - len(modalities) + sum(r["valid"].values()) for r in rows]
    assert emb.shape == (len(rows), max(lengths + [0]), D)
    width = emb.shape[1]
    for i, (r, n) in enumerate(zip(rows, lengths)):
        assert mask[i].tolist() == [0] * (width - n) + [1] * n
        assert pos[i, width - n :].tolist() == list(range(n)) and (pos[i, : width - n] == 0).all()
        assert (emb[i, : width - n] == 0).all() and (lab[i, : width - n] == IGNORE_INDEX).all()
        # the same row alone, and built by hand
        one = {ph: (e[i : i + 1, : max(r["valid"][ph], 1)], m[i : i + 1, : max(r["valid"][ph], 1)])
               for ph, (e, m) in prefixes.items()}
        row_ids = torch.tensor([r["tokens"]]) if r["tokens"] else torch.full((1, 1), PAD)
        row_attn = torch.ones_like(row_ids) if r["tokens"] else torch.zeros_like(row_ids)
        row_labels = torch.tensor([r["labels"]]) if r["tokens"] else torch.full((1, 1), IGNORE_INDEX)
        e1, m1, p1, l1 = splice(_embed, row_ids, row_attn, one, row_labels)
        assert torch.equal(emb[i, width - n :], e1[0, e1.shape[1] - n :])
        assert torch.equal(lab[i, width - n :], l1[0, l1.shape[1] - n :])
        expected_emb, expected_lab = [], []
        for t, y in zip(r["tokens"], r["labels"]):
            if t in modalities:
                k = r["valid"][t]
                expected_emb += list(prefixes[t][0][i, :k])
                expected_lab += [IGNORE_INDEX] * k  # no loss on prefix tokens
            else:
                expected_emb.append(_embed(torch.tensor([t]))[0])
                expected_lab.append(y)
        if n:
            assert torch.equal(emb[i, width - n :], torch.stack(expected_emb))
        assert lab[i, width - n :].tolist() == expected_lab


@FAST
@given(lengths=st.lists(st.integers(0, 5), min_size=1, max_size=4))
def test_splice_without_prefixes_keeps_all_padding_rows(lengths: list[int]) -> None:
    width = max(lengths + [1])
    ids = torch.randint(1, 50, (len(lengths), width))
    attn = torch.tensor([[int(k >= width - n) for k in range(width)] for n in lengths])
    emb, mask, pos, lab = splice(_embed, ids, attn, {}, ids.masked_fill(attn == 0, IGNORE_INDEX))
    assert mask.sum(1).tolist() == lengths
    assert (lab[mask == 0] == IGNORE_INDEX).all() and (emb[mask == 0] == 0).all()


def test_splice_rejects_a_row_without_its_placeholder() -> None:
    ids, attn = torch.tensor([[PH_IMAGE, 5], [PAD, PAD]]), torch.tensor([[1, 1], [0, 0]])  # row 1: all padding
    prefix = (torch.ones(2, 1, D), torch.ones(2, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"rows \[1\] need exactly one placeholder"):
        splice(_embed, ids, attn, {PH_IMAGE: prefix})


# -- generation -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def peaked() -> dict[str, mmtransfer.MultimodalGPT]:
    """Tiny models whose LM head is scaled up, so greedy choices are not near-ties that float noise flips."""
    models = {}
    for arch in ("gpt2", "llama"):
        torch.manual_seed(0)
        model = mmtransfer.build_model(tiny_model_config(arch)).eval()
        with torch.no_grad():
            model.decoder.get_output_embeddings().weight.mul_(20)
        model.generate(["warm up"], max_new_tokens=1)
        models[arch] = model
    return models


@SLOW
@given(arch=st.sampled_from(["gpt2", "llama"]),
       rows=st.lists(st.tuples(text, st.integers(1, 48), st.integers(1, 48), st.integers(0, 255)),
                     min_size=1, max_size=3))
def test_generation_batched_equals_single(peaked: dict, arch: str, rows: list[tuple]) -> None:
    """Any prompts (empty ones too: the image still conditions), any image sizes."""
    model = peaked[arch]
    prompts = [p for p, *_ in rows]
    images = [Image.fromarray(np.full((h, w, 3), c, dtype=np.uint8)) for _, w, h, c in rows]
    batched = model.generate(prompts, images=images, max_new_tokens=4)
    single = [model.generate([p], images=[im], max_new_tokens=4)[0] for p, im in zip(prompts, images)]
    assert batched == single


@SLOW
@given(arch=st.sampled_from(["gpt2", "llama"]), prompts=st.lists(text, min_size=2, max_size=3))
def test_text_only_generation_with_empty_prompts_in_the_batch(peaked: dict, arch: str, prompts: list[str]) -> None:
    """An empty prompt beside others is an all-padding row: it must not change the other rows' outputs."""
    model = peaked[arch]
    nonempty = [p for p in prompts if model.tokenizer(p)["input_ids"]]
    try:
        batched = model.generate(prompts, max_new_tokens=3)
    except ValueError as err:
        assert not nonempty and "every prompt is empty" in str(err)
        return
    assert len(batched) == len(prompts)
    for prompt, out in zip(prompts, batched):
        if prompt in nonempty:
            assert out == model.generate([prompt], max_new_tokens=3)[0]
