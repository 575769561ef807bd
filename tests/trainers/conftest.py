"""Fixtures for trainer tests: a small learnable text task and run configs that point at it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml


@pytest.fixture
def run_config(tmp_path: Path, tiny_model, text_data) -> Callable[..., Path]:
    """`run_config(name, **sections)` writes a text run config; sections update the defaults."""

    def write(name: str = "run", **sections: dict[str, Any]) -> Path:
        config: dict[str, Any] = {
            "model": {"name_or_path": str(tiny_model("text")), "modality": "text"},
            "data": {"train": str(text_data["train"]), "eval": str(text_data["eval"])},
            "peft": {"method": "lora", "r": 8, "alpha": 16},
            "train": {
                "max_steps": 30,
                "batch_size": 16,
                "lr": 3e-3,
                "logging_steps": 5,
                "eval_steps": 15,
                "save_steps": 15,
                "num_threads": 1,
            },
            "output_dir": str(tmp_path / name),
        }
        for section, values in sections.items():
            if isinstance(values, dict):
                config.setdefault(section, {}).update(values)
            else:
                config[section] = values
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    return write


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def eval_losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run_dir) if r["kind"] == "eval"]
