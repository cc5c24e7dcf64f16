"""Experiment trackers (``report_to: [tensorboard, wandb, mlflow]``) through Accelerate's tracker API.

Accelerate starts the trackers and sends them metrics; this module adds what Accelerate leaves to the caller:
the resolved recipe as flat run parameters, the run name, and a table of eval predictions with their image or
audio where the tracker shows media (W&B table, MLflow table artifact, TensorBoard text + images / audio).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from accelerate import Accelerator

    from mmtransfer.train.config import TrainConfig

# tracker name in ``report_to`` -> the module it imports (mmtransfer.extras names the pip extra)
TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


@dataclass
class Prediction:
    """One eval sample as the trackers show it; ``media`` is a PIL image or a 1-D float waveform (or None)."""

    dataset: str
    reference: str
    prediction: str
    kind: str | None = None  # "image" | "audio" | None (text, or a conversation)
    media: Any = None
    sample_rate: int | None = None


def requested(cfg: TrainConfig) -> list[str]:
    """The trackers a run reports to: ``report_to``, plus TensorBoard for ``tensorboard: true``."""
    names = list(dict.fromkeys(cfg.report_to))
    if cfg.tensorboard and "tensorboard" not in names:
        names.append("tensorboard")
    return names


def accelerator_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    """``log_with`` / ``project_config`` for ``Accelerator``: TensorBoard writes under <output_dir>/tensorboard."""
    names = requested(cfg)
    if not names:
        return {}
    from accelerate.utils import ProjectConfiguration

    out = Path(cfg.output_dir)
    return {"log_with": names,
            "project_config": ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "tensorboard"))}


def run_name(cfg: TrainConfig) -> str:
    """``run_name``, else the output directory's name (what ``mmtransfer serve`` calls the model, too)."""
    return cfg.run_name or Path(cfg.output_dir).name


def start(acc: Accelerator, cfg: TrainConfig) -> None:
    """Start every requested tracker with the resolved recipe as the run's flat parameters (main process)."""
    if not requested(cfg):
        return
    name = run_name(cfg)
    acc.init_trackers(cfg.project, config=flatten(asdict(cfg)),
                      init_kwargs={"wandb": {"name": name, "dir": str(Path(cfg.output_dir))},
                                   "mlflow": {"run_name": name}, "tensorboard": {}})


def finish(acc: Accelerator) -> None:
    """Close the trackers (not ``acc.end_training()``: it also destroys the process group, which a later run in the
    same processes, such as a resume, still needs)."""
    for tracker in acc.trackers:
        tracker.finish()
    acc.trackers.clear()


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """A nested recipe -> ``{"optim.lr": 0.001, "data.0.task": "captioning", ...}``; every value a scalar or a str
    (TensorBoard's hparams and MLflow's params take nothing else)."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)) and any(isinstance(v, (dict, list, tuple)) for v in value):
        items = enumerate(value)
    else:
        if value is None or isinstance(value, (list, tuple)):
            value = str(value)
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, item in items:
        flat.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def log_predictions(acc: Accelerator, rows: list[Prediction], step: int) -> None:
    """A table of eval predictions against references, with each sample's image or audio where it can show it."""
    if not rows or not acc.log_with:
        return
    for tracker in acc.trackers:
        if tracker.name == "wandb":
            _wandb_table(tracker.tracker, rows, step)
        elif tracker.name == "mlflow":
            _mlflow_table(rows, step)
        elif tracker.name == "tensorboard":
            _tensorboard(tracker.tracker, rows, step)


def _wandb_table(run: Any, rows: list[Prediction], step: int) -> None:
    import wandb

    def media(row: Prediction) -> Any:
        if row.kind == "image":
            return wandb.Image(row.media)
        if row.kind == "audio":
            return wandb.Audio(np.asarray(row.media), sample_rate=row.sample_rate)
        return None

    table = wandb.Table(columns=["dataset", "input", "reference", "prediction"],
                        data=[[r.dataset, media(r), r.reference, r.prediction] for r in rows])
    run.log({"eval/predictions": table}, step=step)


def _mlflow_table(rows: list[Prediction], step: int) -> None:
    import mlflow

    for i, row in enumerate(rows):
        if row.kind == "image":
            mlflow.log_image(row.media, artifact_file=f"predictions/step{step}_{i}.png")
    mlflow.log_table({"dataset": [r.dataset for r in rows], "reference": [r.reference for r in rows],
                      "prediction": [r.prediction for r in rows]}, artifact_file=f"predictions/step{step}.json")


def _tensorboard(writer: Any, rows: list[Prediction], step: int) -> None:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| dataset | reference | prediction |", "|---|---|---|"]
    lines += [f"| {cell(r.dataset)} | {cell(r.reference)} | {cell(r.prediction)} |" for r in rows]
    writer.add_text("eval/predictions", "\n".join(lines), step)
    for i, row in enumerate(rows):
        if row.kind == "image":
            writer.add_image(f"eval/input/{i}", np.asarray(row.media.convert("RGB")), step, dataformats="HWC")
        elif row.kind == "audio":
            writer.add_audio(f"eval/input/{i}", np.asarray(row.media, dtype=np.float32)[None], step,
                             sample_rate=row.sample_rate)
