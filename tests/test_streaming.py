"""Streaming sources (WebDataset shards, Hugging Face datasets): they train, split across ranks x workers with no
sample twice in an epoch, resume at the exact sample, count bad samples as ``shard:key`` and fail clearly on bad
shards / columns; 2-process DDP streams disjoint shards."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("webdataset")
pytest.importorskip("datasets")

from mmtransfer.bundled import RECIPES  # noqa: E402
from mmtransfer.data import Mixture, TaskDataset  # noqa: E402
from mmtransfer.data.convert import write_hf_dir, write_parquet, write_shards  # noqa: E402
from mmtransfer.data.records import Blob, Skip  # noqa: E402
from mmtransfer.data.samples import ToSample  # noqa: E402
from mmtransfer.data.streaming import StreamingDataset, make_stream_loader, open_source  # noqa: E402
from mmtransfer.errors import ConfigError, DataError  # noqa: E402
from mmtransfer.synthetic import write_all  # noqa: E402
from mmtransfer.tasks import get_task  # noqa: E402
from mmtransfer.train import checkpoint, load_train_config, train  # noqa: E402
from tests.runs import interrupt_then_resume  # noqa: E402
from tests.test_train import _losses, _overrides  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CAPTIONS = RECIPES / "captioning-tiny.yaml"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("streaming")
    syn = write_all(root / "syn", n_train=24, n_test=4)
    captions = syn / "shapes" / "captions_train.jsonl"
    return {
        "syn": syn,
        "keys": {f"{n:08d}" for n in range(1, 25)},
        "captions": write_shards(captions, "captioning", root / "wds-cap", per_shard=4),  # 6 shards
        "few": write_shards(captions, "captioning", root / "wds-few", per_shard=9),  # 3 shards < 4 slots
        "fives": write_shards(captions, "captioning", root / "wds-fives", per_shard=5),  # 5, 5, 5, 5, 4
        "asr": write_shards(syn / "tones" / "asr_train.jsonl", "asr", root / "wds-asr", per_shard=8),
        "chat": write_shards(syn / "chat_mixed_train.jsonl", "chat", root / "wds-chat", per_shard=3),
        "parquet": write_parquet(captions, "captioning", root / "pq", per_file=6),
        "hfdir": write_hf_dir(captions, "captioning", root / "hfdir", paths=True),
    }


def _keys(items: list[Any]) -> dict[str, Any]:  # a collator that keeps only what the tests look at
    return {"keys": [x["source"][1] for x in items if not isinstance(x, Skip)],
            "sources": [f"{Path(x['source'][0]).name}:{x['source'][1]}" for x in items if not isinstance(x, Skip)],
            "skipped": [str(x) for x in items if isinstance(x, Skip)]}


def _dataset(kind: str, spec: str, *, rank: int = 0, world: int = 1, workers: int = 0, batch: int = 5,
             task: str = "captioning", on_error: str = "skip", columns: dict | None = None) -> StreamingDataset:
    t = get_task(task)
    decoder = TaskDataset([], t, sample_rate=16000, on_error=on_error)
    return StreamingDataset(open_source(kind, spec, t, columns), ToSample(t), decoder, _keys, batch, seed=3,
                            shuffle_buffer=4, rank=rank, world_size=world, num_workers=workers, on_error=on_error)


def _epoch(dataset: StreamingDataset, workers: int, epoch: int = 0) -> list[dict[str, Any]]:
    dataset.set_position(epoch)
    return [b for b in make_stream_loader(dataset, workers)]


def _train(data: dict, out: Path, kind: str, spec: Any, *extra: str, steps: int = 3, recipe: Path = CAPTIONS) -> Path:
    args = _overrides(recipe, data["syn"], out, steps) + [
        f"data.0.source={kind}", f"data.0.train={spec}", "data.0.eval=null", "batch_size=4",
        "data.0.shuffle_buffer=4", "data.0.bucket=false", *extra]
    train(load_train_config(recipe, args))
    return out


# -- every source trains --------------------------------------------------------------------------------
SOURCES = {  # id: (recipe, source, spec from the fixture)
    "wds-captions": (CAPTIONS, "webdataset", lambda d: str(d["captions"][0].parent / "train-{000000..000005}.tar")),
    "wds-audio": (RECIPES / "asr-tiny.yaml", "webdataset", lambda d: str(d["asr"][0].parent)),
    "wds-messages": (RECIPES / "chat-tiny.yaml", "webdataset", lambda d: str(d["chat"][0].parent / "*.tar")),
    "hf-parquet-bytes": (CAPTIONS, "hf", lambda d: str(d["parquet"][0].parent)),
    "hf-dir-paths": (CAPTIONS, "hf", lambda d: str(d["hfdir"])),
}


@pytest.mark.parametrize("name", list(SOURCES))
def test_streaming_source_trains(name: str, data: dict, tmp_path: Path) -> None:
    recipe, kind, spec = SOURCES[name]
    extra = ["data.1.eval=null", "data.1.weight=0.01"] if name == "wds-messages" else []  # its JSONL 2nd set
    if name == "hf-parquet-bytes":  # an eval split from the same kind of source, read into memory
        extra = [f"data.0.eval={spec(data)}", "data.0.max_eval_samples=2", "data.0.eval_split=train"]
    if name == "hf-dir-paths":  # image paths: the feature cache of a frozen encoder works, filled by 2 workers
        extra = ["model.trainable.image_encoder=frozen", f"feature_cache={tmp_path / 'cache'}", "num_workers=2"]
    out = _train(data, tmp_path / "run", kind, spec(data), *extra, recipe=recipe, steps=2)  # workers: below
    losses = _losses(out)
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(loss)) for _, loss in losses)
    assert checkpoint.read_state(out / "checkpoint")["data"]["skipped"] == 0
    if name == "hf-dir-paths":
        assert len(list((tmp_path / "cache").rglob("*.safetensors"))) >= 8  # 2 steps x 4 images
    if name == "hf-parquet-bytes":
        rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
        assert any("captioning/cider_d" in row.get("eval", {}) for row in rows), rows[-1]


def test_webdataset_messages_carry_their_members(data: dict) -> None:
    chat = get_task("chat")
    source = open_source("webdataset", str(data["chat"][0].parent), chat)
    media = []
    for shard in range(len(source.shards())):
        for key, raw in source.records(shard):
            sample = ToSample(chat)(source.parse(raw, "s.tar", key))
            media += [(key, p[p["type"]]) for m in sample["messages"] for p in m["content"] if p["type"] != "text"]
    assert {type(blob) for _, blob in media} == {Blob} and {b.name.rsplit(".", 1)[1] for _, b in media} >= {"png",
                                                                                                          "wav"}
    assert all(blob.name.startswith(f"s.tar:{key}.") and blob.data for key, blob in media)



def test_img2dataset_layout_reads_the_caption_from_txt_or_json(data: dict, tmp_path: Path) -> None:
    """What img2dataset writes: ``key.jpg``, ``key.json`` (url, status, sizes, ... and ``caption``) and, by
    default, ``key.txt``; a shard without the ``.txt`` members takes the caption from the JSON."""
    from PIL import Image

    jpg = io.BytesIO()
    Image.open(data["syn"] / "shapes" / "images" / "train_00000.png").convert("RGB").save(jpg, "JPEG")
    shard = tmp_path / "00000.tar"
    with tarfile.open(shard, "w") as tar:
        for n, caption in enumerate(["a red circle", "a blue square"]):
            key = f"0000000{n:02d}"
            meta = {"url": f"https://example.com/{n}.jpg", "key": key, "status": "success", "error_message": None,
                    "width": 64, "height": 64, "original_width": 640, "original_height": 480, "exif": "{}",
                    "sha256": "0" * 64, "caption": caption}
            members = {"jpg": jpg.getvalue(), "json": json.dumps(meta).encode()} | (
                {"txt": caption.encode()} if n == 0 else {})
            for ext, body in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(body)
                tar.addfile(info, io.BytesIO(body))
    captioning = get_task("captioning")
    source = open_source("webdataset", str(shard), captioning)
    samples = [ToSample(captioning)(source.parse(raw, "s", key)) for key, raw in source.records(0)]
    assert [s["text"] for s in samples] == [["a red circle"], ["a blue square"]]
    assert [s["image"].name for s in samples] == ["s:000000000.jpg", "s:000000001.jpg"]
    assert samples[0]["image"].open("image").size == (64, 64)


def test_hf_arrow_files_stream_like_parquet(data: dict) -> None:
    """A glob of ``.arrow`` files (here a ``save_to_disk`` directory's, image paths relative to it)."""
    spec = str(data["hfdir"] / "*.arrow")
    batches = _epoch(_dataset("hf", spec, workers=0), 0)
    assert len([k for b in batches for k in b["keys"]]) == 24 and not any(b["skipped"] for b in batches)

def test_hf_messages_name_a_path_or_another_column(data: dict, tmp_path: Path) -> None:
    """Conversations in a Parquet file: a media part holds a path (relative to the dataset) or names a column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    chat = get_task("chat")
    write_parquet(data["syn"] / "chat_mixed_train.jsonl", "chat", tmp_path / "paths", paths=True)
    png = next(data["syn"].rglob("*.png")).read_bytes()
    ask = [{"type": "image", "image": "photo"}, {"type": "text", "text": "What is it?"}]
    answer = [{"type": "text", "text": "A shape."}]
    rows = [{"photo": png, "messages": [{"role": "user", "content": ask}, {"role": "assistant", "content": answer}]}]
    (tmp_path / "col").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "col" / "train-000000.parquet")
    for spec, want in ((tmp_path / "paths", str), (tmp_path / "col", Blob)):
        source = open_source("hf", str(spec), chat)
        parts = [p for shard in range(len(source.shards())) for key, raw in source.records(shard)
                 for m in ToSample(chat)(source.parse(raw, "s", key))["messages"] for p in m["content"]]
        assert all(None not in p.values() for p in parts)  # the nulls Arrow fills absent struct keys with
        media = [p[p["type"]] for p in parts if p["type"] != "text"]
        assert media and all(isinstance(x, want) for x in media), (spec, media)
        if want is str:
            assert all(os.path.isabs(x) and os.path.isfile(x) for x in media)
        else:
            assert media == [Blob("s:0.photo", png)]  # a Parquet row's key: its row number

# -- split across ranks x workers -----------------------------------------------------------------------
@pytest.mark.parametrize("which", ["captions", "few", "parquet"])
def test_two_ranks_two_workers_see_each_sample_once_per_epoch(which: str, data: dict) -> None:
    kind, spec = ("hf", str(data["parquet"][0].parent)) if which == "parquet" else (
        "webdataset", str(data[which][0].parent))
    for epoch in (0, 1):
        seen = []
        for rank in (0, 1):
            batches = _epoch(_dataset(kind, spec, rank=rank, world=2, workers=2), 2, epoch)
            seen.append([k for b in batches for k in b["sources"]])
        every = seen[0] + seen[1]
        assert len(every) == len(set(every)) == 24, (which, epoch, seen)
        assert not set(seen[0]) & set(seen[1])
        if which != "parquet":  # shard keys are the manifest's line numbers (a parquet row's: its row in the file)
            assert {k.split(":")[1] for k in every} == data["keys"]


# -- exact resume ---------------------------------------------------------------------------------------
def _mixture(spec: str, workers: int) -> Mixture:
    return Mixture({"a": make_stream_loader(_dataset("webdataset", spec, workers=workers, batch=3), workers)},
                   {"a": 1.0}, seed=0)


@pytest.mark.parametrize("workers", [0, 2])
def test_interrupted_then_resumed_key_sequence_equals_the_uninterrupted_one(workers: int, data: dict) -> None:
    spec = str(data["captions"][0].parent)
    mix = _mixture(spec, workers)
    full = [next(mix)[1]["keys"] for _ in range(13)]  # 8 batches per epoch (two workers: 4 + 4): into epoch 2
    assert len({k for keys in full[:8] for k in keys}) == 24
    for cut in (3, 9):
        mix = _mixture(spec, workers)
        resumed = [next(mix)[1]["keys"] for _ in range(cut)]
        state = json.loads(json.dumps(mix.state_dict()["streams"]))  # plain data: it goes into checkpoints
        again = _mixture(spec, workers)
        again.load_state_dict(mix.state_dict() | {"streams": state})
        resumed += [next(again)[1]["keys"] for _ in range(13 - cut)]
        assert resumed == full, (cut, resumed, full)


def test_resume_with_other_workers_restarts_the_epoch_with_a_warning(data: dict,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    spec = str(data["captions"][0].parent)
    mix = _mixture(spec, 2)
    [next(mix) for _ in range(3)]
    other = _mixture(spec, 0)
    other.load_state_dict(mix.state_dict())
    assert next(other)[1]["keys"] == next(_mixture(spec, 0))[1]["keys"]  # epoch 0 from its start
    assert "saved with [world_size, num_workers] = [1, 2], this run has [1, 1]: epoch 0 starts over" in caplog.text


def test_resumed_training_run_is_exact_with_workers(data: dict, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    spec = str(data["captions"][0].parent)
    """Checkpoint at step 3 (worker 0 made batches 1 and 3, worker 1 batch 2), interrupted at 5, resumed from 3."""
    full = _losses(_train(data, tmp_path / "full", "webdataset", spec, "num_workers=2", steps=5))
    args = _overrides(CAPTIONS, data["syn"], tmp_path / "cut", 5) + [
        "data.0.source=webdataset", f"data.0.train={spec}", "data.0.eval=null", "batch_size=4",
        "data.0.shuffle_buffer=4", "data.0.bucket=false", "num_workers=2", "save_every=3"]
    interrupt_then_resume(load_train_config(CAPTIONS, args), monkeypatch, at_batch=5)
    assert dict(_losses(tmp_path / "cut")) == dict(full)


# -- bad input ------------------------------------------------------------------------------------------
def _tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def _bad_shard(data: dict, directory: Path) -> Path:
    directory.mkdir()
    png = (data["syn"] / "shapes" / "images" / "train_00000.png").read_bytes()
    members = [(f"k{i}.png", png) for i in range(8)] + [(f"k{i}.txt", b"a red circle") for i in range(8)]
    members = sorted(members)
    members[members.index(("k2.png", png))] = ("k2.png", b"not a png")  # undecodable: skipped when decoded
    members.insert(members.index(("k5.png", png)) + 1, ("k5.xyz", b"?"))  # unknown extension: k5 skipped
    members.append(("k7.json", b"{not json"))  # malformed JSON: k7 skipped
    return _tar(directory / "bad-000000.tar", members)


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_samples_in_a_shard_are_skipped_and_counted_as_shard_key(workers: int, data: dict) -> None:
    shard = _bad_shard(data, Path(data["syn"]).parent / f"bad{workers}")
    batches = _epoch(_dataset("webdataset", str(shard), workers=workers, batch=3), workers)
    kept = sorted(k for b in batches for k in b["keys"])
    skipped = sorted(s for b in batches for s in b["skipped"])
    assert kept == ["k0", "k1", "k3", "k4", "k6"]
    assert [s.split(": ")[0] for s in skipped] == [f"{shard}:k2", f"{shard}:k5", f"{shard}:k7"]
    assert "could not read image file" in skipped[0] and "unknown extension .xyz" in skipped[1] and "JSON" in skipped[2]



def test_a_bad_sample_gives_the_same_skip_every_epoch(data: dict, tmp_path: Path) -> None:
    """Skip messages hold no object addresses: the skip list of a dataset does not grow epoch after epoch."""
    wav = next(data["syn"].rglob("*.wav")).read_bytes()
    members = [("a0.wav", wav), ("a0.txt", b"one"), ("a1.wav", b"RIFF not a wav"), ("a1.txt", b"two")]
    shard = _tar(tmp_path / "audio-000000.tar", members)
    dataset = _dataset("webdataset", str(shard), task="asr", batch=2)
    epochs = [[s for b in _epoch(dataset, 0, epoch) for s in b["skipped"]] for epoch in (0, 1, 2)]
    assert epochs[0] == epochs[1] == epochs[2] and len(epochs[0]) == 1, epochs
    assert len(dataset.items.skipped) == 1
    dataset = _dataset("webdataset", str(_bad_shard(data, tmp_path / "png")), batch=3)  # an undecodable png
    first, second = (sorted(s for b in _epoch(dataset, 0, epoch) for s in b["skipped"]) for epoch in (0, 1))
    assert first == second and len(dataset.items.skipped) == 3  # k2, k5, k7 once each


def test_a_decompression_bomb_in_a_shard_is_a_counted_skip(data: dict, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    shard = _bad_shard(data, tmp_path / "bomb")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64 // 3)  # the 64 px scenes: over 2x the limit
    batches = _epoch(_dataset("webdataset", str(shard), batch=3), 0)
    assert not [k for b in batches for k in b["keys"]]
    bombs = sorted(s.split(": ")[0] for b in batches for s in b["skipped"] if "too large to decode" in s)
    assert bombs == [f"{shard}:k{i}" for i in (0, 1, 3, 4, 6)]  # k2 is no png, k5 / k7 are skipped unread


def test_decoded_audio_without_a_sampling_rate_is_a_clear_error() -> None:
    blob = Blob("s:0.audio", array=np.zeros(1600, dtype=np.float32))
    for read in (blob.seconds, lambda: blob.open("audio", 16000)):
        with pytest.raises(ValueError, match=r"decoded audio s:0.audio has no sampling_rate"):
            read()
    assert Blob("s:1.audio", array=np.zeros(1600), rate=16000).seconds() == 0.1


def test_gzipped_shards_read_whole_and_a_cut_one_is_a_counted_skip(data: dict, tmp_path: Path) -> None:
    import gzip

    whole = gzip.compress(data["captions"][0].read_bytes())
    (tmp_path / "whole-000000.tar.gz").write_bytes(whole)
    batches = _epoch(_dataset("webdataset", str(tmp_path / "whole-000000.tar.gz"), batch=2), 0)
    assert len([k for b in batches for k in b["keys"]]) == 4 and not any(b["skipped"] for b in batches)
    (tmp_path / "cut-000000.tar.gz").write_bytes(whole[: len(whole) * 3 // 4])
    batches = _epoch(_dataset("webdataset", str(tmp_path / "cut-000000.tar.gz"), batch=2), 0)
    assert [s for b in batches for s in b["skipped"] if "<rest of shard>" in s]

def test_bad_samples_are_counted_in_a_training_run(data: dict, tmp_path: Path) -> None:
    shard = _bad_shard(data, tmp_path / "bad")
    out = _train(data, tmp_path / "run", "webdataset", str(shard), steps=2)  # one epoch: 8 entries, 2 batches
    assert checkpoint.read_state(out / "checkpoint")["data"]["skipped"] == 3


@pytest.mark.parametrize("workers", [0, 2])
def test_truncated_shard_is_a_counted_skip_or_a_clear_error(workers: int, data: dict, tmp_path: Path) -> None:
    whole = data["captions"][0].read_bytes()
    shard = tmp_path / "cut-000000.tar"
    shard.write_bytes(whole[: len(whole) // 2 + 100])  # inside a member
    batches = _epoch(_dataset("webdataset", str(shard), workers=workers, batch=2), workers)
    assert 0 < sum(len(b["keys"]) for b in batches) < 4
    [skip] = [s for b in batches for s in b["skipped"] if "<rest of shard>" in s]
    assert skip.startswith(f"{shard}:<rest of shard>: cannot read the shard past here")
    with pytest.raises(DataError, match=re.escape(f"{shard}:")):  # the cut sample, or the rest of the shard
        _epoch(_dataset("webdataset", str(shard), workers=workers, on_error="raise"), workers)


def test_missing_shard_is_a_clear_error(data: dict) -> None:
    spec = str(data["captions"][0].parent / "train-{000000..000009}.tar")  # only 6 exist
    with pytest.raises(FileNotFoundError, match="shard not found: .*train-000006.tar"):
        _dataset("webdataset", spec)


def test_missing_or_wrong_type_columns_are_config_errors_and_bad_cells_skips(tmp_path: Path, data: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    png = (data["syn"] / "shapes" / "images" / "train_00000.png").read_bytes()
    pq.write_table(pa.table({"img": [png, None, png], "caption": ["a red circle", "two", None], "n": [1, 2, 3]}),
                   tmp_path / "x.parquet")
    spec = str(tmp_path / "x.parquet")
    with pytest.raises(ConfigError, match=r"columns.image: no column 'image' in .*x.parquet \(columns: img, "):
        _dataset("hf", spec)
    with pytest.raises(ConfigError, match="columns.image: column 'n' holds .*int64.*needs bytes, paths"):
        _dataset("hf", spec, columns={"image": "n", "text": "caption"})
    with pytest.raises(ConfigError, match="columns.text: column 'img' holds .*binary.*needs strings"):
        _dataset("hf", spec, columns={"image": "img", "text": "img"})
    with pytest.raises(ConfigError, match="columns.colour: task 'captioning' has no field 'colour'"):
        _dataset("hf", spec, columns={"image": "img", "colour": "caption"})
    [batch] = _epoch(_dataset("hf", spec, columns={"image": "img", "text": "caption"}), 0)
    assert batch["keys"] == ["0"]
    assert sorted(batch["skipped"]) == [f"{spec}:1: 'image' is null ({spec}:1.img)",
                                        f"{spec}:2: 'text' must be a string, got NoneType"]



def test_parquet_files_that_disagree_with_the_first_are_config_errors(data: dict, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    png = (data["syn"] / "shapes" / "images" / "train_00000.png").read_bytes()
    pq.write_table(pa.table({"image": [png], "text": ["a red circle"]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"image": [png], "text": [1]}), tmp_path / "b.parquet")
    with pytest.raises(ConfigError, match=r"columns.text: column 'text' is int64 in .*b.parquet but string in "):
        _dataset("hf", str(tmp_path))
    (tmp_path / "b.parquet").unlink()
    pq.write_table(pa.table({"image": [png]}), tmp_path / "c.parquet")
    with pytest.raises(ConfigError, match=r"columns.text: .*c.parquet has no column 'text' \(columns: image\)"):
        _dataset("hf", str(tmp_path))


def test_a_directory_of_hub_style_splits_gives_the_split_asked_for(data: dict, tmp_path: Path) -> None:
    """``data/train-00000-of-00001.parquet`` beside ``data/validation-...``: training reads train only."""
    root = tmp_path / "hub"
    for split, per_file in (("train", 12), ("validation", 24)):
        for n, path in enumerate(write_parquet(data["syn"] / "shapes" / "captions_train.jsonl", "captioning",
                                               tmp_path / split, per_file=per_file)):
            target = root / "data" / f"{split}-{n:05d}-of-{24 // per_file:05d}.parquet"
            target.parent.mkdir(parents=True, exist_ok=True)
            path.rename(target)
    assert _dataset("hf", str(root)).source.shards() == [str(root / "data" / f"train-0000{n}-of-00002.parquet")
                                                        for n in (0, 1)]
    one = open_source("hf", str(root), get_task("captioning"), split="validation")
    assert [Path(p).name for p in one.shards()] == ["validation-00000-of-00001.parquet"]
    with pytest.raises(ConfigError, match=r"holds the splits \['train', 'validation'\], not 'test'"):
        open_source("hf", str(root), get_task("captioning"), split="test")

@pytest.mark.parametrize("fmt", ["webdataset", "parquet", "hf-dir"])
def test_make_shards_writes_what_the_sources_read(fmt: str, data: dict, tmp_path: Path) -> None:
    from mmtransfer.cli import main

    manifest = data["syn"] / "tones" / "asr_train.jsonl"
    assert main(["make-shards", str(manifest), str(tmp_path / "out"), "--task", "asr", "--format", fmt,
                 "--per-shard", "10"]) == 0
    source = open_source("webdataset" if fmt == "webdataset" else "hf", str(tmp_path / "out"), get_task("asr"))
    samples = [ToSample(get_task("asr"))(source.parse(raw, "s", key))
               for i in range(len(source.shards())) for key, raw in source.records(i)]
    assert len(samples) == 24 and all(s["duration"] > 0 and s["text"] for s in samples)


def test_recipe_keys_are_validated(data: dict) -> None:
    args = _overrides(CAPTIONS, data["syn"], Path("unused"), 1)
    with pytest.raises(ConfigError, match=r"data\[0\].source: 'tar' is not one of jsonl, webdataset, hf"):
        load_train_config(CAPTIONS, [*args, "data.0.source=tar"])
    with pytest.raises(ConfigError, match=r"data\[0\].bucket: .*not with source webdataset"):
        load_train_config(CAPTIONS, [*args, "data.0.source=webdataset", "data.0.bucket=true"])
    with pytest.raises(ConfigError, match=r"data\[0\].columns: only for source webdataset or hf"):
        load_train_config(CAPTIONS, [*args, "data.0.columns={text: caption}"])


# -- DDP ------------------------------------------------------------------------------------------------
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_two_process_ddp_streams_disjoint_shards_and_resumes(data: dict, tmp_path: Path) -> None:
    """5 shards (5, 5, 5, 5, 4 captions), 2 ranks: 3 shards for one rank and 2 for the other each epoch, so their
    epochs differ in length. Trained 4 steps, then resumed to 7 in the same processes (rank 0 at the end of its
    epoch 0, rank 1 inside its epoch 1): in every epoch no sample is seen twice, and epoch 0 covers the set, so
    each rank went on from its own position."""
    spec = str(data["fives"][0].parent / "train-{000000..000004}.tar")
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    args = _overrides(CAPTIONS, data["syn"], tmp_path / "ddp", 7) + [
        "data.0.source=webdataset", f"data.0.train={spec}", "data.0.eval=null", "batch_size=4",
        "data.0.shuffle_buffer=4"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           str(ROOT / "tests" / "stream_ddp_worker.py"), str(CAPTIONS), str(tmp_path / "sums"), "4", "7", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / "sums" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["params"] == ranks[1]["params"]
    assert [len(r["samples"]) for r in ranks] == [7, 7]
    for epoch in (0, 1):
        seen = [k for r in ranks for b in r["samples"] if b["epoch"] == epoch for k in b["keys"]]
        assert len(seen) == len(set(seen)), (epoch, ranks)
        assert epoch == 1 or set(seen) == data["keys"], ranks


def test_each_rank_keeps_its_own_skip_count_and_the_checkpoint_their_sum(monkeypatch: pytest.MonkeyPatch) -> None:
    """``TrainData.state_dict`` under 2 processes (the gather stands in for the other rank's answer)."""
    import accelerate.utils

    from mmtransfer.train.data import TrainData

    restored: list[Any] = []

    def data(rank: int, skipped: int) -> TrainData:
        mixture = SimpleNamespace(state_dict=lambda: {"position": rank}, load_state_dict=restored.append)
        out = TrainData(mixture, {}, ("loss", False), rank=rank, world_size=2)  # type: ignore[arg-type]
        out.skipped = skipped
        return out

    monkeypatch.setattr(accelerate.utils, "gather_object", lambda obj: [obj[0], ({"position": 1}, 5)])
    state = data(0, 3).state_dict()
    assert state["skipped"] == 8 and state["rank_skipped"] == [3, 5]
    assert state["rank_mixtures"] == [{"position": 0}, {"position": 1}]
    loaded = [data(rank, 0) for rank in (0, 1, 2)]
    for d in loaded:
        d.load_state_dict(state)
    assert [d.skipped for d in loaded] == [3, 5, 8]
    assert restored == [{"position": 0}, {"position": 1}, {"position": 0}]  # rank 2: none of its own


def test_the_source_registry_serves_every_streaming_source_a_recipe_may_name() -> None:
    """The recipe check (``SOURCES``, before torch loads) and the readers registered in ``SOURCE_TYPES`` agree;
    an unknown kind is refused with the registered ones listed."""
    from mmtransfer.data.source import SOURCE_TYPES
    from mmtransfer.data.sources import SOURCES
    from mmtransfer.errors import UnknownNameError

    assert {"jsonl", *SOURCE_TYPES.names()} == set(SOURCES)
    with pytest.raises(UnknownNameError, match="unknown source 'tar'; valid sources: hf, webdataset"):
        open_source("tar", "x", get_task("captioning"))


def test_a_registered_source_can_be_named_in_a_recipe(data: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``Source`` registered under a new name is accepted by the recipe check and opened by ``open_source``."""
    from mmtransfer.data import source as source_module
    from mmtransfer.data.source import SOURCE_TYPES
    from mmtransfer.registry import Registry

    registry = Registry("source")
    for name in SOURCE_TYPES.names():
        registry.register(name)(SOURCE_TYPES.get(name))
    registry.register("tars")(lambda spec, task, columns, split, where: ("opened", spec))
    monkeypatch.setattr(source_module, "SOURCE_TYPES", registry)
    monkeypatch.setattr(sys.modules["mmtransfer.data.streaming"], "SOURCE_TYPES", registry)
    args = _overrides(CAPTIONS, data["syn"], Path("unused"), 1)
    with pytest.raises(ConfigError, match=r"data\[0\].source: 'tar' is not one of jsonl, webdataset, hf, tars"):
        load_train_config(CAPTIONS, [*args, "data.0.source=tar"])
    assert load_train_config(CAPTIONS, [*args, "data.0.source=tars", "data.0.train=shards"]).data[0].source == "tars"
    assert open_source("tars", "shards", get_task("captioning")) == ("opened", "shards")
