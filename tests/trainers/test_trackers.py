"""Experiment trackers (`train.report_to`, issue 21): MLflow with a local file store and W&B in
offline mode get the run's config, every metric of metrics.jsonl at its step, and the final
summary; a tracker that is not installed is refused naming the field."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_cli


def metrics_of(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """{"train/loss": [(step, value), ...], "eval/loss": ...} from the run's metrics.jsonl."""
    series: dict[str, list[tuple[int, float]]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        for name, value in record.items():
            if name not in ("step", "kind", "time"):
                series.setdefault(f"{record['kind']}/{name}", []).append((record["step"], value))
    return series


def assert_same_series(got: list, expected: list, name: str) -> None:
    """The same steps, and values equal to float precision (trackers store float64)."""
    assert [step for step, _ in got] == [step for step, _ in expected], name
    assert [value for _, value in got] == pytest.approx([v for _, v in expected]), name


def wandb_records(path: Path):
    """The protobuf records of an offline W&B run file (`run-ID.wandb`): LevelDB-log framing
    (32 KiB blocks; 7-byte record headers: CRC, length, full/first/middle/last) after a 7-byte
    ':W&B' header. wandb 0.31 ships the message types but no reader for its own file."""
    from wandb.proto import wandb_internal_pb2

    data, block, position, pending = path.read_bytes(), 32 * 1024, 7, b""
    assert data[:4] == b":W&B"
    while position + 7 <= len(data):
        left = block - position % block
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if left < 7 or (length == 0 and kind == 0):  # block trailer padding
            position += left
            continue
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a full record, or the last fragment of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


@pytest.mark.slow
def test_mlflow_and_offline_wandb_get_the_config_every_metric_and_the_summary(
    tiny_model, text_data, tmp_path, monkeypatch
):
    from mlflow.tracking import MlflowClient

    run_dir = tmp_path / "run"
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": {"name_or_path": str(tiny_model("text")), "modality": "text"},
                "data": {"train": str(text_data["train"]), "eval": str(text_data["eval"])},
                "train": {
                    "max_steps": 6,
                    "logging_steps": 2,
                    "eval_steps": 3,
                    "report_to": ["tensorboard", "mlflow", "wandb"],
                },
                "output_dir": str(run_dir),
            }
        )
    )
    store = f"file://{tmp_path / 'mlruns'}"
    result = run_cli(
        "train",
        str(config),
        MLFLOW_TRACKING_URI=store,
        MLFLOW_ALLOW_FILE_STORE="true",  # MLflow 3.18 keeps its file store behind this switch
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        WANDB_PROJECT="digits",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    logged = metrics_of(run_dir)
    assert [step for step, _ in logged["train/loss"]] == [2, 4, 6]
    assert [step for step, _ in logged["eval/loss"]] == [0, 3, 6]
    summary = json.loads((run_dir / "summary.json").read_text())

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=store)
    (run,) = client.search_runs([client.get_experiment_by_name("digits").experiment_id])
    assert run.info.run_name == "run" and run.data.params["train.max_steps"] == "6"
    assert run.data.params["peft.method"] == "lora"
    for name, points in logged.items():
        history = client.get_metric_history(run.info.run_id, name)
        assert_same_series([(m.step, m.value) for m in history], points, name)
    assert run.data.metrics["summary/steps"] == 6
    assert run.data.metrics["summary/train_loss"] == pytest.approx(summary["train_loss"])
    assert run.data.metrics["summary/eval_loss"] == pytest.approx(summary["eval_metrics"]["loss"])

    (wandb_file,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    history: dict[str, list[tuple[int, float]]] = {}
    config_keys, project = set(), None
    for record in wandb_records(wandb_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            project = record.run.project
            config_keys |= {item.key for item in record.run.config.update}
        elif kind == "config":
            config_keys |= {item.key for item in record.config.update}
        elif kind == "history":
            for item in record.history.item:
                name = item.key or "/".join(item.nested_key)
                if not name.startswith("_"):
                    point = (record.history.step.num, json.loads(item.value_json))
                    history.setdefault(name, []).append(point)
    assert project == "digits" and {"train.max_steps", "peft.method"} <= config_keys
    for name, points in logged.items():
        assert_same_series(history[name], points, name)
    assert dict(history["summary/steps"]) == {6: 6}


def test_a_tracker_that_is_not_installed_is_refused_naming_the_field(tiny_model, text_data):
    result = run_cli(
        "train",
        "configs/text-lora.yaml",
        f"model.name_or_path={tiny_model('text')}",
        f"data.train={text_data['train']}",
        "data.eval=null",
        "train.report_to=[comet_ml]",
    )
    assert result.returncode == 2
    assert "train.report_to: 'comet_ml' needs the 'comet_ml' package" in result.stderr
    unknown = run_cli("config", "check", "configs/text-lora.yaml", "train.report_to=[neptune]")
    assert unknown.returncode == 2 and "train.report_to.0:" in unknown.stderr
