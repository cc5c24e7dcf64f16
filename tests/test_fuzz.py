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
from mmtransfer.chat import SENTINELS
from mmtransfer.data import Collator, Skip
from mmtransfer.model.splice import IGNORE_INDEX, splice
from tests.tiny_models import tiny_model_config

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SLOW = settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
PH_IMAGE, PH_AUDIO, PAD, D = 90, 91, 0, 3
_any = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)  # any unicode but lone surrogates
FORGERIES = ["<image>", "<audio>", "<|endoftext|>", "\ue000", "\ue002"]  # placeholders, special tokens, sentinels
text = _any | st.builds(lambda a, f, b: a + f + b, _any, st.sampled_from(FORGERIES), _any)


@pytest.fixture(scope="module")
def model() -> mmtransfer.MultimodalGPT:
    return mmtransfer.build_model(tiny_model_config("gpt2")).eval()


# -- tokenisation and label masking ---------------------------------------------------------------
@FAST
@given(rows=st.lists(st.tuples(text, text.filter(lambda t: SENTINELS.sub("", t))), min_size=1, max_size=5),
       add_eos=st.booleans())
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
        clean = SENTINELS.sub("", target)  # the renderer's private-use sentinels are removed from user text
        target_ids = model.tokenizer(clean, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        n_target = len(target_ids) + add_eos
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
        assert "every input is empty" in str(err)
        assert all(not model.tokenizer(SENTINELS.sub("", p))["input_ids"] for p in prompts)
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
            batch = model.processor.from_prompts(["<image>"], [x["target"]], image=[x["image"]])
            n = int(batch["attention_mask"].sum())
            if n > limit:
                out.append(x)
    return out


# -- splice ---------------------------------------------------------------------------------------
def _embed(ids: torch.Tensor) -> torch.Tensor:
    return torch.stack([ids.float(), ids.float() * 2, -ids.float()], -1)  # [B, T, D], a function of the id


@st.composite
def splice_rows(draw: st.DrawFn) -> list[dict]:
    """Rows of text ids with 0-3 placeholders of each modality anywhere, a valid prefix length per
    placeholder (0-4), labels and a padding side."""
    rows = []
    for _ in range(draw(st.integers(1, 5))):
        tokens = draw(st.lists(st.integers(1, 80), max_size=6))
        for ph in (PH_IMAGE, PH_AUDIO):
            for _ in range(draw(st.integers(0, 3))):
                tokens.insert(draw(st.integers(0, len(tokens))), ph)
        labels = [t if t not in (PH_IMAGE, PH_AUDIO) and draw(st.booleans()) else IGNORE_INDEX for t in tokens]
        valid = [draw(st.integers(0, 4)) if t in (PH_IMAGE, PH_AUDIO) else None for t in tokens]
        rows.append({"tokens": tokens, "labels": labels, "valid": valid, "left": draw(st.booleans())})
    return rows


def _items(rows: list[dict], ph: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One prefix item per occurrence of ``ph``, row-major: embeddings [K, M, D], mask [K, M]."""
    valid = [v for r in rows for t, v in zip(r["tokens"], r["valid"]) if t == ph]
    m = max(valid + [1])
    g = torch.Generator().manual_seed(seed + ph)
    emb = torch.randn(len(valid), m, D, generator=g) + 1000 * ph  # distinguishable from token embeddings
    return emb, torch.tensor([[k < v for k in range(m)] for v in valid], dtype=torch.bool).reshape(len(valid), m)


def _batch(rows: list[dict], seed: int) -> tuple:
    width = max([len(r["tokens"]) for r in rows] + [1])
    ids = torch.full((len(rows), width), PAD)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX)
    for i, r in enumerate(rows):
        n = len(r["tokens"])
        cols = slice(width - n, width) if r["left"] else slice(0, n)
        ids[i, cols], attn[i, cols], labels[i, cols] = torch.tensor(r["tokens"]), 1, torch.tensor(r["labels"])
    prefixes = {ph: _items(rows, ph, seed) for ph in (PH_IMAGE, PH_AUDIO)}
    return ids, attn, {ph: p for ph, p in prefixes.items() if len(p[0])}, labels


@FAST
@given(rows=splice_rows(), seed=st.integers(0, 1000))
def test_splice_batched_equals_row_by_row_and_masks_labels(rows: list[dict], seed: int) -> None:
    ids, attn, prefixes, labels = _batch(rows, seed)
    emb, mask, pos, lab = splice(_embed, ids, attn, prefixes, labels)
    lengths = [sum(1 if v is None else v for v in r["valid"]) for r in rows]
    assert emb.shape == (len(rows), max(lengths + [0]), D)
    width = emb.shape[1]
    seen = {PH_IMAGE: 0, PH_AUDIO: 0}  # items of earlier rows
    for i, (r, n) in enumerate(zip(rows, lengths)):
        assert mask[i].tolist() == [0] * (width - n) + [1] * n
        assert pos[i, width - n :].tolist() == list(range(n)) and (pos[i, : width - n] == 0).all()
        assert (emb[i, : width - n] == 0).all() and (lab[i, : width - n] == IGNORE_INDEX).all()
        # the same row alone, and built by hand
        alone = _batch([{**r, "left": True}], seed)
        mine = {ph: (prefixes[ph][0][seen[ph] : seen[ph] + r["tokens"].count(ph)],
                     prefixes[ph][1][seen[ph] : seen[ph] + r["tokens"].count(ph)])
                for ph in prefixes if ph in r["tokens"]}
        e1, _, _, l1 = splice(_embed, alone[0], alone[1], mine, alone[3])
        assert torch.equal(emb[i, width - n :], e1[0, e1.shape[1] - n :])
        assert torch.equal(lab[i, width - n :], l1[0, l1.shape[1] - n :])
        expected_emb, expected_lab = [], []
        for t, y, v in zip(r["tokens"], r["labels"], r["valid"]):
            if v is not None:
                expected_emb += list(prefixes[t][0][seen[t], :v])
                expected_lab += [IGNORE_INDEX] * v  # no loss on prefix tokens
                seen[t] += 1
            else:
                expected_emb.append(_embed(torch.tensor([t]))[0])
                expected_lab.append(y)
        if n:
            assert torch.equal(emb[i, width - n :], torch.stack(expected_emb))
            expected_lab[0] = IGNORE_INDEX  # nothing precedes a row's first real position: never a target
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


def test_splice_rejects_more_items_than_placeholders() -> None:
    ids, attn = torch.tensor([[PH_IMAGE, 5], [PAD, PAD]]), torch.tensor([[1, 1], [0, 0]])  # row 1: all padding
    prefix = (torch.ones(2, 1, D), torch.ones(2, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="occurs 1 times but 2 items"):
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
        model.chat([{"role": "user", "content": "warm up"}], max_new_tokens=1)
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
    convs = [[{"role": "user", "content": [{"type": "image", "image": im}, {"type": "text", "text": p}]}]
             for p, im in zip(prompts, images)]
    batched = model.chat(convs, max_new_tokens=4)
    single = [model.chat(c, max_new_tokens=4) for c in convs]
    assert batched == single


@SLOW
@given(arch=st.sampled_from(["gpt2", "llama"]), prompts=st.lists(text, min_size=2, max_size=3))
def test_text_only_generation_with_empty_prompts_in_the_batch(peaked: dict, arch: str, prompts: list[str]) -> None:
    """An empty prompt beside others is an all-padding row: it must not change the other rows' outputs."""
    model = peaked[arch]
    nonempty = [p for p in prompts if model.tokenizer(SENTINELS.sub("", p))["input_ids"]]
    try:
        batched = model.chat([_user(p) for p in prompts], max_new_tokens=3)
    except ValueError as err:
        assert not nonempty and "every input is empty" in str(err)
        return
    assert len(batched) == len(prompts)
    for prompt, out in zip(prompts, batched):
        if prompt in nonempty:
            assert out == model.chat(_user(prompt), max_new_tokens=3)


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]
