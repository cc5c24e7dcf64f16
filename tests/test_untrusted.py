"""Untrusted files: no code runs from a checkpoint, a config or a saved model. Tensors come from safetensors
or ``torch.load(weights_only=True)``, configs from ``yaml.safe_load`` / JSON, no remote code; files that do
not match what they claim fail with an error naming the file."""

from __future__ import annotations

import ast
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import mmtransfer
from mmtransfer.bundled import RECIPES
from mmtransfer.config import ConfigError, load_yaml
from mmtransfer.synthetic import write_all
from mmtransfer.train import load_train_config, train
from tests.test_train import ROOT, _overrides
from tests.tiny_models import tiny_model_config

PACKAGE = ROOT / "mmtransfer"
RECIPE = RECIPES / "classification-tiny.yaml"


class Payload:
    """Unpickling this runs ``touch MARKER``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


# -- what the package calls ------------------------------------------------------------------------
def _calls() -> list[tuple[Path, ast.Call, str]]:
    """Every call in the package as (file, node, dotted name of the callee)."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                out.append((path, node, ast.unparse(node.func)))
    return out


def test_the_package_never_unpickles_or_runs_code_from_files() -> None:
    forbidden = {"pickle.load", "pickle.loads", "yaml.load", "yaml.unsafe_load", "yaml.full_load", "eval", "exec",
                 "marshal.loads", "dill.load", "joblib.load", "torch.jit.load"}
    bad, calls = [], _calls()
    for path, node, name in calls:
        keywords = {k.arg: k.value for k in node.keywords}
        where = f"{path.relative_to(ROOT)}:{node.lineno}"
        if name in forbidden:
            bad.append(f"{where}: {name}")
        if name == "torch.load" and not (
            isinstance(keywords.get("weights_only"), ast.Constant) and keywords["weights_only"].value is True
        ):
            bad.append(f"{where}: torch.load without weights_only=True")
        if name.endswith("np.load") or name.endswith("numpy.load"):
            if not isinstance(keywords.get("allow_pickle"), ast.Constant) or keywords["allow_pickle"].value:
                bad.append(f"{where}: np.load without allow_pickle=False")
        if "trust_remote_code" in keywords:
            bad.append(f"{where}: trust_remote_code")
    assert not bad
    # the scan reads the package: it sees the loaders the package does use (else it would pass vacuously)
    assert {"torch.load", "yaml.safe_load", "load_file", "json.loads"} <= {name for _, _, name in calls}


# -- checkpoints -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A finished 2-step run of the tiny classification recipe (its checkpoint/ is resumable)."""
    tmp = tmp_path_factory.mktemp("untrusted")
    data = write_all(tmp / "data", n_train=8, n_test=2)
    args = _overrides(RECIPE, data, tmp / "run", 2) + ["batch_size=4", "data.0.eval=null"]
    train(load_train_config(RECIPE, args))
    return tmp / "run", args


@pytest.mark.parametrize("name", ["optimizer.pt", "scheduler.pt", "state.pt"])
def test_a_pickled_object_in_a_checkpoint_is_refused(run: tuple[Path, list[str]], tmp_path: Path, name: str) -> None:
    out, args = run
    marker = tmp_path / "code-ran"
    path = out / "checkpoint" / name
    original = path.read_bytes()
    try:
        torch.save({"state": {}, "param_groups": [], "x": Payload(marker)}, path)
        with pytest.raises(ValueError, match="refused to load") as err:
            train(load_train_config(RECIPE, args), resume=True)
        assert str(path) in str(err.value) and "posix.system" in str(err.value)
        assert not marker.exists()
    finally:
        path.write_bytes(original)


def test_a_truncated_checkpoint_file_fails_naming_it(run: tuple[Path, list[str]]) -> None:
    out, args = run
    path = out / "checkpoint" / "optimizer.pt"
    original = path.read_bytes()
    try:
        path.write_bytes(original[: len(original) // 3])
        with pytest.raises(ValueError, match="not a readable checkpoint file") as err:
            train(load_train_config(RECIPE, args), resume=True)
        assert str(path) in str(err.value)
    finally:
        path.write_bytes(original)


# -- configs ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("tag", ["!!python/object/apply:os.system", "!!python/object:os.system",
                                 "!!python/name:os.system"])
def test_yaml_python_tags_are_refused(tmp_path: Path, tag: str) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.read_text() + f'\nseed: {tag} ["touch {marker}"]\n')
    with pytest.raises(ConfigError, match="not valid YAML") as err:
        load_train_config(path)
    assert str(path) in str(err.value) and not marker.exists()
    with pytest.raises(ConfigError, match="override 'seed=.*not valid YAML"):
        load_train_config(RECIPE, [f'seed={tag} ["touch {marker}"]'])
    assert not marker.exists()


