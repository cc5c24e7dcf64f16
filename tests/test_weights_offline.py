"""The real pip-packaged weights, converted and used: ``pytest -m offline_weights``.

Each test skips when its package is not installed (``mmtransfer weights list`` shows the install
command) or when the shared sample data is absent. Conversions go to the usual cache
(``$MMTRANSFER_CACHE`` or ``~/.cache/mmtransfer/weights``) and are reused by later runs.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from mmtransfer import weights

pytestmark = pytest.mark.offline_weights

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FSDD = DATA / "fsdd" / "recordings"
COCO = DATA / "coco-mini" / "images"


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(weights.SUBSTITUTE_ENV, raising=False)


def _need(name: str) -> None:
    """Skip unless the packages behind ``name`` are installed."""
    entry = weights.PACKAGED[name]
    if entry.paths() is None:
        pytest.skip(f"{name}: {entry.install_hint()}")


def _need_dir(path: Path) -> Path:
    if not path.is_dir():
        pytest.skip(f"sample data not found: {path}")
    return path


# --------------------------------------------------------------------------------------- audio


def _load_16k(path: Path) -> torch.Tensor:
    import soundfile
    import torchaudio

    audio, rate = soundfile.read(path, dtype="float32")
    return torchaudio.functional.resample(torch.from_numpy(audio), rate, 16000)


def _transcribe(name: str, paths: list[Path], **generate_kwargs: str) -> list[str]:
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    directory = weights.resolve(name)
    model = WhisperForConditionalGeneration.from_pretrained(directory).eval()
    processor = WhisperProcessor.from_pretrained(directory)
    audio = [_load_16k(p).numpy() for p in paths]
    features = processor(audio, sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        ids = model.generate(features, max_new_tokens=32, **generate_kwargs)
    return [text.lower() for text in processor.batch_decode(ids, skip_special_tokens=True)]


# Recordings that both Whisper models get right, with the spellings accepted for a lone spoken word.
# Many FSDD digits are not (tiny.en 114/250, base 97/250 on the test split, the same as CTranslate2's
# own output): 8 kHz single words padded to 30 s make Whisper answer e.g. "Thank you." or "Kevin."
DIGITS = {
    "0_jackson_0": ("zero", "0"),
    "1_jackson_0": ("one", "1"),
    "4_jackson_0": ("four", "4", "for"),
    "9_jackson_0": ("nine", "9"),
}


@pytest.mark.parametrize("name", ["openai/whisper-tiny.en", "openai/whisper-base"])
def test_whisper_transcribes_spoken_digits(name: str) -> None:
    _need(name)
    recordings = _need_dir(FSDD)
    kwargs = {"language": "en"} if name == "openai/whisper-base" else {}
    texts = _transcribe(name, [recordings / f"{stem}.wav" for stem in DIGITS], **kwargs)
    for accepted, text in zip(DIGITS.values(), texts):
        assert any(word in text for word in accepted), (accepted, text)


@pytest.mark.parametrize("name", ["openai/whisper-tiny.en", "openai/whisper-base"])
def test_whisper_transcribes_a_sentence(name: str, tmp_path: Path) -> None:
    _need(name)
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed (apt-get install espeak-ng)")
    wav = tmp_path / "sentence.wav"
    sentence = "The quick brown fox jumps over the lazy dog. Seven apples were on the table."
    subprocess.run(["espeak-ng", "-w", str(wav), sentence], check=True)
    kwargs = {"language": "en"} if name == "openai/whisper-base" else {}
    (text,) = _transcribe(name, [wav], **kwargs)
    for words in ("the lazy dog", "seven apples were on the table"):
        assert words in text, text


def test_whisper_directory_is_standard() -> None:
    _need("openai/whisper-tiny.en")
    from transformers import AutoFeatureExtractor, AutoTokenizer, GenerationConfig

    directory = weights.resolve("openai/whisper-tiny.en")
    assert weights.resolve_tokenizer("openai/whisper-tiny.en") == directory
    assert len(AutoTokenizer.from_pretrained(directory)) == 51864
    assert AutoFeatureExtractor.from_pretrained(directory).sampling_rate == 16000
    assert GenerationConfig.from_pretrained(directory).no_timestamps_token_id == 50362


# -------------------------------------------------------------------------------------- vision

# COCO photos whose main object is an ImageNet class: image id -> class index
PHOTOS = {"281789": 340, "187334": 348, "252639": 874, "330993": 704}  # zebra, ram, trolleybus, parking meter


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "efficientnet_lite0", "mobilenetv2_100"])
def test_timm_classifies_photos(name: str) -> None:
    _need(name)
    images = _need_dir(COCO)
    import timm
    from PIL import Image

    overlay = weights.timm_pretrained_overlay(name)
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay).eval()
    config = timm.data.resolve_data_config({}, model=model)
    assert config["mean"] == overlay["mean"] and config["std"] == overlay["std"]
    transform = timm.data.create_transform(**config)
    batch = torch.stack([transform(Image.open(images / f"000000{i}.jpg").convert("RGB")) for i in PHOTOS])
    with torch.no_grad():
        predicted = model(batch).argmax(-1).tolist()
    assert predicted == list(PHOTOS.values())


# ------------------------------------------------------------------------------------- decoder


BASE, INSTRUCT = "HuggingFaceTB/SmolLM2-135M", "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_smollm2_predicts_paris() -> None:
    _need(INSTRUCT)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(weights.resolve(INSTRUCT)).eval()
    tokenizer = AutoTokenizer.from_pretrained(weights.resolve_tokenizer(INSTRUCT))
    assert len(tokenizer) > 49000
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    with torch.no_grad():
        logits = model(**tokenizer("The capital of France is", return_tensors="pt")).logits[0, -1]
    assert tokenizer.decode(logits.argmax()) == " Paris"


def test_smollm2_base_name_only_with_permission(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The base model is not packaged: its name gets the Instruct weights only when the user allows it."""
    _need(BASE)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))  # no genuine base weights from a real cache
    monkeypatch.chdir(tmp_path)
    for call in (weights.resolve, weights.resolve_tokenizer):
        with pytest.raises(weights.WeightsNotFoundError, match=f"{INSTRUCT}.*installed.*{weights.SUBSTITUTE_ENV}=1"):
            call(BASE)
    monkeypatch.setenv(weights.SUBSTITUTE_ENV, "1")
    assert weights.resolve(BASE) == weights.resolve(INSTRUCT)
    assert weights.resolve_tokenizer(BASE) == weights.resolve_tokenizer(INSTRUCT)


def test_gpt2_tokenizer_without_weights() -> None:
    _need("gpt2")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(weights.resolve_tokenizer("gpt2"))
    assert len(tokenizer) == 50257
    assert tokenizer("Hello world").input_ids == [15496, 995]
    with pytest.raises(weights.WeightsNotFoundError, match="resolve_tokenizer"):
        weights.resolve("gpt2")
