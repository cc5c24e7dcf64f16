"""User errors print one line, ``mmtransfer: error: <where>: <problem>``, and exit 2; bugs keep their traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import mmtransfer
from mmtransfer import extras
from mmtransfer.bundled import ASSETS, RECIPES
from mmtransfer.cli import main
from mmtransfer.errors import ConfigError
from mmtransfer.train.logger import RunLogger
from tests.tiny_models import tiny_model_config

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = str(ASSETS / "tiny-tokenizer")


def _recipe(tmp_path: Path, **changes: object) -> Path:
    """A tiny captioning recipe on a two-line manifest, written to ``tmp_path / r.yaml``."""
    (tmp_path / "a.png").write_bytes((ASSETS / "sample.png").read_bytes())
    (tmp_path / "train.jsonl").write_text('{"image": "a.png", "text": "a red circle"}\n' * 2)
    recipe = yaml.safe_load((RECIPES / "captioning-tiny.yaml").read_text())
    recipe["model"]["decoder"]["tokenizer"] = TOKENIZER
    recipe |= {"data": [{"task": "captioning", "train": "train.jsonl"}], "output_dir": "out",
               "stages": [{"name": "train", "steps": 1}], **changes}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    return tmp_path / "r.yaml"


def _error(argv: list[str], capsys: pytest.CaptureFixture[str], lines: int = 1) -> str:
    """Run the CLI, check it exits 2 with one line on stderr (``lines`` for a message that lists what it
    tried) and no traceback, and return the first line."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("mmtransfer: error: ") and "Traceback" not in "\n".join(err), err
    assert len(err) == 1 if lines == 1 else len(err) > 1, err
    return err[0].removeprefix("mmtransfer: error: ")


