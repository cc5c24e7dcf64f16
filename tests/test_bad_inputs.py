"""Bad inputs: every kind of broken file, text or manifest line ends in a clear error naming the file and
line, or is skipped and counted (``on_error``), at the level it is found (manifest, decoding, collation) and
through a short ``train()`` run. Odd but valid inputs (rates, channels, sample formats, image modes) decode.
"""

from __future__ import annotations

import io
import json
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

import mmtransfer
from mmtransfer.data import MODEL_INPUTS, Collator, DataError, Skip, TaskDataset, read_manifest
from mmtransfer.data.records import MAX_LOGGED_SKIPS
from mmtransfer.errors import NoSamplesError
from mmtransfer.io import load_audio, load_image
from mmtransfer.train import train, train_config_from_dict
from tests.tiny_models import tiny_model_config

RATE = 16000
LABELS = ["neg", "pos"]
LONG_TEXT = " ".join(["word"] * 2000)  # far past the tiny decoder's 256 positions


# -- files ------------------------------------------------------------------------------------------
def _noise_image(size: int = 24, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8))


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` RGB pixels (a decompression bomb's signature)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _wav_bytes(wave: np.ndarray, rate: int, subtype: str = "PCM_16", fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, rate, subtype=subtype, format=fmt)
    return buf.getvalue()


def _noise(seconds: float, rate: int = RATE, channels: int = 1) -> np.ndarray:
    shape = (int(seconds * rate), channels) if channels > 1 else (int(seconds * rate),)
    return np.random.default_rng(0).uniform(-0.5, 0.5, shape).astype(np.float32)


JPEG = _encoded(_noise_image(), "JPEG")
PNG = _encoded(_noise_image(), "PNG")
FLAC = _wav_bytes(_noise(1.0), RATE, fmt="FLAC")
WAV = _wav_bytes(_noise(0.3), RATE)

IMAGE_FILES: dict[str, bytes | None] = {  # None: not written (missing)
    "good.png": PNG,
    "good.jpg": JPEG,
    "palette.png": _encoded(_noise_image().convert("P"), "PNG"),
    "palette_transparent.gif": _encoded(Image.new("P", (8, 8), 3), "GIF"),
    "grayscale.png": _encoded(_noise_image().convert("L"), "PNG"),
    "cmyk.jpg": _encoded(_noise_image().convert("CMYK"), "JPEG"),
    "rgba.png": _encoded(Image.new("RGBA", (8, 8), (255, 0, 0, 0)), "PNG"),
    "one_pixel.png": _encoded(Image.new("RGB", (1, 1), "red"), "PNG"),
    "gray16.png": _encoded(Image.new("I;16", (8, 8), 40000), "PNG"),
    "missing.png": None,
    "zero_bytes.png": b"",
    "truncated.jpg": JPEG[:300],
    "truncated.png": PNG[:300],
    "corrupt.png": PNG[:8] + b"this is not a PNG chunk stream" * 4,
    "not_an_image.jpg": b"plain text pretending to be a JPEG",
    "bomb.png": png_header(20000, 20000),  # 400 Mpx: PIL's DecompressionBombError
    "big.png": png_header(12000, 12000),  # 144 Mpx: over MAX_IMAGE_PIXELS, under twice it (PIL only warns)
}

AUDIO_FILES: dict[str, bytes | None] = {
    "good.wav": WAV,
    "good.flac": FLAC,
    "rate8k.wav": _wav_bytes(_noise(0.3, 8000), 8000),
    "rate48k.wav": _wav_bytes(_noise(0.3, 48000), 48000),
    "stereo.wav": _wav_bytes(_noise(0.3, channels=2), RATE),
    "pcm_u8.wav": _wav_bytes(_noise(0.3), RATE, "PCM_U8"),
    "float.wav": _wav_bytes(_noise(0.3), RATE, "FLOAT"),
    "double.wav": _wav_bytes(_noise(0.3, 22050), 22050, "DOUBLE"),
    "truncated_data.wav": WAV[: len(WAV) // 2],  # header promises more samples than follow: read what is there
    "missing.wav": None,
    "zero_bytes.wav": b"",
    "zero_length.wav": _wav_bytes(np.zeros(0, np.float32), RATE),
    "truncated_header.wav": WAV[:30],
    "truncated.flac": FLAC[:2000],  # the header (and so the duration) survives, the frames do not
    "nan.wav": _wav_bytes(np.full(4000, np.nan, np.float32), RATE, "FLOAT"),
    "inf.wav": _wav_bytes(np.full(4000, np.inf, np.float32), RATE, "FLOAT"),
    "click.wav": _wav_bytes(_noise(0.005), RATE),  # 80 samples: shorter than one fbank window
}


def write_files(root: Path, files: dict[str, bytes | None], sub: str) -> None:
    (root / sub).mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        if data is not None:
            (root / sub / name).write_bytes(data)


# -- loading single files ----------------------------------------------------------------------------
IMAGE_OUTCOMES = {  # file -> None (decodes to RGB) or the problem the error states
    "good.png": None, "good.jpg": None, "palette.png": None, "palette_transparent.gif": None,
    "grayscale.png": None, "cmyk.jpg": None, "rgba.png": None, "one_pixel.png": None, "gray16.png": None,
    "missing.png": "image file not found", "zero_bytes.png": "cannot identify image file",
    "truncated.jpg": "could not read image file", "truncated.png": "could not read image file",
    "corrupt.png": "could not read image file", "not_an_image.jpg": "cannot identify image file",
    "bomb.png": "too large to decode", "big.png": "too large to decode",
}
AUDIO_OUTCOMES = {
    "good.wav": None, "good.flac": None, "rate8k.wav": None, "rate48k.wav": None, "stereo.wav": None,
    "pcm_u8.wav": None, "float.wav": None, "double.wav": None, "truncated_data.wav": None, "click.wav": None,
    "missing.wav": "audio file not found", "zero_bytes.wav": "could not read audio file",
    "zero_length.wav": "audio is empty", "truncated_header.wav": "could not read audio file",
    "truncated.flac": "could not read audio file", "nan.wav": "NaN or infinite samples",
    "inf.wav": "NaN or infinite samples",
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("files")
    write_files(root, IMAGE_FILES, "img")
    write_files(root, AUDIO_FILES, "wav")
    return root


@pytest.mark.parametrize("name", IMAGE_OUTCOMES)
def test_load_image_decodes_or_names_the_file_and_problem(files: Path, name: str) -> None:
    path = files / "img" / name
    problem = IMAGE_OUTCOMES[name]
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # no warning may escape either
        if problem is None:
            image = load_image(path)
            assert image.mode == "RGB" and image.size[0] >= 1
            return
        with pytest.raises((ValueError, FileNotFoundError)) as err:
            load_image(path)
    assert str(path) in str(err.value) and problem in str(err.value)


def test_transparent_and_palette_images_are_composited_on_white(files: Path) -> None:
    assert load_image(files / "img" / "rgba.png").getpixel((0, 0)) == (255, 255, 255)
    assert load_image(files / "img" / "one_pixel.png").getpixel((0, 0)) == (255, 0, 0)


def test_corrupt_jpeg_middle_decodes_or_fails_cleanly(tmp_path: Path) -> None:
    """Bytes damaged inside the entropy-coded data: libjpeg conceals them (garbage pixels, no error)."""
    data = bytearray(JPEG)
    data[len(data) // 2 : len(data) // 2 + 40] = b"\0" * 40
    path = tmp_path / "damaged.jpg"
    path.write_bytes(bytes(data))
    try:
        assert load_image(path).mode == "RGB"
    except ValueError as err:
        assert str(path) in str(err)


@pytest.mark.parametrize("name", AUDIO_OUTCOMES)
def test_load_audio_decodes_or_names_the_file_and_problem(files: Path, name: str) -> None:
    path = files / "wav" / name
    problem = AUDIO_OUTCOMES[name]
    if problem is None:
        wave = load_audio(path, RATE)
        assert wave.dtype == np.float32 and wave.ndim == 1 and np.isfinite(wave).all()
        return
    with pytest.raises((ValueError, FileNotFoundError)) as err:
        load_audio(path, RATE)
    assert str(path) in str(err.value) and problem in str(err.value)


def test_every_rate_and_format_gives_mono_float32_at_the_target_rate(files: Path) -> None:
    for name in ("rate8k.wav", "rate48k.wav", "stereo.wav", "pcm_u8.wav", "float.wav"):
        wave = load_audio(files / "wav" / name, RATE)
        assert wave.shape == (int(0.3 * RATE),), name
        assert 0.1 < np.abs(wave).max() <= 1.0, name  # uniform(-0.5, 0.5) noise, whatever the sample format
    assert load_audio(files / "wav" / "double.wav", RATE).shape == (int(0.3 * RATE),)


def test_non_finite_arrays_are_refused() -> None:
    wave = np.zeros(1600, np.float32)
    wave[10] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite samples: array of shape"):
        load_audio(wave, RATE)


# -- manifests, datasets and collation ----------------------------------------------------------------
@dataclass
class Case:
    """A manifest line and how it must end: ``stage`` is where it is caught ("manifest": ``read_manifest``,
    "dataset": ``TaskDataset`` decoding, "collate": ``Collator``) or "ok"; ``problem`` is in the message."""

    name: str
    line: Any  # dict -> JSON; str or bytes -> written as is
    stage: str = "ok"
    problem: str = ""


def _img(name: str, text: Any = "a small picture") -> dict[str, Any]:
    return {"image": f"img/{name}", "text": text}


def _wav(name: str, text: str = "one two") -> dict[str, Any]:
    return {"audio": f"wav/{name}", "text": text}


CASES: dict[str, list[Case]] = {
    "captioning": [
        *(Case(n, _img(n)) for n, p in IMAGE_OUTCOMES.items() if p is None),
        Case("missing image", _img("missing.png"), "manifest", "image file not found: img/missing.png"),
        Case("zero-byte image", _img("zero_bytes.png"), "dataset", "cannot identify image file"),
        Case("truncated JPEG", _img("truncated.jpg"), "dataset", "could not read image file"),
        Case("truncated PNG", _img("truncated.png"), "dataset", "could not read image file"),
        Case("corrupt PNG", _img("corrupt.png"), "dataset", "could not read image file"),
        Case("not an image", _img("not_an_image.jpg"), "dataset", "cannot identify image file"),
        Case("decompression bomb", _img("bomb.png"), "dataset", "too large to decode"),
        Case("over the pixel limit", _img("big.png"), "dataset", "too large to decode"),
        Case("path escapes the root", _img("../../outside.png"), "manifest", "escapes the media root"),
        Case("absolute path outside", {"image": "/etc/passwd", "text": "x"}, "manifest", "escapes"),
        Case("empty text", _img("good.png", ""), "manifest", "'text' is empty"),
        Case("whitespace-only text", _img("good.png", " \t\u3000 "), "manifest", "'text' is empty"),
        Case("text not a string", _img("good.png", {"a": 1}), "manifest", "'text' must be a string"),
        Case("non-UTF-8 line", b'{"image": "img/good.png", "text": "caf\xe9"}', "manifest", "not valid UTF-8"),
        Case("lone surrogate", '{"image": "img/good.png", "text": "a \\ud800 b"}', "manifest", "unpaired surrogate"),
        Case("malformed JSON", '{"image": "img/good.png", "text": ', "manifest", "malformed JSON"),
        Case("JSON list", "[1, 2]", "manifest", "expected a JSON object"),
        Case("missing field", {"image": "img/good.png"}, "manifest", "missing field(s) ['text']"),
        Case("extremely long caption", _img("good.png", LONG_TEXT), "collate", "more than max_text_tokens=256"),
        Case("unicode caption", _img("good.png", "un café 東京 🙂 \u200b"), "ok"),
    ],
    "asr": [
        *(Case(n, _wav(n)) for n, p in AUDIO_OUTCOMES.items() if p is None and n != "click.wav"),
        Case("missing audio", _wav("missing.wav"), "manifest", "audio file not found: wav/missing.wav"),
        Case("zero-byte audio", _wav("zero_bytes.wav"), "manifest", "cannot read audio file"),
        Case("zero-length audio", _wav("zero_length.wav"), "manifest", "is empty"),
        Case("truncated WAV header", _wav("truncated_header.wav"), "manifest", "cannot read audio file"),
        Case("10-minute audio", _wav("ten_minutes.wav"), "manifest", "600.0 s, longer than max_audio_seconds=30"),
        Case("truncated FLAC", _wav("truncated.flac"), "dataset", "could not read audio file"),
        Case("NaN samples", _wav("nan.wav"), "dataset", "NaN or infinite samples"),
        Case("inf samples", _wav("inf.wav"), "dataset", "NaN or infinite samples"),
        Case("5 ms audio", _wav("click.wav"), "collate", "shorter than one 25 ms fbank window"),
        Case("extremely long transcript", _wav("good.wav", LONG_TEXT), "collate", "more than max_text_tokens"),
    ],
    "classification": [
        Case("good", {"text": "a fine film", "label": "pos"}),
        Case("good 2", {"text": "a dull film", "label": "neg"}),
        Case("unknown label", {"text": "so so", "label": "maybe"}, "manifest", "unknown label 'maybe'"),
        Case("empty label", {"text": "so so", "label": " "}, "manifest", "'label' is empty"),
        Case("whitespace-only text", {"text": "\n\t ", "label": "pos"}, "manifest", "'text' is empty"),
        Case("non-UTF-8 text", b'{"text": "\xff\xfe bad", "label": "pos"}', "manifest", "not valid UTF-8"),
        Case("extremely long text", {"text": LONG_TEXT, "label": "pos"}, "collate", "more than max_text_tokens"),
    ],
    "vqa": [
        Case("good", {"image": "img/good.png", "question": "what?", "answer": "noise"}),
        Case("empty question", {"image": "img/good.png", "question": "", "answer": "x"}, "manifest", "is empty"),
        Case("no answers", {"image": "img/good.png", "question": "q", "answers": []}, "manifest", "empty list"),
        Case("long question", {"image": "img/good.png", "question": LONG_TEXT, "answer": "x"}, "collate",
             "more than max_text_tokens"),
    ],
}
N_BAD_INPUTS = sum(c.stage != "ok" for cases in CASES.values() for c in cases)


def write_manifest(path: Path, lines: list[Any]) -> Path:
    def raw(line: Any) -> bytes:
        if isinstance(line, bytes):
            return line
        return (line if isinstance(line, str) else json.dumps(line, ensure_ascii=False)).encode()

    path.write_bytes(b"".join(raw(x) + b"\n" for x in lines))
    return path


@pytest.fixture(scope="module")
def zoo(files: Path) -> Path:
    """``files`` plus ``data/`` (the manifests' root) with the media and one manifest per task."""
    root = files / "data"
    write_files(root, IMAGE_FILES, "img")
    write_files(root, AUDIO_FILES, "wav")
    sf.write(root / "wav" / "ten_minutes.wav", np.zeros(600 * 8000, np.int16), 8000, subtype="PCM_U8")
    (files / "outside.png").write_bytes(PNG)
    for task, cases in CASES.items():
        write_manifest(root / f"{task}.jsonl", [c.line for c in cases])
    return root


@pytest.fixture(scope="module")
def model() -> mmtransfer.MultimodalGPT:
    return mmtransfer.build_model(tiny_model_config("gpt2", labels=LABELS)).eval()


def _collate(model: mmtransfer.MultimodalGPT, task: str, path: Path, on_error: str) -> dict[str, Any]:
    manifest = read_manifest(path, task, labels=LABELS, on_error=on_error, max_audio_seconds=30)
    rate = RATE if task == "asr" else None
    dataset = TaskDataset(manifest, task, sample_rate=rate, on_error=on_error, expand_targets=True)
    return Collator(model, task, on_error=on_error)([dataset[i] for i in range(len(dataset))])


@pytest.mark.parametrize("task", list(CASES))
def test_each_bad_line_is_skipped_and_counted_where_it_is_found(
    zoo: Path, model: mmtransfer.MultimodalGPT, task: str
) -> None:
    cases, path = CASES[task], zoo / f"{task}.jsonl"
    manifest = read_manifest(path, task, labels=LABELS, max_audio_seconds=30)
    at_manifest = {s.line: s for s in manifest.skipped}
    rate = RATE if task == "asr" else None
    dataset = TaskDataset(manifest, task, sample_rate=rate, expand_targets=True)
    items = [dataset[i] for i in range(len(dataset))]
    at_dataset = {s.line: s for s in items if isinstance(s, Skip)}
    batch = Collator(model, task)(items)
    at_collate = {s.line: s for s in batch["skipped"] if s.line not in at_dataset}
    found = {"manifest": at_manifest, "dataset": at_dataset, "collate": at_collate}
    for line, case in enumerate(cases, start=1):
        for stage, skips in found.items():
            if stage != case.stage:
                assert line not in skips, f"{case.name}: unexpectedly skipped at {stage}: {skips[line]}"
                continue
            assert line in skips, f"{case.name}: not caught at {stage}"
            assert skips[line].path == str(path) and case.problem in skips[line].reason, (case.name, skips[line])
    good = [c for c in cases if c.stage == "ok"]
    assert batch["n_skipped"] == len(at_dataset) + len(at_collate)
    assert len(batch["references"]) == len(good) == batch["input_ids"].shape[0]
    with torch.no_grad():
        out = model(**{k: v for k, v in batch.items() if k in MODEL_INPUTS})
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("task", list(CASES))
def test_each_bad_line_raises_with_file_line_and_problem(
    zoo: Path, model: mmtransfer.MultimodalGPT, task: str
) -> None:
    good = next(c for c in CASES[task] if c.stage == "ok")
    for i, case in enumerate(c for c in CASES[task] if c.stage != "ok"):
        path = write_manifest(zoo / f"raise-{task}-{i}.jsonl", [good.line, case.line])
        with pytest.raises(DataError) as err:
            _collate(model, task, path, "raise")
        assert str(err.value).startswith(f"{path}:2: "), (case.name, str(err.value))
        assert case.problem in str(err.value), (case.name, str(err.value))


def test_max_text_tokens_is_configurable_and_measures_prompt_plus_target(
    zoo: Path, model: mmtransfer.MultimodalGPT
) -> None:
    samples = [{"text": "a b", "label": "pos", "source": ("m.jsonl", 1)},
               {"text": " ".join(["word"] * 30), "label": "neg", "source": ("m.jsonl", 2)}]
    dataset = TaskDataset(samples, "classification")
    items = [dataset[0], dataset[1]]
    assert Collator(model, "classification")(items)["input_ids"].shape[0] == 2  # default: 256 positions
    short = Collator(model, "classification", max_text_tokens=20)(items)
    [skip] = short["skipped"]
    assert short["n_skipped"] == 1 and skip.line == 2 and "max_text_tokens=20" in skip.reason
    alone = Collator(model, "classification")([items[0]])
    for key in ("input_ids", "attention_mask", "labels"):  # dropping a row leaves no extra left padding
        assert torch.equal(short[key], alone[key]), key


def test_text_past_the_decoders_context_is_a_clear_error_in_inference(model: mmtransfer.MultimodalGPT) -> None:
    image = _noise_image(32)
    long_prompt = " word" * 300  # the tiny GPT-2 has 256 positions
    with pytest.raises(ValueError, match="exceeds the decoder's context of 256"):
        model.answer(image, long_prompt, max_new_tokens=2)
    with pytest.raises(ValueError, match="lower max_new_tokens"):
        model.caption(image, max_new_tokens=250)  # the prompt fits, the continuation does not
    with pytest.raises(ValueError, match="exceeds the decoder's context"):
        model.classify(" ".join(["word"] * 300))
    steps = []  # within the context: it generates, at most 3 new tokens

    class Count:
        def put(self, value: torch.Tensor) -> None:
            steps.append(value.dim() == 1)

        def end(self) -> None:
            pass

    assert isinstance(model.caption(image, max_new_tokens=3, streamer=Count()), str)
    assert 1 <= sum(steps) <= 3


def test_bad_text_and_media_in_one_batch_keep_rows_and_media_aligned(
    zoo: Path, model: mmtransfer.MultimodalGPT
) -> None:
    lines = [_wav("good.wav", "one"), _wav("click.wav"), _wav("stereo.wav", LONG_TEXT), _wav("rate8k.wav", "two")]
    path = write_manifest(zoo / "mixed-asr.jsonl", lines)
    batch = _collate(model, "asr", path, "skip")
    assert sorted(s.line for s in batch["skipped"]) == [2, 3]
    assert batch["references"] == [["one"], ["two"]] and batch["audio"]["input_features"].shape[0] == 2
    expected = Collator(model, "asr")([x for x in TaskDataset(read_manifest(path, "asr"), "asr", sample_rate=RATE)
                                       if x["references"] in (["one"], ["two"])])
    for key in ("input_ids", "attention_mask", "labels"):
        assert torch.equal(batch[key], expected[key]), key
    assert torch.equal(batch["audio"]["input_features"], expected["audio"]["input_features"])


def test_missing_or_binary_manifest(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_manifest(tmp_path / "nope.jsonl", "captioning")
    binary = tmp_path / "gz.jsonl"
    binary.write_bytes(zlib.compress(b'{"image": "a.png", "text": "x"}\n' * 50))
    manifest = read_manifest(binary, "captioning")
    assert len(manifest) == 0 and manifest.skipped and all(str(binary) == s.path for s in manifest.skipped)


# -- through train() -------------------------------------------------------------------------------
def _train_cfg(out: Path, task: str, manifest: Path, on_error: str, steps: int = 2) -> Any:
    return train_config_from_dict({
        "model": tiny_model_config("gpt2", labels=LABELS, trainable={"decoder": "full"}),
        "data": [{"task": task, "train": str(manifest), "on_error": on_error, "max_audio_seconds": 30}],
        "stages": [{"name": "t", "steps": steps}],
        "batch_size": 64, "log_every": 1, "output_dir": str(out), "max_new_tokens": 2,
    })


@pytest.mark.parametrize("task", ["captioning", "asr"])
def test_train_with_bad_lines_skips_counts_and_finishes(
    zoo: Path, tmp_path: Path, task: str, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    cases, path = CASES[task], zoo / f"{task}.jsonl"
    train(_train_cfg(tmp_path / "run", task, path, "skip", steps=2))
    assert (tmp_path / "run" / "final" / "model.safetensors").exists()
    printed = capsys.readouterr()
    said = printed.out + printed.err + caplog.text
    per_epoch = sum(c.stage in ("dataset", "collate") for c in cases)
    assert f"{2 * per_epoch} training samples were skipped" in said  # 2 steps, each a whole epoch
    at_manifest = [line for line, c in enumerate(cases, start=1) if c.stage == "manifest"]
    assert f"{path}: skipped {len(at_manifest)} of {len(cases)} samples" in said
    for line, case in enumerate(cases, start=1):  # the manifest logs its first 10 bad lines, then a count
        if case.stage in ("dataset", "collate") or line in at_manifest[:MAX_LOGGED_SKIPS]:
            assert f"{path}:{line}: " in said, case.name
    losses = [json.loads(x)["loss"] for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(np.isfinite(losses))


@pytest.mark.parametrize(("task", "bad"), [("captioning", "truncated PNG"), ("captioning", "extremely long caption"),
                                           ("captioning", "malformed JSON"), ("asr", "NaN samples"),
                                           ("asr", "5 ms audio")])
def test_train_with_on_error_raise_stops_with_file_line_and_problem(
    zoo: Path, tmp_path: Path, task: str, bad: str
) -> None:
    case = next(c for c in CASES[task] if c.name == bad)
    good = [c.line for c in CASES[task] if c.stage == "ok"][:3]
    path = write_manifest(zoo / f"train-raise-{task}-{bad.replace(' ', '_')}.jsonl", [*good, case.line])
    with pytest.raises(DataError) as err:
        train(_train_cfg(tmp_path / "run", task, path, "raise"))
    assert f"{path}:4: " in str(err.value) and case.problem in str(err.value)
    assert not (tmp_path / "run" / "final").exists()


def test_train_stops_when_a_whole_epoch_has_no_usable_sample(zoo: Path, tmp_path: Path) -> None:
    """Every line passes the manifest's checks but fails to decode or collate: the run ends with NoSamplesError after
    one epoch of skips, naming the dataset, instead of cycling through them for ever."""
    lines = [c.line for c in CASES["captioning"] if c.stage in ("dataset", "collate")]
    path = write_manifest(zoo / "train-all-bad.jsonl", lines)
    cfg = _train_cfg(tmp_path / "run", "captioning", path, "skip")
    cfg.batch_size = 2
    with pytest.raises(NoSamplesError, match="dataset 'captioning': not one usable sample in a whole epoch"):
        train(cfg)
    assert not (tmp_path / "run" / "final").exists()


def test_train_with_one_usable_sample_per_epoch_does_not_stop(zoo: Path, tmp_path: Path) -> None:
    """The empty-epoch stop counts whole epochs: one good line among bad ones, in batches of one shuffled anew each
    epoch, trains to the end however the good batch moves between epochs."""
    bad = [c.line for c in CASES["captioning"] if c.stage in ("dataset", "collate")][:5]
    good = next(c.line for c in CASES["captioning"] if c.stage == "ok")
    path = write_manifest(zoo / "train-one-good.jsonl", [*bad, good])
    cfg = _train_cfg(tmp_path / "run", "captioning", path, "skip", steps=6)
    cfg.batch_size = 1
    train(cfg)
    assert (tmp_path / "run" / "final" / "model.safetensors").exists()
