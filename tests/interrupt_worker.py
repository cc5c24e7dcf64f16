"""Train a recipe and hang at a chosen moment, so that a test can SIGKILL the process exactly there.

    python tests/interrupt_worker.py LOG MARKER MODE N CONFIG [key=value ...] [--resume]

``MODE N``: ``step N`` hangs before the forward pass of optimiser step N; ``write N`` hangs in this
process's N-th checkpoint write, after the model is in the temporary directory and before the optimiser
state; ``swap N`` hangs in the N-th checkpoint swap, after the old checkpoint was renamed away and before
the new one is renamed in; ``none 0`` never hangs. On hanging the worker creates the file MARKER. Its
stdout and stderr go to LOG. ``main(argv)`` does the same in-process (for a forkserver child).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from mmtransfer import atomic  # noqa: E402
from mmtransfer.train import checkpoint, load_train_config, loop, train  # noqa: E402


def _hang(marker: Path) -> None:
    marker.touch()
    time.sleep(600)
    os._exit(3)  # never reached when the test kills us


class _Os:
    """``os`` for ``mmtransfer.atomic`` whose ``replace`` calls ``after(src)`` after each rename."""

    def __init__(self, after: Any) -> None:
        self._after = after

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def replace(self, src: Any, dst: Any) -> None:
        os.replace(src, dst)
        self._after(Path(src))


def _install(mode: str, n: int, marker: Path) -> None:
    calls = {"n": 0}
    if mode == "step":
        real_step = loop._train_step

        def step(model_p, batch, opt, sched, cfg, acc, state, *rest):  # noqa: ANN001, ANN002, ANN202, PLR0913
            if state.step + 1 == n:
                _hang(marker)
            return real_step(model_p, batch, opt, sched, cfg, acc, state, *rest)

        loop._train_step = step
    elif mode == "write":
        real_save = checkpoint.save_pretrained

        def save(model, directory, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            out = real_save(model, directory, *args, **kwargs)
            calls["n"] += 1
            if calls["n"] == n:
                _hang(marker)
            return out

        checkpoint.save_pretrained = save
    elif mode == "swap":

        def after(src: Path) -> None:
            if src.name == "checkpoint":  # the live checkpoint was just renamed to .checkpoint.old
                calls["n"] += 1
                if calls["n"] == n:
                    _hang(marker)

        atomic.os = _Os(after)
    elif mode != "none":
        raise SystemExit(f"unknown mode {mode}")


def main(argv: list[str]) -> None:
    log, marker, mode, n, config, *rest = argv
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    resume = "--resume" in rest
    overrides = [x for x in rest if x != "--resume"]
    _install(mode, int(n), Path(marker))
    train(load_train_config(config, overrides), resume=resume)


if __name__ == "__main__":
    main(sys.argv[1:])
