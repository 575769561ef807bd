"""What a run leaves behind for people and tools: metrics.jsonl, TensorBoard, train.log, run.json,
and what goes to the experiment trackers of `train.report_to` (trackers.py).

Only the main process writes. On resume, metrics.jsonl is cut back to the checkpoint's step, so
the file lists every optimizer step exactly once even when a killed run had logged past its last
checkpoint.
"""

from __future__ import annotations

import json
import logging
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from omnitune.trainers.config import RunConfig
    from omnitune.trainers.trackers import Trackers

log = logging.getLogger("omnitune.train")

TRACKED_PACKAGES = ("omnitune", "torch", "transformers", "peft", "accelerate", "trl", "tokenizers")


class RunLog:
    def __init__(self, run_dir: Path, enabled: bool, trackers: Trackers | None = None) -> None:
        self.run_dir = run_dir
        self.enabled = enabled
        self.trackers = trackers
        self._metrics = None
        self._tensorboard = None
        self._handler: logging.Handler | None = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        self._handler = logging.FileHandler(run_dir / "train.log", encoding="utf-8")
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logging.getLogger("omnitune").addHandler(self._handler)
        logging.getLogger("omnitune").setLevel(logging.INFO)

    def start(self, config: RunConfig, resumed_step: int) -> None:
        if not self.enabled:
            return
        import yaml

        path = self.run_dir / "metrics.jsonl"
        kept = []
        if resumed_step and path.exists():
            for line in path.read_text().splitlines():
                record = json.loads(line)
                if record.get("step", 0) <= resumed_step:
                    kept.append(line)
        path.write_text("".join(f"{line}\n" for line in kept))
        self._metrics = path.open("a", encoding="utf-8")
        (self.run_dir / "config.yaml").write_text(
            yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
        )
        (self.run_dir / "run.json").write_text(json.dumps(run_metadata(resumed_step), indent=1))
        if "tensorboard" in config.train.report_to:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tensorboard = SummaryWriter(
                    str(self.run_dir / "tensorboard"), purge_step=resumed_step + 1
                )
            except ImportError:
                log.info("tensorboard is not installed: metrics go to metrics.jsonl only")
        if self.trackers is not None:
            self.trackers.start(config, self.run_dir)

    def metrics(self, step: int, values: dict[str, float], kind: str = "train") -> None:
        if not self.enabled or self._metrics is None:
            return
        record = {"step": step, "kind": kind, "time": round(time.time(), 3), **values}
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()
        if self._tensorboard is not None:
            for name, value in values.items():
                self._tensorboard.add_scalar(f"{kind}/{name}", value, step)
        if self.trackers is not None:
            self.trackers.log(values, step, kind)

    def record(self, step: int, kind: str, values: dict[str, Any]) -> None:
        """A metrics.jsonl line of structured values (lists: an MoE run's share per expert
        per layer) that the scalar stores, TensorBoard and the trackers, do not take."""
        if not self.enabled or self._metrics is None:
            return
        record = {"step": step, "kind": kind, "time": round(time.time(), 3), **values}
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()

    def finish(self, summary: dict[str, Any], step: int) -> None:
        """The run's final summary, to the experiment trackers (summary.json has it too)."""
        if self.enabled and self.trackers is not None:
            self.trackers.finish(summary, step)

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self.trackers is not None:
            self.trackers.close()
        if self._handler is not None:
            logging.getLogger("omnitune").removeHandler(self._handler)
            self._handler.close()


def run_metadata(resumed_step: int) -> dict[str, Any]:
    versions = {}
    for package in TRACKED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "command": sys.argv,
        "started_unix": int(time.time()),
        "resumed_from_step": resumed_step,
        "python": platform.python_version(),
        "host": platform.node(),
        "packages": versions,
        "git_revision": _git_revision(),
    }


def _git_revision() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def format_metrics(metrics: dict[str, float]) -> str:
    """'wer 0.1200, loss 1.3000' with breakdown metrics ('wer/speaker=a') grouped at the end:
    '... | speaker=a: wer 0.0800, cer 0.0300; speaker=b: ...'."""
    overall = [f"{k} {v:.4f}" for k, v in metrics.items() if "/" not in k]
    groups: dict[str, list[str]] = {}
    for key, value in metrics.items():
        if "/" in key:
            name, _, part = key.partition("/")
            groups.setdefault(part, []).append(f"{name} {value:.4f}")
    text = ", ".join(overall)
    if groups:
        text += " | " + "; ".join(f"{part}: {', '.join(values)}" for part, values in groups.items())
    return text