@pytest.mark.parametrize(("override", "message"), [
    ("optim.lrr=1e-3", r"r.yaml: optim.lrr: unknown key; did you mean 'lr'\?"),
    ("stages.0.steps=-5", r"r.yaml: stages\[0\].steps: must be > 0, got -5"),
    ("batch_size=0", r"r.yaml: batch_size: must be >= 1, got 0"),
    ("optim.lr=abc", r"r.yaml: optim.lr: expected a number, got 'abc'"),
    ("data.0.task=captionin", r"r.yaml: data\[0\].task: unknown task 'captionin'; valid tasks: asr, captioning"),
    ("model.image_encoder.name=timmm", r"r.yaml: model: unknown encoder 'timmm'; valid encoders: .*timm"),
    ("batchsize=3", r"r.yaml: batchsize: unknown key; did you mean 'batch_size'\?"),
    ("model.image_projector.name=mlpp", r"r.yaml: model: image_projector.name: unknown projector 'mlpp'; valid "
                                        r"projectors: .*mlp"),
    ("model.image_projector.hidden=3", r"r.yaml: model: image_projector: .*'hidden'"),
    ("model.image_encoder.model_name=resnet10tt", r"r.yaml: model: image_encoder.model_name: timm has no "
                                                  r"architecture 'resnet10tt'"),
])
def test_config_errors_are_one_line(tmp_path: Path, override: str, message: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    import re

    line = _error(["train", str(_recipe(tmp_path)), override], capsys)
    assert re.search(message, line), line
    assert not (tmp_path / "out").exists()


def test_two_datasets_of_one_task_need_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    both = [{"task": "captioning", "train": "train.jsonl"}] * 2
    recipe = _recipe(tmp_path, data=both)
    line = _error(["train", str(recipe)], capsys)
    assert line == (f"{recipe}: data: dataset names must differ (set 'name' when two share a task), got "
                    "['captioning', 'captioning']")
    loaded = _loaded_after(recipe).split()  # refused with the recipe, before the loop (and its decoder) loads
    assert "mmtransfer.train.config" in loaded and "mmtransfer.train.loop" not in loaded and "torch" not in loaded


def _loaded_after(recipe: Path) -> str:
    """The modules loaded by checking ``recipe`` through the CLI in a fresh interpreter."""
    import subprocess
    import sys

    code = (f"import sys; from mmtransfer.cli import main; main(['train', {str(recipe)!r}]); "
            "print(' '.join(sorted(sys.modules)))")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout


def test_data_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = _recipe(tmp_path)
    (tmp_path / "empty.jsonl").write_text("")
    line = _error(["train", str(recipe), f"data.0.train={tmp_path / 'empty.jsonl'}"], capsys)
    assert line == f"{tmp_path / 'empty.jsonl'}: no usable samples (skipped 0)"
    line = _error(["train", str(recipe), f"data.0.train={tmp_path / 'missing.jsonl'}"], capsys)
    assert line == f"{tmp_path / 'missing.jsonl'}: cannot open the manifest: No such file or directory"


def test_eval_without_a_usable_sample_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mmtransfer.build_model(tiny_model_config()).save_pretrained(str(tmp_path / "model"))
    (tmp_path / "empty.jsonl").write_text("")
    line = _error(["eval", str(tmp_path / "model"), "--task", "captioning", "--data", str(tmp_path / "empty.jsonl")],
                  capsys)
    assert line == f"{tmp_path / 'empty.jsonl'}: no usable samples to evaluate (every sample was skipped: see the " \
                   "messages above)"


def test_weights_and_input_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = _recipe(tmp_path)
    line = _error(["train", str(recipe), "model.decoder.model=no-such-org/no-such-model",
                   "model.decoder.pretrained=true", "model.decoder.config=null"], capsys, lines=0)
    assert line == f"{recipe}: model: no model found for 'no-such-org/no-such-model'. Tried, in order:"
    mmtransfer.build_model(tiny_model_config()).save_pretrained(tmp_path / "m")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    line = _error(["chat", str(tmp_path / "m"), "what is it?", "--image", str(tmp_path / "broken.png")], capsys)
    assert line.startswith(f"could not read image file {tmp_path / 'broken.png'}")
    line = _error(["chat", str(tmp_path / "m"), "what is it?", "--image", str(tmp_path / "none.png")], capsys)
    assert line == f"image file not found: {tmp_path / 'none.png'}"


def test_missing_scorer_fails_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    absent = {"pycocoevalcap", "tensorboard"}
    monkeypatch.setattr(extras, "missing", lambda modules: [m for m in modules if m in absent])
    recipe = _recipe(tmp_path, data=[{"task": "captioning", "train": "train.jsonl", "eval": "train.jsonl"}])
    line = _error(["train", str(recipe)], capsys)
    assert line == (f"{recipe}: data[0]: evaluating captioning needs pycocoevalcap, which is not installed: "
                    "pip install 'mmtransfer[metrics]'")
    line = _error(["train", str(_recipe(tmp_path, tensorboard=True))], capsys)
    assert line == (f"{recipe}: tensorboard needs tensorboard, which is not installed: "
                    "pip install 'mmtransfer[tensorboard]'")
    assert not (tmp_path / "out").exists()


def test_debug_shows_the_traceback_and_bugs_keep_theirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = str(_recipe(tmp_path))
    with pytest.raises(ConfigError, match="optim.lrr"):
        main(["--debug", "train", recipe, "optim.lrr=1"])
    monkeypatch.setenv("MMTRANSFER_DEBUG", "1")
    with pytest.raises(ConfigError, match="optim.lrr"):
        main(["train", recipe, "optim.lrr=1"])
    monkeypatch.delenv("MMTRANSFER_DEBUG")
    monkeypatch.setattr("mmtransfer.train.train", lambda cfg, resume=False: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        main(["train", recipe])


def test_log_every_writes_window_means(tmp_path: Path) -> None:
    logger = RunLogger(tmp_path, every=3)
    losses = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    for step, loss in enumerate(losses, start=1):
        logger.log_train(step, "s", "a" if step % 2 else "b", loss, 0.1, 1.0, last=step == len(losses))
    rows = sorted((r["step"], r["task"], r["loss"], r["steps"]) for r in logger.records)
    assert rows == [(3, "a", 2.0, 2), (3, "b", 2.0, 1), (6, "a", 5.0, 1), (6, "b", 5.0, 2), (7, "a", 7.0, 1)]


def test_converting_gguf_weights_without_gguf_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mmtransfer.errors import MissingDependencyError
    from mmtransfer.weights.convert.gguf import convert_causal_lm

    monkeypatch.setattr(extras, "missing", lambda modules: list(modules))
    with pytest.raises(MissingDependencyError, match=r"converting m.gguf needs gguf.*mmtransfer\[offline-weights\]"):
        convert_causal_lm([tmp_path / "m.gguf"], tmp_path / "out")
    assert not (tmp_path / "out").exists()
