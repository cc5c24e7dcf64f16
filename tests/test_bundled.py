"""Recipes and assets ship inside the package: recipes run by name from any directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mmtransfer import weights
from mmtransfer.bundled import ASSETS, RECIPES, TINY_TOKENIZER, find_recipe, recipe_names
from mmtransfer.cli import main
from mmtransfer.errors import MissingFileError
from mmtransfer.train import load_train_config


def test_every_recipe_is_listed_and_found_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    names = recipe_names()
    assert "quickstart" in names and len(names) == len(list(RECIPES.glob("*.yaml")))
    assert find_recipe("quickstart") == find_recipe("quickstart.yaml") == RECIPES / "quickstart.yaml"
    with pytest.raises(MissingFileError, match="no-such: no such recipe file.*bundled: asr-fsdd"):
        find_recipe("no-such")
    assert main(["recipes"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == names


def test_a_bundled_recipe_resolves_paths_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_train_config("quickstart")
    assert cfg.data[0].train == str(tmp_path / "data" / "synthetic" / "shapes" / "captions_train.jsonl")
    assert cfg.output_dir == str(tmp_path / "outputs" / "quickstart")
    assert cfg.feature_cache == str(tmp_path / "outputs" / "feature_cache")
    assert cfg.fallback == str(RECIPES / "captioning-tiny.yaml")
    copy = tmp_path / "mine" / "q.yaml"  # a copy is the user's file: paths start at its directory
    copy.parent.mkdir()
    shutil.copy(RECIPES / "captioning-tiny.yaml", copy)
    assert load_train_config(copy).output_dir == str(copy.parent / "outputs" / "captioning-tiny")
    assert weights.resolve_tokenizer(TINY_TOKENIZER) == ASSETS / "tiny-tokenizer"


def test_train_a_recipe_by_name_outside_the_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["make-data", "data/synthetic", "--n-train", "8", "--n-test", "4"]) == 0
    assert main(["train", "captioning-tiny", "stages.0.steps=2", "data.0.max_eval_samples=4", "batch_size=4"]) == 0
    assert json.loads((tmp_path / "outputs" / "captioning-tiny" / "final" / "config.json").read_text())
    assert "captioning/bleu4" in capsys.readouterr().out
