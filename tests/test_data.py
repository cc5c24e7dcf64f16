"""Manifests and bad samples, decoding, collation, bucketing, the feature cache and the task Mixture."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

import mmtransfer
import mmtransfer.modalities as modalities_module
from mmtransfer.data import (
    MODEL_INPUTS,
    BucketBatchSampler,
    Collator,
    DataError,
    FeatureCache,
    Mixture,
    Skip,
    TaskDataset,
    make_loader,
    read_manifest,
)
from mmtransfer.model.splice import IGNORE_INDEX
from tests.tiny_models import tiny_model_config

RATE = 16000


# -- helpers --------------------------------------------------------------------------------------
def write_image(path: Path, seed: int = 0, size: int = 16) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path.name if path.parent.name == "" else f"{path.parent.name}/{path.name}"


def write_wav(path: Path, seconds: float, rate: int = RATE, channels: int = 1, subtype: str = "PCM_16",
              seed: int = 0) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    wave = np.random.default_rng(seed).uniform(-0.5, 0.5, (int(seconds * rate), channels)).astype(np.float32)
    sf.write(path, wave, rate, subtype=subtype)
    return f"{path.parent.name}/{path.name}"


def write_manifest(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


@pytest.fixture
def model() -> mmtransfer.MultimodalGPT:
    return mmtransfer.build_model(tiny_model_config("gpt2")).eval()


@pytest.fixture
def caption_manifest(tmp_path: Path) -> Path:
    lines = [{"image": write_image(tmp_path / "img" / f"{i}.png", seed=i), "text": f"caption number {i}"}
             for i in range(4)]
    return write_manifest(tmp_path / "captions.jsonl", lines)


# -- manifests ------------------------------------------------------------------------------------
def test_manifest_normalises_every_task_format(tmp_path: Path) -> None:
    img = write_image(tmp_path / "img" / "a.png")
    wav = write_wav(tmp_path / "wav" / "a.wav", 0.5)
    caps = read_manifest(write_manifest(tmp_path / "c.jsonl", [
        {"image": img, "text": " a cat "}, {"image": img, "captions": ["a cat", "a kitten"], "extra": 1},
    ]), "captioning", on_error="raise")
    assert [s["text"] for s in caps] == [["a cat"], ["a cat", "a kitten"]]
    assert caps[0]["image"] == str((tmp_path / "img" / "a.png").resolve())
    assert caps[1]["source"] == (str(tmp_path / "c.jsonl"), 2) and "extra" not in caps[1]
    vqa = read_manifest(write_manifest(tmp_path / "v.jsonl", [
        {"image": img, "question": "what?", "answer": "cat"}, {"image": img, "question": "q", "answers": ["a", "b"]},
    ]), "vqa", on_error="raise")
    assert [s["answer"] for s in vqa] == [["cat"], ["a", "b"]]
    asr = read_manifest(write_manifest(tmp_path / "a.jsonl", [{"audio": wav, "text": "hi"}, ""]), "asr")
    assert asr[0]["duration"] == pytest.approx(0.5) and len(asr) == 1 and not asr.skipped  # blank line ignored
    cls = read_manifest(write_manifest(tmp_path / "t.jsonl", [{"text": "good", "label": "pos"}]), "classification",
                        labels=["pos", "neg"], on_error="raise")
    assert cls.samples == [{"text": "good", "label": "pos", "source": (str(tmp_path / "t.jsonl"), 1)}]


BAD_LINES = [
    ("{not json", "malformed JSON"),
    ("[1, 2]", "expected a JSON object, got list"),
    ({"image": "img/a.png"}, "missing field(s) ['text']"),
    ({"image": "img/a.png", "text": "  "}, "'text' is empty"),
    ({"image": "img/a.png", "text": []}, "'text' is an empty list"),
    ({"image": "img/a.png", "text": 3}, "'text' must be a string"),
    ({"image": "img/a.png", "text": "x", "captions": ["y"]}, "alias 'captions'"),
    ({"image": "img/missing.png", "text": "x"}, "image file not found: img/missing.png"),
    ({"image": "../outside.png", "text": "x"}, "escapes the media root"),
    ({"image": "img/../../outside.png", "text": "x"}, "escapes the media root"),
]


@pytest.mark.parametrize(("line", "problem"), BAD_LINES)
def test_bad_caption_lines_are_skipped_or_raise_with_file_and_line(
    tmp_path: Path, line: Any, problem: str
) -> None:
    root = tmp_path / "data"
    good = {"image": write_image(root / "img" / "a.png"), "text": "fine"}
    write_image(tmp_path / "outside.png")
    path = write_manifest(root / "m.jsonl", [good, line, good])
    manifest = read_manifest(path, "captioning")
    assert len(manifest) == 2
    [skip] = manifest.skipped
    assert (skip.path, skip.line) == (str(path), 2) and problem in skip.reason
    with pytest.raises(DataError) as err:
        read_manifest(path, "captioning", on_error="raise")
    assert str(err.value).startswith(f"{path}:2: ") and problem in str(err.value)


def test_absolute_paths_inside_the_root_are_allowed_outside_are_not(tmp_path: Path) -> None:
    inside = tmp_path / "data" / "img" / "a.png"
    write_image(inside)
    outside = tmp_path / "elsewhere.png"
    write_image(outside)
    path = write_manifest(tmp_path / "data" / "m.jsonl", [{"image": str(inside), "text": "x"},
                                                          {"image": str(outside), "text": "x"}])
    manifest = read_manifest(path, "captioning")
    assert len(manifest) == 1 and "escapes" in manifest.skipped[0].reason


def test_label_and_audio_checks(tmp_path: Path) -> None:
    write_wav(tmp_path / "wav" / "long.wav", 1.0)
    (tmp_path / "wav" / "junk.wav").write_bytes(b"RIFF not really a wave file")
    asr = read_manifest(write_manifest(tmp_path / "a.jsonl", [
        {"audio": "wav/long.wav", "text": "x"}, {"audio": "wav/junk.wav", "text": "x"},
    ]), "asr", max_audio_seconds=0.5)
    assert [s.line for s in asr.skipped] == [1, 2]
    assert "longer than max_audio_seconds=0.5" in asr.skipped[0].reason
    assert "cannot read audio file" in asr.skipped[1].reason
    cls = read_manifest(write_manifest(tmp_path / "t.jsonl", [{"text": "x", "label": "maybe"}]), "classification",
                        labels=["pos", "neg"])
    assert "unknown label 'maybe'" in cls.skipped[0].reason


# -- decoding ------------------------------------------------------------------------------------
def test_audio_of_any_rate_channels_and_format_decodes_to_mono_float32_at_the_encoder_rate(tmp_path: Path) -> None:
    lines = [
        {"audio": write_wav(tmp_path / "w" / "u8.wav", 0.25, 8000, channels=2, subtype="PCM_U8"), "text": "a"},
        {"audio": write_wav(tmp_path / "w" / "f32.wav", 0.25, 22050, subtype="FLOAT"), "text": "b"},
        {"audio": write_wav(tmp_path / "w" / "x.flac", 0.25, RATE, channels=2), "text": "c"},
    ]
    dataset = TaskDataset(read_manifest(write_manifest(tmp_path / "m.jsonl", lines), "asr", on_error="raise"),
                          "asr", sample_rate=RATE, on_error="raise")
    for item in dataset:
        assert item["audio"].dtype == np.float32 and item["audio"].shape == (RATE // 4,)
        assert item["sample_rate"] == RATE and item["target"] == " " + item["text"]
    assert dataset.lengths() == pytest.approx([0.25, 0.25, 0.25], abs=1e-3)


def test_undecodable_file_is_skipped_at_load_time_and_counted(
    tmp_path: Path, caption_manifest: Path, model: mmtransfer.MultimodalGPT
) -> None:
    (tmp_path / "img" / "2.png").write_bytes(b"\x89PNG but truncated")  # exists: passes the read-time checks
    manifest = read_manifest(caption_manifest, "captioning")
    assert len(manifest) == 4
    dataset = TaskDataset(manifest, "captioning")
    assert isinstance(dataset[2], Skip) and dataset.skipped == [dataset[2]]
    assert dataset.skipped[0].line == 3 and "could not read image" in dataset.skipped[0].reason
    batch = Collator(model, "captioning")([dataset[i] for i in range(4)])
    assert batch["n_skipped"] == 1 and batch["input_ids"].shape[0] == 3 and len(batch["references"]) == 3
    keys = {"task", "references", "sources", "n_skipped", "skipped", "on_error"}
    assert Collator(model, "captioning")([dataset[2]]).keys() == keys
    with pytest.raises(DataError, match=f"{caption_manifest}:3: could not read image"):
        TaskDataset(manifest, "captioning", on_error="raise")[2]


def test_audio_task_needs_a_sample_rate(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sample_rate"):
        TaskDataset([], "asr")


# -- collation -----------------------------------------------------------------------------------
def _target_ids(model: mmtransfer.MultimodalGPT, text: str, eos: bool = True) -> list[int]:
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids + [model.tokenizer.eos_token_id] * eos


def test_collate_masks_labels_on_prompt_and_the_model_trains_on_the_batch(
    tmp_path: Path, model: mmtransfer.MultimodalGPT
) -> None:
    img = write_image(tmp_path / "img" / "a.png")
    manifest = read_manifest(write_manifest(tmp_path / "v.jsonl", [
        {"image": img, "question": "what colour is it?", "answer": ["red", "blue", "red"]},
        {"image": img, "question": "how many?", "answer": "two"},
    ]), "vqa", on_error="raise")
    dataset = TaskDataset(manifest, "vqa")
    batch = Collator(model, "vqa")([dataset[0], dataset[1]])
    assert batch["task"] == "vqa" and batch["references"] == [["red", "blue", "red"], ["two"]]
    assert batch["image"]["pixel_values"].shape == (2, 3, 32, 32)
    placeholder = model.placeholders["image"]
    for row, target in zip(range(2), [" red", " two"]):
        ids, labels = batch["input_ids"][row], batch["labels"][row]
        real = batch["attention_mask"][row].bool()
        expected = _target_ids(model, target)
        assert labels[-len(expected):].tolist() == expected == ids[-len(expected):].tolist()
        assert (labels[: -len(expected)] == IGNORE_INDEX).all()  # padding, <image>, question, "Answer:"
        assert ids[real][0] == placeholder  # the template's <image> leads
    out = model(**{k: v for k, v in batch.items() if k in MODEL_INPUTS})
    assert torch.isfinite(out.loss)


def test_collate_audio_prepends_the_placeholder(tmp_path: Path, model: mmtransfer.MultimodalGPT) -> None:
    lines = [{"audio": write_wav(tmp_path / "w" / f"{i}.wav", 0.1 * (i + 1), seed=i), "text": f"word {i}"}
             for i in range(2)]
    dataset = TaskDataset(read_manifest(write_manifest(tmp_path / "a.jsonl", lines), "asr"), "asr", sample_rate=RATE)
    batch = Collator(model, "asr")([dataset[0], dataset[1]])
    assert batch["audio"]["feature_lengths"].tolist()[0] < batch["audio"]["feature_lengths"].tolist()[1]
    assert (batch["input_ids"] == model.placeholders["audio"]).sum() == 2
    assert torch.isfinite(model(**{k: v for k, v in batch.items() if k in MODEL_INPUTS}).loss)


def test_collate_classification_lm_and_head(tmp_path: Path) -> None:
    samples = [{"text": "a good film", "label": "pos"}, {"text": "bad", "label": "neg"}]
    lm = mmtransfer.build_model(tiny_model_config("gpt2", labels=["neg", "pos"])).eval()
    lm_batch = Collator(lm, "classification")([TaskDataset(samples, "classification")[i] for i in range(2)])
    assert lm_batch["labels"][0, -1].item() == _target_ids(lm, " pos", eos=False)[-1]  # no EOS after a label
    head = mmtransfer.build_model(tiny_model_config("gpt2", labels=["neg", "pos"], classifier="head")).eval()
    batch = Collator(head, "classification")([TaskDataset(samples, "classification")[i] for i in range(2)])
    assert batch["class_labels"].tolist() == [1, 0] and "labels" not in batch
    prompt_ids = head.tokenizer("bad\nLabel:")["input_ids"]
    assert batch["input_ids"][1, -len(prompt_ids):].tolist() == prompt_ids  # prompt only: the label is not input
    assert torch.isfinite(head(**{k: v for k, v in batch.items() if k in MODEL_INPUTS}).loss)
    with pytest.raises(ValueError, match="not one of the model's labels"):
        Collator(head, "classification")([{**samples[0], "label": "meh", "target": " meh", "references": ["meh"]}])


def test_expand_targets_gives_one_item_per_caption(tmp_path: Path) -> None:
    samples = [{"image": "unused.png", "text": ["one", "two"]}, {"image": "unused.png", "text": ["three"]}]
    assert len(TaskDataset(samples, "captioning")) == 2
    expanded = TaskDataset(samples, "captioning", expand_targets=True)
    assert [t for _, t in expanded.entries] == [" one", " two", " three"]


# -- sampler -------------------------------------------------------------------------------------
def test_bucketing_groups_similar_lengths_deterministically() -> None:
    lengths = np.random.default_rng(0).uniform(1, 100, 400)
    sampler = BucketBatchSampler(400, 8, lengths=lengths, seed=3, pool=10)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(400))
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    plain = np.mean([np.ptp(lengths[b]) for b in BucketBatchSampler(400, 8, seed=3)])
    assert spread < plain / 5
    assert list(BucketBatchSampler(400, 8, lengths=lengths, seed=3, pool=10)) == batches
    sampler.set_epoch(1)
    assert list(sampler) != batches
    eval_order = [i for b in BucketBatchSampler(400, 8, lengths=lengths, shuffle=False) for i in b]
    assert list(lengths[eval_order]) == sorted(lengths)


def test_sampler_resumes_mid_epoch_and_shards_over_ranks() -> None:
    sampler = BucketBatchSampler(50, 4, seed=1)
    sampler.set_epoch(2)
    full = list(sampler)
    assert len(full) == 13
    sampler.set_epoch(2, start=5)
    assert len(sampler) == 8 and list(sampler) == full[5:]
    assert list(sampler) == full[5:]  # until the next set_epoch: a DataLoader with workers iterates twice
    sampler.set_epoch(2)
    assert list(sampler) == full
    ranks = [list(BucketBatchSampler(50, 4, seed=1, rank=r, world_size=3)) for r in range(3)]
    assert [len(r) for r in ranks] == [4, 4, 4]
    flat = [i for rank in ranks for batch in rank for i in batch]
    assert len(set(flat)) == len(flat)  # no item on two ranks


# -- feature cache -------------------------------------------------------------------------------
def _count_calls(encoder: torch.nn.Module) -> list[int]:
    calls = [0]
    forward = encoder.forward

    def counted(**kwargs: Any) -> Any:
        calls[0] += kwargs[next(iter(kwargs))].shape[0]
        return forward(**kwargs)

    encoder.forward = counted
    return calls


def test_feature_cache_hits_misses_and_invalidation(
    tmp_path: Path, caption_manifest: Path, model: mmtransfer.MultimodalGPT
) -> None:
    dataset = TaskDataset(read_manifest(caption_manifest, "captioning"), "captioning")
    items = [dataset[i] for i in range(4)]
    encoder = model.encoders["image"]
    calls = _count_calls(encoder)
    cache = FeatureCache(tmp_path / "cache", encoder)
    collate = Collator(model, "captioning", cache=cache)
    first = collate(items[:2] + items[:1])  # a repeat within the batch is encoded once
    assert calls[0] == 2 and cache.computed == 2
    assert first["image"]["features"].shape == (3, 16, 32) and first["image"]["mask"].all()
    again = Collator(model, "captioning", cache=FeatureCache(tmp_path / "cache", encoder))(items[:2] + items[:1])
    assert calls[0] == 2  # nothing recomputed, by a new cache object (a later run) either
    for key in ("features", "mask"):
        assert torch.equal(first["image"][key], again["image"][key])
    assert torch.equal(first["input_ids"], again["input_ids"])
    plain = Collator(model, "captioning")(items[:2])
    with torch.no_grad():
        uncached = model(**{k: v for k, v in plain.items() if k in MODEL_INPUTS}).loss
        cached = model(**{k: v for k, v in collate(items[:2]).items() if k in MODEL_INPUTS}).loss
    assert cached.item() == pytest.approx(uncached.item(), rel=1e-5)

    before = calls[0]  # the uncached forward above ran the encoder too
    write_image(tmp_path / "img" / "0.png", seed=99)  # edit a file: only it misses
    collate([dataset[0], dataset[1]])
    assert calls[0] == before + 1
    key = cache.key(items[0]["file"])
    (tmp_path / "cache" / key[:2] / f"{key}.safetensors").write_bytes(b"damaged")  # recomputed, rewritten
    collate([dataset[0]])
    assert calls[0] == before + 2
    collate([dataset[0]])
    assert calls[0] == before + 2
    with torch.no_grad():
        encoder.model.blocks[0].mlp.fc1.weight.add_(0.1)  # new weights: everything misses
    Collator(model, "captioning", cache=FeatureCache(tmp_path / "cache", encoder))(items[:2])
    assert calls[0] == before + 4


def test_warm_cache_items_are_not_decoded_and_give_the_same_batch(
    tmp_path: Path, caption_manifest: Path, model: mmtransfer.MultimodalGPT, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = FeatureCache(tmp_path / "cache", model.encoders["image"])
    collate = Collator(model, "captioning", cache=cache)
    dataset = TaskDataset(read_manifest(caption_manifest, "captioning"), "captioning", cached=cache.contains)
    cold = collate([dataset[i] for i in range(3)])  # first epoch: decoded and encoded
    decoded = [0]
    real = modalities_module.load_image

    def counting(path: Any) -> Any:
        decoded[0] += 1
        return real(path)

    monkeypatch.setattr(modalities_module, "load_image", counting)
    warm_items = [dataset[i] for i in range(3)]
    assert decoded[0] == 0 and all(x["image"] is None for x in warm_items)
    warm = collate(warm_items)
    assert decoded[0] == 0 and cache.loaded == 3
    for key in ("features", "mask"):
        assert torch.equal(cold["image"][key], warm["image"][key])
    shutil.rmtree(tmp_path / "cache")  # gone between the dataset's check and the collator: decoded there
    evicted = collate(warm_items)
    assert decoded[0] == 3 and torch.allclose(evicted["image"]["features"], cold["image"]["features"], atol=1e-6)


def test_feature_cache_needs_a_frozen_encoder_of_the_model(tmp_path: Path, model: mmtransfer.MultimodalGPT) -> None:
    with pytest.raises(ValueError, match="frozen"):
        FeatureCache(tmp_path, torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="not for the model's encoder"):
        Collator(model, "captioning", cache=FeatureCache(tmp_path, model.encoders["audio"]))


# -- loaders and the mixture ---------------------------------------------------------------------
def _text_loader(
    model: mmtransfer.MultimodalGPT, n: int, prefix: str, batch_size: int = 2
) -> torch.utils.data.DataLoader:
    samples = [{"text": f"{prefix} {i}", "label": "pos"} for i in range(n)]
    dataset = TaskDataset(samples, "classification")
    return make_loader(dataset, Collator(model, "classification"), batch_size, seed=0, bucket=True)


def _stream(mixture: Mixture, steps: int) -> list[tuple[str, list[int]]]:
    return [(name, batch["input_ids"].flatten().tolist()) for name, batch in (next(mixture) for _ in range(steps))]


def test_mixture_follows_weights_cycles_epochs_and_resumes(tmp_path: Path) -> None:
    model = mmtransfer.build_model(tiny_model_config("gpt2", labels=["neg", "pos"])).eval()

    def mixture() -> Mixture:
        loaders = {"a": _text_loader(model, 6, "alpha"), "b": _text_loader(model, 10, "beta")}
        return Mixture(loaders, {"a": 3.0, "b": 1.0}, seed=5)

    mix = mixture()
    names = [name for name, _ in _stream(mix, 400)]
    assert names.count("a") / 400 == pytest.approx(0.75, abs=0.06)
    assert mix.positions["a"][0] >= 90  # 3 batches an epoch: cycled through many epochs

    mix = mixture()
    _stream(mix, 7)
    torch.save(mix.state_dict(), tmp_path / "state.pt")
    expected = _stream(mix, 12)
    resumed = mixture()
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert _stream(resumed, 12) == expected


def test_loader_with_workers_reports_skips_in_batches(
    tmp_path: Path, caption_manifest: Path, model: mmtransfer.MultimodalGPT
) -> None:
    (tmp_path / "img" / "1.png").write_bytes(b"not an image")
    dataset = TaskDataset(read_manifest(caption_manifest, "captioning"), "captioning")
    loader = make_loader(dataset, Collator(model, "captioning"), batch_size=2, shuffle=False, num_workers=1)
    batches = list(loader)
    assert [b["n_skipped"] for b in batches] == [1, 0]
    assert batches[0]["skipped"][0].line == 2 and batches[0]["input_ids"].shape[0] == 1


def test_each_audio_clip_is_decoded_once(tmp_path: Path, model: mmtransfer.MultimodalGPT,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading a manifest, building a batch and encoding it decode a clip once; so does ``transcribe``."""
    lines = [{"audio": write_wav(tmp_path / "w" / f"{i}.wav", 0.2, rate=8000, seed=i), "text": f"word {i}"}
             for i in range(2)]
    decoded: list[str] = []
    real = sf.read
    monkeypatch.setattr(sf, "read", lambda file, *a, **k: decoded.append(str(file)) or real(file, *a, **k))
    dataset = TaskDataset(read_manifest(write_manifest(tmp_path / "a.jsonl", lines), "asr"), "asr", sample_rate=RATE)
    batch = Collator(model, "asr")([dataset[0], dataset[1]])
    model(**{k: v for k, v in batch.items() if k in MODEL_INPUTS})
    files = sorted(str(tmp_path / x["audio"]) for x in lines)
    assert sorted(decoded) == files
    decoded.clear()
    model.transcribe(files, max_new_tokens=2)
    assert sorted(decoded) == files


