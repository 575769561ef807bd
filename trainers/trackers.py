"""Experiment trackers (`train.report_to`): MLflow, Weights & Biases and the rest of
accelerate's integrations, the ones users know from the Hugging Face Trainer.

TensorBoard is written by `RunLog` itself (a resumed run purges the steps a killed run logged
past its checkpoint, which accelerate's tracker cannot); every other name is handed to
accelerate's `Accelerator(log_with=...)`. A run reports its config (flattened to `section.key`
parameters) when it starts, every metric that goes to `metrics.jsonl` under the same step and
the name `KIND/METRIC` (`train/loss`, `eval/wer`), and its final summary (`summary/steps`,
`summary/train_loss`, the best eval metrics) at the end. Only the main process reports.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omnitune.core.errors import ConfigError

if TYPE_CHECKING:
    from omnitune.trainers.config import RunConfig

#: tracker name -> the module it needs (what `pip install` brings it).
TRACKER_MODULES = {
    "tensorboard": "tensorboard",
    "mlflow": "mlflow",
    "wandb": "wandb",
    "comet_ml": "comet_ml",
    "aim": "aim",
    "clearml": "clearml",
    "dvclive": "dvclive",
    "swanlab": "swanlab",
    "trackio": "trackio",
}
#: The W&B project and MLflow experiment of a run, unless $WANDB_PROJECT names another
#: (for both; accelerate's MLflow tracker lets $MLFLOW_EXPERIMENT_NAME win for MLflow).
DEFAULT_PROJECT = "omnitune"


def accelerate_trackers(report_to: list[str]) -> list[str]:
    """The trackers accelerate runs (all but TensorBoard), each checked to be installed."""
    names = [name for name in report_to if name != "tensorboard"]
    for name in names:
        module = TRACKER_MODULES[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(
                f"train.report_to: '{name}' needs the '{module}' package: "
                f"pip install 'omnitune[trackers]' (MLflow, W&B) or pip install {module}"
            )
    return names


class Trackers:
    """The run's accelerate trackers; every method is a no-op when there are none."""

    def __init__(self, accelerator: Any, names: list[str]) -> None:
        self.accelerator, self.names = accelerator, names
        self.open = False

    def start(self, config: RunConfig, run_dir: Path) -> None:
        if not self.names:
            return
        init: dict[str, dict[str, Any]] = {
            "wandb": {"name": run_dir.name, "dir": str(run_dir)},
            "mlflow": {"run_name": run_dir.name},
        }
        project = os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT
        try:
            self.accelerator.init_trackers(
                project,
                config=flat_config(config.model_dump(mode="json")),
                init_kwargs={name: init[name] for name in self.names if name in init},
            )
        except Exception as error:  # the tracker's own complaint (store, credentials) is the news
            raise ConfigError(
                f"train.report_to: {', '.join(self.names)} could not start: "
                f"{type(error).__name__}: {error}"
            ) from None
        self.open = True

    def log(self, values: dict[str, float], step: int, kind: str) -> None:
        if self.open:
            numbers = {f"{kind}/{k}": v for k, v in values.items() if _is_number(v)}
            self.accelerator.log(numbers, step=step)

    def finish(self, summary: dict[str, Any], step: int) -> None:
        if not self.open:
            return
        values = {f"summary/{k}": v for k, v in summary.items() if _is_number(v)}
        for name, value in summary.get("eval_metrics", {}).items():
            if _is_number(value):
                values[f"summary/eval_{name}"] = value
        self.accelerator.log(values, step=step)
        self.close()

    def close(self) -> None:
        """End the trackers' runs (also when training failed: W&B would wait for them)."""
        if self.open:
            self.open = False
            self.accelerator.end_training()


def flat_config(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1e-4}} -> {"train.lr": 1e-4}; lists and None as text (what every
    tracker's parameter store takes)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_config(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
