"""Run logging: ``log.jsonl`` always, the recipe's experiment trackers (``report_to``), a PNG of the curves at the
end."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


class RunLogger:
    """Collects training and eval records on the main process (a no-op elsewhere)."""

    def __init__(self, out_dir: Path, enabled: bool = True, every: int = 1,
                 track: Callable[[dict[str, float], int], None] | None = None) -> None:
        """``every``: write one training record per task every that many steps, its loss the mean over them.
        ``track(values, step)``: also send the records to the experiment trackers (``Accelerator.log``)."""
        self.enabled = enabled
        self.out_dir = out_dir
        self.every = every
        self.track = track
        self.records: list[dict[str, Any]] = []
        self.window: dict[str, list[float]] = {}  # task -> losses since the last record
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        self.file = (out_dir / "log.jsonl").open("a")

    def _write(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def log_train(
        self, step: int, stage: str, task: str, loss: float, lr: float, samples_s: float, last: bool = False
    ) -> None:
        """Record a step's loss; every ``every`` steps (and at a stage's ``last`` step) write the window's
        mean loss per task (``steps``: how many steps it averages)."""
        if not self.enabled:
            return
        self.window.setdefault(task, []).append(loss)
        if step % self.every and not last:
            return
        tracked = {"lr": lr, "samples_s": samples_s}
        for name, losses in self.window.items():
            mean = sum(losses) / len(losses)
            self._write({"step": step, "stage": stage, "task": name, "loss": mean, "steps": len(losses), "lr": lr,
                         "samples_s": samples_s})
            tracked[f"loss/{name}"] = mean
        if self.track is not None:
            self.track(tracked, step)
        self.window = {}

    def log_eval(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        self._write({"step": step, "eval": metrics})
        print(f"eval @ step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        if self.track is not None:
            self.track({f"eval/{key}": value for key, value in metrics.items()}, step)

    def finish(self) -> None:
        """Close files and plot loss (per task) and eval metrics to ``curves.png`` when matplotlib is there."""
        if not self.enabled:
            return
        self.file.close()
        plot_curves(self.records, self.out_dir / "curves.png")


def plot_curves(records: list[dict[str, Any]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # plotting is optional
        return
    evals = [r for r in records if "eval" in r]
    fig, axes = plt.subplots(1, 2 if evals else 1, figsize=(11 if evals else 6, 4), squeeze=False)
    for task in sorted({r["task"] for r in records if "task" in r}):
        pts = [(r["step"], r["loss"]) for r in records if r.get("task") == task and r["loss"] == r["loss"]]
        if pts:
            axes[0][0].plot(*zip(*pts), label=task, lw=0.8)
    axes[0][0].set(xlabel="step", ylabel="training loss", title="loss")
    axes[0][0].legend()
    if evals:
        for key in evals[-1]["eval"]:
            axes[0][1].plot([r["step"] for r in evals], [r["eval"].get(key) for r in evals], marker="o", label=key)
        axes[0][1].set(xlabel="step", title="eval metrics")
        axes[0][1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
