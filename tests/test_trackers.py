"""Experiment trackers (``report_to``): one tiny captioning run reports to W&B (offline), MLflow (a local file
store) and TensorBoard at once; each test reads its tracker's run back and checks it against ``log.jsonl`` and the
trained model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mmtransfer import extras
from mmtransfer.bundled import RECIPES
from mmtransfer.config import ConfigError
from mmtransfer.synthetic import write_all
from mmtransfer.train import load_train_config, train
from tests.test_train import _overrides

pytest.importorskip("wandb")
pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")

RECIPE = RECIPES / "captioning-tiny.yaml"
STEPS = 40


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The run's output dir, its log.jsonl records, the eval references and the final model's captions."""
    tmp = tmp_path_factory.mktemp("trackers")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("WANDB_MODE", "offline")
        for name in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
            env.setenv(name, str(tmp / "wandb-home"))
        env.setenv("MLFLOW_TRACKING_URI", (tmp / "mlruns").as_uri())
        env.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store behind this switch
        synthetic = write_all(tmp / "synthetic", n_train=16, n_test=4)
        out = tmp / "out"
        cfg = load_train_config(RECIPE, _overrides(RECIPE, synthetic, out, STEPS) + [
            "report_to=[wandb,mlflow,tensorboard]", "run_name=trk"])
        train(cfg)
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    manifest = [json.loads(line) for line in Path(cfg.data[0].eval).read_text().splitlines()][:4]
    import mmtransfer

    model = mmtransfer.load(out / "final")
    images = [str(Path(cfg.data[0].eval).parent / m["image"]) for m in manifest]
    captions = model.caption(images, max_new_tokens=cfg.max_new_tokens)
    assert all(captions), captions  # a tiny run long enough to say something, so the tables can be compared
    return {"out": out, "tmp": tmp, "losses": {r["step"]: r["loss"] for r in records if "loss" in r},
            "eval": next(r["eval"] for r in records if "eval" in r), "lr": cfg.optim.lr,
            "references": [m["text"] for m in manifest], "captions": captions}


def _wandb_records(out: Path) -> list[Any]:
    """The records of the offline run's ``.wandb`` file. No public reader exists for it (W&B's own went with its
    Python backend), so this follows the format: a 7-byte file header, then LevelDB log records (32 KiB blocks,
    each record: crc32 (4 bytes), length (2, little-endian), type (1: whole, 2: first, 3: middle, 4: last))."""
    from wandb.proto import wandb_internal_pb2 as pb

    [path] = out.glob("wandb/offline-run-*/run-*.wandb")
    data, pos, part, records, block = path.read_bytes(), 7, b"", [], 32768
    while pos + 7 <= len(data):
        left = block - pos % block
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if left < 7 or (length == 0 and kind == 0):  # the block's zero padding
            pos += left
            continue
        part, pos = part + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(part)
            records.append(record)
            part = b""
    return records


def test_wandb_run_holds_the_recipe_the_losses_and_the_predictions(run: dict[str, Any]) -> None:
    records = _wandb_records(run["out"])
    kinds = {r.WhichOneof("record_type"): r for r in records}
    assert kinds["run"].run.display_name == "trk" and kinds["run"].run.project == "mmtransfer"
    config = {u.key: json.loads(u.value_json) for u in kinds["config"].config.update}
    assert config["optim.lr"] == run["lr"] and config["data.0.task"] == "captioning"
    history = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): i.value_json for i in r.history.item}
            history[r.history.step.num] = items
    assert {s: json.loads(h["loss/captioning"]) for s, h in history.items()} == run["losses"]
    final = history[STEPS]
    for key, value in run["eval"].items():
        assert json.loads(final[f"eval/{key}"]) == pytest.approx(value, rel=1e-12)
    assert "samples_s" in final and "lr" in final
    assert json.loads(final["eval/predictions/_type"]) == "table-file"
    files = {e.path: e.local_path for e in kinds["artifact"].artifact.manifest.contents}
    table = json.loads(Path(files["eval/predictions.table.json"]).read_text())
    assert table["columns"] == ["dataset", "input", "reference", "prediction"]
    assert [row[2] for row in table["data"]] == run["references"]
    assert [row[3] for row in table["data"]] == run["captions"]
    images = [row[1] for row in table["data"]]
    assert all(cell["_type"] == "image-file" and cell["path"] in files for cell in images)


def test_mlflow_run_holds_the_recipe_the_losses_and_the_predictions(run: dict[str, Any]) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=(run["tmp"] / "mlruns").as_uri())
    [experiment] = [e for e in client.search_experiments() if e.name == "mmtransfer"]
    [found] = client.search_runs([experiment.experiment_id])
    assert found.info.run_name == "trk"
    assert float(found.data.params["optim.lr"]) == run["lr"]
    assert found.data.params["data.0.task"] == "captioning"
    history = client.get_metric_history(found.info.run_id, "loss/captioning")
    assert {m.step: m.value for m in history} == run["losses"]
    for key, value in run["eval"].items():
        assert found.data.metrics[f"eval/{key}"] == pytest.approx(value, rel=1e-12)
    assert {"lr", "samples_s"} <= set(found.data.metrics)
    folder = Path(client.download_artifacts(found.info.run_id, "predictions", str(run["tmp"] / "artifacts")))
    table = json.loads((folder / f"step{STEPS}.json").read_text())
    rows = dict(zip(table["columns"], zip(*table["data"])))
    assert list(rows["reference"]) == run["references"] and list(rows["prediction"]) == run["captions"]
    assert sorted(p.name for p in folder.glob("*.png")) == [f"step{STEPS}_{i}.png" for i in range(4)]


def test_tensorboard_holds_the_losses_and_the_predictions(run: dict[str, Any]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    [folder] = {p.parent for p in (run["out"] / "tensorboard" / "mmtransfer").glob("events.*")}
    events = EventAccumulator(str(folder), size_guidance={"images": 0, "tensors": 0}).Reload()
    assert {e.step: e.value for e in events.Scalars("loss/captioning")} == pytest.approx(run["losses"])
    assert events.Scalars("eval/captioning/loss")[-1].value == pytest.approx(run["eval"]["captioning/loss"])
    text = events.Tensors("eval/predictions/text_summary")[-1].tensor_proto.string_val[0].decode()
    for reference, caption in zip(run["references"], run["captions"]):
        assert f"| {reference} | {caption} |" in text
    assert {f"eval/input/{i}" for i in range(4)} <= set(events.Tags()["images"])


def test_report_to_names_an_unknown_tracker_and_a_missing_package(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"report_to: 'neptune' is not one of tensorboard, wandb, mlflow"):
        load_train_config(RECIPE, ["report_to=[neptune]"])
    monkeypatch.setattr(extras, "missing", lambda modules: [m for m in modules if m == "mlflow"])
    with pytest.raises(Exception, match=r"report_to: mlflow needs mlflow-skinny, which is not installed: "
                                        r"pip install 'mmtransfer\[mlflow\]'"):
        load_train_config(RECIPE, ["report_to=[mlflow]"])
