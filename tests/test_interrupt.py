"""Interrupted runs: a training process SIGKILLed during a step, while writing a checkpoint, and between the
two renames that swap a checkpoint in. The checkpoint on disk is always the old one or the new one,
complete; leftovers of a killed write do not break the next save or resume and are cleaned; the resumed run
gives the uninterrupted run's losses step for step.

The killed processes are forkserver children (one import of torch / transformers for all of them) running
``tests/interrupt_worker.py``, which hangs at the chosen moment so that the kill lands there.
"""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import time
from pathlib import Path

import pytest

import mmtransfer
from mmtransfer.atomic import atomic_dir
from mmtransfer.bundled import RECIPES
from mmtransfer.synthetic import write_all
from mmtransfer.train import checkpoint, load_train_config, train
from tests import interrupt_worker
from tests.test_train import _overrides

RECIPE = RECIPES / "classification-tiny.yaml"  # two stages: probe, then LoRA
STEPS, SAVE_EVERY = 6, 2
CTX = multiprocessing.get_context("forkserver")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_all(tmp_path_factory.mktemp("synthetic"), n_train=24, n_test=4)


def _args(synthetic: Path, out: Path) -> list[str]:
    return _overrides(RECIPE, synthetic, out, STEPS) + [f"save_every={SAVE_EVERY}", "batch_size=8", "data.0.eval=null"]


def _losses(out: Path) -> dict[int, float]:
    """Step -> loss; a resumed run appends to ``log.jsonl``, so later lines (the resumed run's) win."""
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def _kill_at(out: Path, args: list[str], mode: str, n: int, resume: bool) -> None:
    """Run the worker until it reaches ``mode n``, then SIGKILL it."""
    marker, log = out.parent / f"{out.name}-{mode}.marker", out.parent / f"{out.name}-{mode}.log"
    argv = [str(log), str(marker), mode, str(n), str(RECIPE), *args, *(["--resume"] if resume else [])]
    proc = CTX.Process(target=interrupt_worker.main, args=(argv,))
    proc.start()
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            if not proc.is_alive() or time.monotonic() > deadline:
                tail = log.read_text()[-4000:] if log.exists() else ""
                pytest.fail(f"worker did not reach '{mode} {n}' (exit code {proc.exitcode}):\n{tail}")
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(60)
        assert proc.exitcode == -signal.SIGKILL
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith(".checkpoint."))


def _step(directory: Path) -> int:
    return checkpoint.read_state(directory)["run"]["step"]


@pytest.fixture(scope="module")
def forkserver() -> None:
    """Start importing in the forkserver now, alongside the reference run in this process."""
    CTX.set_forkserver_preload(["tests.interrupt_worker"])
    multiprocessing.forkserver.ensure_running()


def test_kill_during_a_step_a_write_and_a_swap_then_resume_gives_the_same_run(
    forkserver: None, synthetic: Path, tmp_path: Path
) -> None:
    reference = tmp_path / "reference"
    train(load_train_config(RECIPE, _args(synthetic, reference)))
    expected = _losses(reference)
    assert sorted(expected) == list(range(1, STEPS + 1))

    out = tmp_path / "run"
    args = _args(synthetic, out)
    # 1. killed in step 3's forward pass: the step-2 checkpoint is there, complete
    _kill_at(out, args, "step", 3, resume=False)
    assert _step(out / "checkpoint") == 2 and not _leftovers(out)
    assert {s: expected[s] for s in (1, 2)} == {s: _losses(out)[s] for s in (1, 2)}

    # 2. resumed, then killed while writing the step-3 checkpoint (the end of the first stage): the old one
    # stays, a partial temporary remains
    _kill_at(out, args, "write", 1, resume=True)
    assert _step(out / "checkpoint") == 2
    [partial] = _leftovers(out)
    assert (out / partial / "model").is_dir() and not (out / partial / "optimizer.pt").exists()
    mmtransfer.load(out / "checkpoint" / "model")

    # 3. resumed, then killed between the renames of the step-3 swap: no checkpoint/ but its old version beside
    _kill_at(out, args, "swap", 1, resume=True)
    assert not (out / "checkpoint").exists()
    assert partial not in _leftovers(out)  # the next write removed the first leftover
    assert _step(out / ".checkpoint.old") == 2
    [new] = [p for p in _leftovers(out) if p.endswith(".tmp")]
    assert _step(out / new) == 3  # the complete new one was not swapped in yet: the old one is used

    # 4. resumed in this process: the old checkpoint is put back, the run goes on into the second stage and
    # ends as the uninterrupted one
    logged = len((out / "log.jsonl").read_text().splitlines())
    train(load_train_config(RECIPE, args), resume=True)
    new_rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()[logged:]]
    assert [r["step"] for r in new_rows if "loss" in r] == list(range(3, STEPS + 1))  # resumed, not restarted
    assert _losses(out) == expected
    assert _step(out / "checkpoint") == STEPS and not _leftovers(out)
    mmtransfer.load(out / "final")


def test_leftovers_of_killed_writes_are_cleaned_by_the_next_write(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint"
    with atomic_dir(target) as tmp:
        (tmp / "v").write_text("1")
    (tmp_path / ".checkpoint.abc123xy.tmp").mkdir()  # a killed write
    (tmp_path / ".checkpoint.old").mkdir()  # killed after the swap, while removing the old version
    (tmp_path / ".checkpoint.other.tmp.d").mkdir()  # not ours: kept
    (tmp_path / ".final.abc123xy.tmp").mkdir()  # another target's: kept
    with atomic_dir(target) as tmp:
        assert (target / "v").read_text() == "1"
        (tmp / "v").write_text("2")
    assert (target / "v").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".checkpoint.other.tmp.d", ".final.abc123xy.tmp",
                                                          "checkpoint"]


def test_a_swap_killed_between_renames_is_recovered_by_the_next_write(tmp_path: Path) -> None:
    target = tmp_path / "best"
    with atomic_dir(target) as tmp:
        (tmp / "v").write_text("old")
    os.replace(target, tmp_path / ".best.old")  # as a kill after the first rename leaves it
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:  # a failed write keeps the old version
        raise RuntimeError
    assert (target / "v").read_text() == "old"