def test_media_root_lets_manifests_live_apart_from_their_media(tmp_path: Path) -> None:
    """Images kept in one folder, manifests and conversation files in another: ``media_root`` is where media paths
    resolve and must stay; without it they escape the data file's folder and are skipped."""
    from mmtransfer.data.conversations import read_conversations
    from mmtransfer.train import load_train_config

    media, lists = tmp_path / "media", tmp_path / "lists"
    (media / "img").mkdir(parents=True)
    lists.mkdir()
    Image.new("RGB", (8, 8)).save(media / "img" / "a.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "outside.png")
    rows = [{"image": "img/a.png", "text": "relative"}, {"image": str(media / "img" / "a.png"), "text": "absolute"},
            {"image": str(tmp_path / "outside.png"), "text": "outside the root"}]
    (lists / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    kept = read_manifest(lists / "train.jsonl", "captioning", media_root=media)
    assert [s["text"] for s in kept] == [["relative"], ["absolute"]]
    assert [s["image"] for s in kept] == [str(media / "img" / "a.png")] * 2
    assert kept.skipped[0].line == 3
    assert f"escapes the media root {media}" in kept.skipped[0].reason
    assert [s["text"] for s in read_manifest(lists / "train.jsonl", "captioning")] == []  # every path escapes lists/
    chat = [{"messages": [{"role": "user", "content": [{"type": "image", "image": "img/a.png"}, {"type": "text",
                                                                                               "text": "what?"}]},
                          {"role": "assistant", "content": "black"}]}]
    (lists / "chat.jsonl").write_text(json.dumps(chat[0]) + "\n")
    [sample] = read_conversations(lists / "chat.jsonl", media_root=media)
    assert sample["messages"][0]["content"][0]["image"] == str(media / "img" / "a.png")
    assert len(read_conversations(lists / "chat.jsonl")) == 0
    recipe = tmp_path / "recipes" / "r.yaml"  # a recipe's media_root is relative to the recipe, like its manifests
    recipe.parent.mkdir()
    recipe.write_text("model: {decoder: {model: gpt2}}\nstages: [{name: s, steps: 1}]\n"
                      "data: [{task: captioning, train: ../lists/train.jsonl, media_root: ../media}]\n")
    assert load_train_config(recipe).data[0].media_root == str(media)
