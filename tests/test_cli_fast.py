"""The command line answers `--help`, each sub-command's `--help` and `recipes` without importing torch or
transformers (they take seconds to import)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mmtransfer.cli import build_parser

PROBE = """
import sys
from mmtransfer.cli import main
try:
    code = main({argv!r})
except SystemExit as done:  # --help exits
    code = done.code
heavy = sorted(m for m in ("torch", "transformers", "timm", "peft", "accelerate") if m in sys.modules)
print("HEAVY", heavy)
sys.exit(code)
"""


def _subcommands() -> list[str]:
    return sorted(build_parser()._subparsers._group_actions[0].choices)


@pytest.mark.parametrize("argv", [["--help"], ["recipes"]] + [[name, "--help"] for name in _subcommands()],
                         ids=lambda argv: " ".join(argv))
def test_the_cli_answers_without_importing_torch(argv: list[str]) -> None:
    done = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stdout, done.stdout[-500:]


@pytest.mark.parametrize("override", ["batchsize=3", "optim.lrr=1", "data.0.task=captionin", "report_to=[neptune]"])
def test_a_recipe_error_is_reported_before_torch_loads(override: str) -> None:
    done = subprocess.run([sys.executable, "-c", PROBE.format(argv=["train", "captioning-tiny", override])],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("mmtransfer: error: captioning-tiny: "), done.stderr
    assert "HEAVY []" in done.stdout, done.stdout[-500:]


@pytest.mark.parametrize("argv", [[]] + [[name] for name in _subcommands()], ids=lambda argv: " ".join(argv) or "top")
def test_help_is_plain_text(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """No reStructuredText markup (double backquotes, backticks) in what --help prints."""
    from mmtransfer.cli import main

    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    out = capsys.readouterr().out
    assert "usage: mmtransfer" in out and "`" not in out, out


LAZY = """
import sys
import mmtransfer, mmtransfer.data, mmtransfer.model
light = "torch" not in sys.modules
skip = mmtransfer.data.Skip
from mmtransfer.data.records import Skip
for package, name in ((mmtransfer, "nope"), (mmtransfer.data, "nope"), (mmtransfer.model, "nope")):
    try:
        getattr(package, name)
    except AttributeError as err:
        print("ERR", err)
print("LIGHT", light, skip is Skip, mmtransfer.tasks.__name__, "torch" in sys.modules)
print("CORE", mmtransfer.MultimodalGPT is mmtransfer.model.MultimodalGPT, mmtransfer.model.__dict__.get("load") is None)
"""


def test_package_names_import_on_first_use() -> None:
    """``mmtransfer``, ``mmtransfer.data`` and ``mmtransfer.model`` load their exports lazily: importing them pulls no
    torch, an exported name is its submodule's object, an unknown one is an AttributeError naming the package."""
    done = subprocess.run([sys.executable, "-c", LAZY], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:3] == [f"ERR module '{p}' has no attribute 'nope'" for p in ("mmtransfer", "mmtransfer.data",
                                                                               "mmtransfer.model")]
    assert lines[3] == "LIGHT True True mmtransfer.tasks False"
    assert lines[4] == "CORE True True"