@pytest.mark.parametrize(("override", "problem"), [
    ("optim.lr=1e-4", None),  # YAML 1.1 reads this as the string '1e-4': taken as the number
    ("optim.lr=fast", "optim.lr: expected a number, got 'fast'"),
    ("batch_size=8.5", "batch_size: expected int, got 8.5"),
    ("batch_size=true", "batch_size: expected int, got True"),
    ("gradient_checkpointing=yes please", "gradient_checkpointing: expected bool"),
    ("output_dir=[1, 2]", "output_dir: expected str"),
    ("stages.0.steps=null", "stages[0].steps: expected int, got None"),
    ("optim.lr=[1", "not valid YAML"),
])
def test_config_values_of_the_wrong_type_name_the_field(override: str, problem: str | None) -> None:
    if problem is None:
        assert load_train_config(RECIPE, [override]).optim.lr == 1e-4
        return
    with pytest.raises(ConfigError) as err:
        load_train_config(RECIPE, [override])
    assert problem in str(err.value)


def test_yaml_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_yaml(path)


# -- saved models ----------------------------------------------------------------------------------
@pytest.fixture
def saved(tmp_path: Path) -> Path:
    mmtransfer.build_model(tiny_model_config("gpt2")).save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def _edit_tensor(saved: Path, change: callable) -> str:
    weights = saved / "model.safetensors"
    tensors = load_file(weights)
    key = next(k for k in tensors if k.startswith("projectors.") and k.endswith("weight"))
    tensors[key] = change(tensors[key])
    save_file(tensors, weights)
    return key


@pytest.mark.parametrize(("change", "problem"), [
    (lambda t: t.to(torch.int32), "1 wrongly typed"),
    (lambda t: t.bool(), "1 wrongly typed"),
    (lambda t: t[:, :-1].contiguous(), "1 wrongly shaped"),
    (lambda t: t.T.contiguous(), "1 wrongly shaped"),
])
def test_a_tensor_with_the_right_name_but_wrong_dtype_or_shape_fails(saved: Path, change: callable,
                                                                     problem: str) -> None:
    key = _edit_tensor(saved, change)
    with pytest.raises(ConfigError, match="does not match its config") as err:
        mmtransfer.load(saved)
    assert problem in str(err.value) and key in str(err.value) and str(saved / "model.safetensors") in str(err.value)


def test_another_float_precision_loads(saved: Path) -> None:
    """GPU runs save frozen encoders in half precision; they load into the float32 model, with the file's values."""
    original = load_file(saved / "model.safetensors")
    key = _edit_tensor(saved, lambda t: t.half())
    state = mmtransfer.load(saved).state_dict()
    assert state[key].dtype == torch.float32
    assert torch.equal(state[key], original[key].half().float())
    for name, tensor in original.items():
        if name != key:
            assert torch.equal(state[name], tensor), name


def test_a_config_for_another_architecture_fails(saved: Path, tmp_path: Path) -> None:
    mmtransfer.build_model(tiny_model_config("llama")).save_pretrained(tmp_path / "llama")
    (saved / "config.json").write_text((tmp_path / "llama" / "config.json").read_text())
    with pytest.raises(ConfigError, match="does not match its config: .* missing, .* unexpected"):
        mmtransfer.load(saved)


def test_a_config_naming_an_unknown_architecture_fails_naming_the_file(saved: Path) -> None:
    config = json.loads((saved / "config.json").read_text())
    config["decoder"]["config"]["model_type"] = "evil_arch"
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="config.json: cannot build the model it describes: .*evil_arch"):
        mmtransfer.load(saved)
    config["decoder"]["config"]["model_type"] = "gpt2"
    config["image_encoder"]["surprise"] = 1
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="cannot build the model it describes: .*surprise"):
        mmtransfer.load(saved)


def test_custom_tokenizer_code_in_a_saved_model_is_not_run(saved: Path, tmp_path: Path) -> None:
    """The saved tokenizer's ``auto_map`` is ignored: the model loads with transformers' own tokenizer class."""
    marker = tmp_path / "code-ran"
    expected = mmtransfer.load(saved).processor.tokenizer
    config = json.loads((saved / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", "evil.EvilTokenizer"]}
    (saved / "tokenizer_config.json").write_text(json.dumps(config))
    (saved / "evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
                                   "from transformers import PreTrainedTokenizerFast as EvilTokenizer\n")
    tokenizer = mmtransfer.load(saved).processor.tokenizer
    assert not marker.exists() and "evil" not in sys.modules
    assert type(tokenizer) is type(expected) and type(tokenizer).__module__.startswith("transformers.")
    assert tokenizer("a red <image> square")["input_ids"] == expected("a red <image> square")["input_ids"]


def test_weights_that_are_not_safetensors_fail_naming_the_file(saved: Path) -> None:
    weights = saved / "model.safetensors"
    torch.save({"x": Payload(saved / "code-ran")}, weights)  # a pickle under the safetensors name
    with pytest.raises(ConfigError, match="cannot read weights") as err:
        mmtransfer.load(saved)
    assert str(weights) in str(err.value) and not (saved / "code-ran").exists()
    weights.write_bytes(b"\xff" * 8 + b"{}")  # a header length of 2**64 - 1
    with pytest.raises(ConfigError, match="cannot read weights"):
        mmtransfer.load(saved)
