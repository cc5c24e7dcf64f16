"""Shared helpers for the transfer-learning benchmarks (``asr_fsdd.py``, ``sst2.py``, ``shapes.py``, ``joint.py``).

* data paths default to ``../shared/data/...`` relative to the repository root; a benchmark whose data is
  absent prints why and exits 0 (``require``);
* recipes are run through the normal training entry point (``run_recipe``), with ``key=value`` overrides;
* every result is a row of one table (task, method, data size, training time, metric, peer in the same
  run), printed as Markdown and written as JSON with the machine's load and versions (``Results``).

Wall times on a shared CPU are noisy: compare a row with the peer measured in the same run, not across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mmtransfer.bundled import RECIPES

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = RECIPES
DEFAULT_DATA = ROOT.parent / "shared" / "data"


def base_parser(description: str, name: str) -> argparse.ArgumentParser:
    """``--data`` (the shared data folder), ``--out`` (JSON results), ``--work`` (manifests, runs), ``--quick``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data", default=str(DEFAULT_DATA),
                   help="folder that holds fsdd/, sst2/, coco-mini/ (default: ../shared/data from the repo root)")
    p.add_argument("--work", default=str(ROOT / "outputs" / "bench" / name),
                   help="where manifests, feature caches and runs go (default: outputs/bench/<name>)")
    p.add_argument("--out", default=None, help="write the results table here as JSON (default: <work>/results.json)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a recipe override applied to every trained row, after the row's own (repeatable), "
                        "e.g. --set 'model.image_projector={name: pool, size: 4}'")
    return p


_OVERRIDES: list[str] = []  # --set: applied by run_recipe after each row's own overrides


def setup(args: argparse.Namespace) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _OVERRIDES[:] = args.set
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    args.work = str(Path(args.work).resolve())  # recipe overrides resolve relative paths against the YAML
    Path(args.work).mkdir(parents=True, exist_ok=True)
    if args.out is None:
        args.out = str(Path(args.work) / "results.json")


def require(path: str | Path, what: str) -> Path:
    """``path`` if it exists; otherwise say so and exit 0 (a benchmark without its data is skipped, not failed)."""
    path = Path(path)
    if not path.exists():
        print(f"skipped: {what} not found at {path} (pass --data to point at the shared data folder)")
        sys.exit(0)
    return path


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def load_avg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


@contextmanager
def timed() -> Any:
    """``with timed() as t: ...`` then ``t["s"]`` is the wall time in seconds."""
    box = {"s": 0.0}
    t0 = time.perf_counter()
    try:
        yield box
    finally:
        box["s"] = time.perf_counter() - t0


def run_dir(config: str | Path, overrides: list[str]) -> Path:
    """Where ``run_recipe(config, overrides)`` saves its model: the recipe's ``output_dir`` after the row's overrides
    and ``--set`` (read by the recipe loader itself, so quoting and ``~`` mean what they mean in training)."""
    from mmtransfer.train.config import load_train_config

    return Path(load_train_config(config, [*overrides, *_OVERRIDES]).output_dir)


def run_recipe(config: str | Path, overrides: list[str]) -> tuple[dict[str, float], float]:
    """Train a recipe (with ``key=value`` overrides) through ``mmtransfer.train``; (final metrics, wall s)."""
    from mmtransfer.train import train
    from mmtransfer.train.config import load_train_config

    overrides = [*overrides, *_OVERRIDES]
    cfg = load_train_config(config, overrides)
    print(f"== train {Path(config).name} {' '.join(overrides)}", flush=True)
    with timed() as t:
        metrics = train(cfg)
    print(f"== done in {t['s']:.1f} s: {metrics}", flush=True)
    return metrics, t["s"]


class Results:
    """Rows of (task, method, data size, training time, metric, value, peer), saved after every row."""

    def __init__(self, name: str, out: str | Path, argv: list[str] | None = None) -> None:
        import torch

        self.name = name
        self.out = Path(out)
        self.rows: list[dict[str, Any]] = []
        self.meta = {
            "benchmark": name,
            "command": " ".join(["python"] + (argv if argv is not None else sys.argv)),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "cuda": torch.cuda.is_available(),
            "load_avg_start": load_avg(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }

    def add(self, task: str, method: str, data_size: Any, train_s: float | None, metric: str, value: float,
            peer: str = "", **extra: Any) -> dict[str, Any]:
        row = {"task": task, "method": method, "data_size": data_size,
               "train_s": None if train_s is None else round(train_s, 1),
               "metric": metric, "value": round(float(value), 4), "peer": peer, **extra}
        if train_s is not None and _OVERRIDES:  # a trained row: its label describes the recipe before --set
            row["set"] = list(_OVERRIDES)
        self.rows.append(row)
        print(f"RESULT {json.dumps(row)}", flush=True)
        self.save()
        return row

    def save(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        meta = {**self.meta, "load_avg_end": load_avg()}
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps({"meta": meta, "rows": self.rows}, indent=1))
        os.replace(tmp, self.out)

    def markdown(self) -> str:
        head = "| task | method | data size | train time (s) | metric | value | peer (same run) |"
        lines = [head, "|---|---|---|---|---|---|---|"]
        for r in self.rows:
            t = "-" if r["train_s"] is None else f"{r['train_s']:.0f}"
            method = r["method"] + "".join(f"; --set {o}" for o in r.get("set", []))
            lines.append(f"| {r['task']} | {method} | {r['data_size']} | {t} | {r['metric']} | "
                         f"{r['value']:.4g} | {r['peer']} |")
        return "\n".join(lines)

    def finish(self) -> None:
        self.save()
        print(f"\n{self.name}: load average at start {self.meta['load_avg_start']}, at end {load_avg()} "
              f"({self.meta['cpus']} CPUs, {self.meta['threads']} torch threads)")
        print(self.markdown())
        print(f"\nwritten to {self.out}")


def evaluate_saved(model_dir: str | Path, task_name: str, manifest: str | Path, batch_size: int = 32,
                   **kwargs: Any) -> tuple[dict[str, float], float, Any]:
    """Load a saved model and score it on a manifest with the task's own metrics; (metrics, wall s, model)."""
    import torch

    import mmtransfer
    from mmtransfer.data import TaskDataset, read_manifest
    from mmtransfer.tasks import get_task

    model = mmtransfer.load(str(model_dir)).eval()
    task = get_task(task_name)
    samples = list(read_manifest(str(manifest), task, labels=task.class_names(model)))
    rate = model.encoders["audio"].sample_rate if task.modality == "audio" else None
    dataset = TaskDataset(samples, task, sample_rate=rate)
    with timed() as t, torch.no_grad():
        metrics = task.evaluate(model, dataset, batch_size, **kwargs)
    return metrics, t["s"], model


def link_data(work: str | Path, name: str, target: str | Path) -> Path:
    """A symlink ``work/name -> target``: manifests may only name media inside their own folder, and the
    shared data must not be copied, so manifests in ``work`` point through this link."""
    link = Path(work) / name
    if link.is_symlink() or link.exists():
        if link.resolve() == Path(target).resolve():
            return link
        link.unlink()
    link.symlink_to(Path(target).resolve(), target_is_directory=True)
    return link
