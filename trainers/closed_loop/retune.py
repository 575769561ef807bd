"""`omnitune loop retune CHAMPION_RUN --labels DIR`: train a challenger on labelled captures
mixed with a replay sample of the champion's own training data.

The challenger's run config is the champion's saved config (same base, PEFT method, objective,
schedule) with the training data replaced by the mix and, by default, its adapter starting
from the champion's (`peft.init_from`); anything else on the command line overrides it. The
challenger's best checkpoint is chosen on the champion's eval set (the original slice), so the
captured held-out split stays unseen until the gate. `RUN/loop/retune.json` says what went in;
`RUN/loop/provenance.jsonl` where each training row came from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omnitune.core.configio import apply_overrides, validate
from omnitune.core.errors import ConfigError, UsageError
from omnitune.trainers.closed_loop.labels import count_rows, labelled_captures
from omnitune.trainers.closed_loop.replay import Mix, write_mix
from omnitune.trainers.closed_loop.settings import LoopSettings
from omnitune.trainers.config import RunConfig, load_run_config

#: Where a challenger run keeps what the loop wrote for it.
LOOP_DIR = "loop"
RETUNE_RECORD = "retune.json"


@dataclass
class Retuned:
    run_dir: Path
    config: RunConfig
    mix: Mix
    held_out: Path
    held_out_rows: int


def read_run_config(run: Path, what: str) -> RunConfig:
    if not (run / "config.yaml").is_file():
        raise UsageError(f"{what}: {run} is not a run folder (no config.yaml)")
    return load_run_config(run / "config.yaml")


def plan_retune(
    champion: Path,
    labels_dir: Path,
    settings: LoopSettings,
    overrides: list[str],
    out: Path | None,
) -> Retuned:
    """Check the inputs, write the mix and the challenger's config; train nothing yet."""
    base = read_run_config(champion, "CHAMPION_RUN")
    data = apply_overrides(base.model_dump(mode="json"), overrides)
    objective = (data.get("objective") or {}).get("name", "sft")
    captures = labelled_captures(labels_dir, objective)
    labelled = count_rows(captures.train)
    loop = settings.loop
    if labelled < loop.min_labels:
        raise UsageError(
            f"--labels: {captures.train} has {labelled} labelled rows; loop.min_labels is "
            f"{loop.min_labels} (label more captures, or lower it)"
        )
    run_dir = out or _free_name(champion)
    replay = _replay_source(base, objective, loop.replay_data, loop.replay_ratio)
    mix = write_mix(captures.train, replay, loop.replay_ratio, loop.seed, run_dir / LOOP_DIR)
    data.setdefault("data", {})["train"] = str(mix.train)
    data["output_dir"] = str(run_dir)
    if loop.start == "adapter":
        _start_from(champion, base, data)
    config = validate(RunConfig, data, source="challenger config")
    record = {
        "champion": str(champion.resolve()),
        "base": base_model(champion, base),
        "labels": str(labels_dir.resolve()),
        "objective": objective,
        "export_kind": captures.kind,
        "held_out": str(captures.test.resolve()),
        "labelled_rows": mix.labelled,
        "replayed_rows": mix.replayed,
        "replay_source": None if replay is None else str(replay.resolve()),
        "replay_available": mix.replay_available,
        "start": loop.start,
        "settings": settings.loop.model_dump(mode="json"),
        "overrides": overrides,
    }
    (run_dir / LOOP_DIR / RETUNE_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return Retuned(run_dir, config, mix, captures.test, count_rows(captures.test))


def _replay_source(base: RunConfig, objective: str, given: str | None, ratio: float) -> Path | None:
    if ratio == 0:
        return None
    if given:
        return Path(given)
    if objective != base.objective.name:
        raise ConfigError(
            f"loop.replay_data: the champion trained {base.objective.name} rows and the "
            f"challenger trains {objective}; give replay data in the {objective} format, or "
            "set loop.replay_ratio=0"
        )
    source = base.data.train
    if source.startswith("hf:") or not Path(source).is_file():
        raise ConfigError(
            f"loop.replay_data: the champion's data.train ({source}) is not a data file; "
            "replay reads JSONL, CSV or Parquet: give loop.replay_data=FILE, or set "
            "loop.replay_ratio=0"
        )
    return Path(source)


def _start_from(champion: Path, base: RunConfig, data: dict[str, Any]) -> None:
    """Continue from the champion's weights: its adapter as the new adapter's start, or for a
    full fine-tune its saved model as the base."""
    if (champion / "adapter").is_dir():
        data["peft"]["init_from"] = str((champion / "adapter").resolve())
    elif (champion / "model").is_dir():
        data["model"]["name_or_path"] = str((champion / "model").resolve())
    else:
        raise UsageError(
            f"CHAMPION_RUN: {champion} has no adapter/ or model/ folder (did it finish?); "
            "or start from the base with loop.start=base"
        )


def _free_name(champion: Path) -> Path:
    """`CHAMPION-challenger`, or `-challenger-2`, `-3` ... when taken."""
    candidate = champion.parent / f"{champion.name}-challenger"
    number = 2
    while candidate.exists():
        candidate = champion.parent / f"{champion.name}-challenger-{number}"
        number += 1
    return candidate


def retune_record(run: Path) -> dict[str, Any] | None:
    path = run / LOOP_DIR / RETUNE_RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def base_model(run: Path, config: RunConfig) -> str:
    """The base model a run's weights sit on: for a challenger, its champion's base (a full
    fine-tune's challenger loads the champion's saved model, still the same base); a local
    folder as an absolute path, so two spellings of one folder compare equal."""
    record = retune_record(run)
    if record and record.get("base"):
        return record["base"]
    name = config.model.name_or_path
    return str(Path(name).resolve()) if Path(name).exists() else name
