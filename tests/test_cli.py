"""The command line: inference commands on a saved model, train with a loud fallback, weights list."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import mmtransfer
from mmtransfer.bundled import ASSETS, RECIPES
from mmtransfer.cli import main
from mmtransfer.synthetic import write_all
from tests.tiny_models import tiny_model_config

ROOT = Path(__file__).resolve().parents[1]


def test_inference_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = mmtransfer.build_model(tiny_model_config() | {"labels": ["negative", "positive"]})
    model.save_pretrained(tmp_path / "m")
    image, audio = str(ASSETS / "sample.png"), str(ASSETS / "sample.wav")
    assert main(["caption", str(tmp_path / "m"), image, "--max-new-tokens", "3"]) == 0
    assert main(["transcribe", str(tmp_path / "m"), audio, "--max-new-tokens", "3"]) == 0
    assert main(["answer", str(tmp_path / "m"), "--image", image, "what?", "--max-new-tokens", "3"]) == 0
    assert main(["classify", str(tmp_path / "m"), "a great film"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(image + "\t") and lines[1].startswith(audio + "\t")
    assert lines[3].split("\t")[1] in ("negative", "positive")


def test_each_inference_command_prints_its_own_method_s_output(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """``caption`` / ``transcribe`` / ``answer`` / ``classify`` print what the API method of that name returns."""
    torch.manual_seed(0)  # weights whose beam-3 transcript and answer differ from greedy: the flags are seen to apply
    model = mmtransfer.build_model(tiny_model_config() | {"labels": ["negative", "positive"]})
    model.save_pretrained(tmp_path / "m")
    model = mmtransfer.load(str(tmp_path / "m"))
    image, audio = str(ASSETS / "sample.png"), str(ASSETS / "sample.wav")

    def outputs(**gen: int) -> list[str]:
        return [model.caption([image], **gen)[0], model.transcribe([audio], **gen)[0],
                model.answer([image], ["what?"], **gen)[0], model.classify(["a great film"])[0]]

    expected = outputs(max_new_tokens=5, num_beams=3)
    greedy = outputs(max_new_tokens=5)
    assert expected[1] != greedy[1] and expected[2] != greedy[2]
    flags = ["--max-new-tokens", "5", "--num-beams", "3"]
    for argv in (["caption", image, *flags], ["transcribe", audio, *flags], ["answer", "--image", image, "what?",
                 *flags], ["classify", "a great film"]):
        assert main([argv[0], str(tmp_path / "m"), *argv[1:]]) == 0
    printed = [line.split("\t", 1)[1] for line in capsys.readouterr().out.split("\n")[:-1]]
    assert printed == expected
    assert len(set(expected[:3])) > 1  # the three generating methods do not all say the same


def test_chat_command_takes_several_images_and_clips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mmtransfer.build_model(tiny_model_config()).save_pretrained(tmp_path / "m")
    image, audio = str(ASSETS / "sample.png"), str(ASSETS / "sample.wav")
    args = ["chat", str(tmp_path / "m"), "which has more circles?", "--image", image, "--image", image,
            "--audio", audio, "--max-new-tokens", "4"]
    assert main(args) == 0
    printed = capsys.readouterr().out.strip()
    parts = [{"type": "image", "image": image}] * 2 + [{"type": "audio", "audio": audio}]
    expected = mmtransfer.load(tmp_path / "m").chat(
        [{"role": "user", "content": [*parts, {"type": "text", "text": "which has more circles?"}]}], max_new_tokens=4)
    assert printed == expected


def test_eval_command_on_conversations(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_all(tmp_path / "data", n_train=4, n_test=4)
    mmtransfer.build_model(tiny_model_config()).save_pretrained(tmp_path / "m")
    args = ["eval", str(tmp_path / "m"), "--task", "chat", "--data", str(data / "chat_mixed_test.jsonl"),
            "--max-new-tokens", "3"]
    assert main(args) == 0
    assert set(json.loads(capsys.readouterr().out)) == {  # with the eval loss and the media gain per part type
        "exact_match", "bleu4", "loss", "gain/image/loss", "gain/image/exact_match", "gain/audio/loss",
        "gain/audio/exact_match"}


@pytest.mark.parametrize("fmt", ["webdataset", "parquet"])
def test_eval_reads_every_source_training_reads(tmp_path: Path, fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The same captions as a JSONL manifest, as WebDataset shards and as Parquet files: the same scores."""
    pytest.importorskip("webdataset" if fmt == "webdataset" else "datasets")
    data = write_all(tmp_path / "data", n_train=4, n_test=4)
    mmtransfer.build_model(tiny_model_config()).save_pretrained(tmp_path / "m")
    manifest = data / "shapes" / "captions_test.jsonl"
    common = ["--task", "captioning", "--max-new-tokens", "4", "--batch-size", "3"]
    assert main(["eval", str(tmp_path / "m"), "--data", str(manifest), *common]) == 0
    expected = json.loads(capsys.readouterr().out)
    assert main(["make-shards", str(manifest), str(tmp_path / "shards"), "--task", "captioning", "--format", fmt,
                 "--per-shard", "3"]) == 0
    capsys.readouterr()
    source = "webdataset" if fmt == "webdataset" else "hf"
    assert main(["eval", str(tmp_path / "m"), "--data", str(tmp_path / "shards"), "--source", source,
                 "--split", "train", *common]) == 0
    assert json.loads(capsys.readouterr().out) == pytest.approx(expected, abs=1e-5)


