"""omnitune from scripts and notebooks: what `omnitune train`, `eval`, `export` and
`config check` do, as functions.

    import omnitune

    result = omnitune.train("configs/text-lora.yaml", train={"max_steps": 60})
    scores = omnitune.evaluate(result.run_dir, data="data/text/eval.jsonl")
    adapter = omnitune.export(result.run_dir)

A config is a YAML path, a dict or a `RunConfig`; keyword arguments override it, a section as a
dict (`train={"max_steps": 60}`, merged into the section) or one key with `__` for each dot
(`train__max_steps=60`). Where a config takes a data path (`data.train`, `data.eval`, the
`data` of `evaluate`), a `datasets.Dataset` or a list of dicts may stand instead. Errors are
the CLI's, raised rather than printed: `ConfigError` names the field, `DataError` the file and
line.

Importing this package imports neither torch nor transformers (nor pydantic): each function
imports what it needs when it runs, so `import omnitune` stays cheap in a notebook or a
serving process.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omnitune.trainers.errors import (
    ConfigError,
    DataError,
    MissingDependencyError,
    OmnituneError,
    UsageError,
)

if TYPE_CHECKING:
    from omnitune.trainers.config import RunConfig
    from omnitune.trainers.loop import RunResult

__all__ = [
    "ConfigError",
    "DataError",
    "Evaluation",
    "MissingDependencyError",
    "OmnituneError",
    "UsageError",
    "evaluate",
    "export",
    "load_config",
    "train",
]

#: Config fields where in-memory data may stand for a path.
DATA_FIELDS = ("train", "eval")


@dataclass(frozen=True)
class Evaluation:
    """What `evaluate` measured: the data's summary line (rows and skips), the number of
    examples scored, and the metrics (`wer`, `exact_match`, `loss`, per-group `wer/speaker=a`)."""

    data: str
    examples: int
    metrics: dict[str, float]


def load_config(config: str | Path | dict[str, Any] | RunConfig, /, **overrides: Any) -> RunConfig:
    """A validated run config from a YAML path, a dict or a `RunConfig`, overrides applied.

    Raises ConfigError naming the field (`train.max_steps: ...`), as `omnitune config check`
    prints it."""
    from omnitune.trainers.config import RunConfig
    from omnitune.trainers.configio import apply_overrides, read_yaml, validate

    if isinstance(config, RunConfig):
        data, source = config.model_dump(mode="json"), "config"
    elif isinstance(config, dict):
        data, source = dict(config), "config"
    elif isinstance(config, (str, Path)):
        data, source = read_yaml(config), str(config)
    else:
        raise ConfigError(
            f"config: a YAML path, a dict or a RunConfig, not {type(config).__name__}"
        )
    data = apply_overrides(data, override_strings(overrides))
    section = data.get("data")
    if isinstance(section, dict):
        data["data"] = {
            key: (as_data_file(value, f"data.{key}") if key in DATA_FIELDS else value)
            for key, value in section.items()
        }
    return validate(RunConfig, data, source=source)


def train(config: str | Path | dict[str, Any] | RunConfig, /, **overrides: Any) -> RunResult:
    """Fine-tune as `omnitune train` does; returns the run's result (`run_dir`, `steps`,
    `train_loss`, `eval_metrics`, `best_step`, `output`: the adapter or model folder).

    A run folder that holds a checkpoint is resumed, as from the CLI (`train__resume="never"`
    starts over)."""
    from omnitune.trainers.loop import train as run

    return run(load_config(config, **overrides))


def evaluate(target: str | Path, /, data: Any = None, **overrides: Any) -> Evaluation:
    """Score a run folder (its best checkpoint) or a model (a local folder or hub id) on `data`
    (a path, a `datasets.Dataset` or a list of dicts; default: the run's `data.eval`), as
    `omnitune eval` does."""
    from omnitune.trainers.evaluation import evaluate_target

    source = None if data is None else as_data_file(data, "data")
    summary, count, metrics = evaluate_target(str(target), source, override_strings(overrides))
    return Evaluation(data=summary, examples=count, metrics=metrics)


def export(
    run: str | Path, /, out: str | Path | None = None, merge: bool = False, which: str = "best"
) -> Path:
    """Write a run's adapter (or, with `merge`, the model with the adapter merged in) from its
    best checkpoint (`which`: "best", "last" or a checkpoint folder); returns the folder."""
    from omnitune.trainers.export import export_run

    return export_run(run, merge=merge, out=out, which=which)


def override_strings(overrides: dict[str, Any]) -> list[str]:
    """Keyword overrides as the CLI's `a.b=value` strings: `train={"max_steps": 60}` and
    `train__max_steps=60` both give `train.max_steps=60`. Values are written as JSON, which
    the override parser (YAML) reads back as the same value."""
    import json

    strings: list[str] = []

    def add(path: list[str], value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, inner in value.items():
                add([*path, str(key)], inner)
            return
        if isinstance(value, Path):
            value = str(value)
        if path[0] == "data" and len(path) == 2 and path[1] in DATA_FIELDS:
            value = as_data_file(value, ".".join(path))
        strings.append(f"{'.'.join(path)}={json.dumps(value, default=str)}")

    for key, value in overrides.items():
        add(key.split("__"), value)
    return strings


def as_data_file(value: Any, field: str) -> Any:
    """A path for data given in memory: a `datasets.Dataset` or a list of dicts is written once
    as JSONL under $OMNITUNE_CACHE/in-memory/, named by its content, and read from there like
    any file (so the prepared cache and the run's config refer to it). Paths and None pass
    through. Media in such rows (audio, images) must be absolute paths."""
    import hashlib
    import json
    import os

    if value is None or isinstance(value, (str, Path)):
        return None if value is None else str(value)
    if hasattr(value, "to_list") and hasattr(value, "column_names"):  # datasets.Dataset
        rows = value.to_list()
    elif isinstance(value, list) and all(isinstance(row, dict) for row in value):
        rows = value
    else:
        raise ConfigError(
            f"{field}: a path, a datasets.Dataset or a list of dicts, not {type(value).__name__}"
        )
    if not rows:
        raise ConfigError(f"{field}: the in-memory dataset has no rows")
    try:
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    except TypeError as error:
        raise ConfigError(f"{field}: a row cannot be written as JSON ({error})") from None
    from omnitune.modalities.base import default_cache_root

    folder = default_cache_root() / "in-memory"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{hashlib.sha256(text.encode()).hexdigest()[:24]}.jsonl"
    if not path.is_file():
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    return str(path)