def test_train_falls_back_loudly_when_weights_are_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_all(tmp_path / "data", n_train=16, n_test=4)
    tiny = yaml.safe_load((RECIPES / "captioning-tiny.yaml").read_text())
    tiny["model"]["decoder"]["tokenizer"] = str(ASSETS / "tiny-tokenizer")
    tiny["data"][0].update(train=str(data / "shapes" / "captions_train.jsonl"),
                           eval=str(data / "shapes" / "captions_test.jsonl"), max_eval_samples=4)
    tiny.update(stages=[{"name": "train", "steps": 2}], eval_every=0, output_dir=str(tmp_path / "tiny-run"))
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny))
    real = dict(tiny, fallback="tiny.yaml", output_dir=str(tmp_path / "real-run"))
    real["model"] = dict(tiny["model"], decoder={"model": "no-such-org/no-such-model", "pretrained": True})
    (tmp_path / "real.yaml").write_text(yaml.safe_dump(real))
    assert main(["train", str(tmp_path / "real.yaml")]) == 0
    assert "FALLING BACK" in capsys.readouterr().err
    assert (tmp_path / "tiny-run" / "final" / "config.json").exists()
    assert not (tmp_path / "real-run" / "final").exists()


def test_weights_list_shows_every_known_name_with_its_status(capsys: pytest.CaptureFixture[str]) -> None:
    from mmtransfer import weights

    assert main(["weights", "list"]) == 0
    header, *table = capsys.readouterr().out.split("\n\n")[0].splitlines()
    cuts = [0] + [header.index(col) for col in ("KIND", "SOURCE", "STATUS")] + [None]  # column starts
    rows = [[line[a:b].strip() for a, b in zip(cuts, cuts[1:])] for line in table]
    expected = [[w.name, w.kind, w.source, w.status] for w in weights.known_weights()]
    assert rows == expected and len(rows) == len(weights.PACKAGED)


def test_inference_commands_default_to_the_best_device(monkeypatch: pytest.MonkeyPatch) -> None:
    from mmtransfer.cli import build_parser
    from mmtransfer.model.saving import resolve_device

    for argv in (["caption", "m", "a.png"], ["chat", "m", "hi"], ["eval", "m", "--task", "asr", "--data", "d"]):
        assert build_parser().parse_args(argv).device == "auto"
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    assert resolve_device("auto").type == "cuda"
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert resolve_device("auto").type == "cpu" and resolve_device("cuda:1").index == 1
