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

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omnitune.core.errors import (
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
    examples scored, the metrics (`wer`, `exact_match`, `loss`, per-group `wer/speaker=a`), and
    for a run which checkpoint was scored (`best checkpoint, step 40 of 60 (wer 0.2790)`)."""

    data: str
    examples: int
    metrics: dict[str, float]
    checkpoint: str | None = None


def load_config(config: str | Path | dict[str, Any] | RunConfig, /, **overrides: Any) -> RunConfig:
    """A validated run config from a YAML path, a dict or a `RunConfig`, overrides applied.

    Raises ConfigError naming the field (`train.max_steps: ...`), as `omnitune config check`
    prints it."""
    from omnitune.core.configio import apply_overrides, read_yaml, validate
    from omnitune.trainers.config import RunConfig

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

    config = load_config(config, **overrides)
    _log_to_stderr()
    with _in_memory_names():
        return run(config)


def evaluate(
    target: str | Path, /, data: Any = None, checkpoint: str = "best", **overrides: Any
) -> Evaluation:
    """Score a run folder (its best checkpoint, or `checkpoint`: "last", "step-N") or a model
    (a local folder or hub id) on `data` (a path, a `datasets.Dataset` or a list of dicts;
    default: the run's `data.eval`), as `omnitune eval` does."""
    from omnitune.trainers.evaluation import evaluate_target

    source = None if data is None else as_data_file(data, "data")
    with _in_memory_names():
        result = evaluate_target(
            str(target), source, override_strings(overrides), checkpoint, speed=False
        )
    return Evaluation(
        data=result.data,
        examples=result.examples,
        metrics=result.metrics,
        checkpoint=result.checkpoint.describe() if result.checkpoint else None,
    )


def export(
    run: str | Path, /, out: str | Path | None = None, merge: bool = False, which: str = "best"
) -> Path:
    """Write a run's adapter (or, with `merge`, the model with the adapter merged in) from its
    best checkpoint (`which`: "best", "last", "step-N" or a checkpoint folder); returns the
    folder written (RUN/exported-adapter, RUN/merged or `out`)."""
    from omnitune.trainers.export import export_run

    return export_run(run, merge=merge, out=out, which=which).folder


def _log_to_stderr() -> None:
    """omnitune's progress lines (data read, evaluations, steps) to standard error at INFO, as
    the CLI shows them, unless the program configured logging itself (a handler on the root or
    the `omnitune` logger): then its configuration decides."""
    import logging
    import sys

    library = logging.getLogger("omnitune")
    if logging.getLogger().handlers or library.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    library.addHandler(handler)
    if library.level == logging.NOTSET:
        library.setLevel(logging.INFO)


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


#: File endings of media that rows name (audio clips, images).
MEDIA_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".png", ".jpg", ".jpeg")
MEDIA_SUFFIXES += (".webp", ".gif", ".bmp", ".tif", ".tiff")


def _absolute_media(value: Any) -> Any:
    """A relative media path (or a list of them) made absolute against the current directory:
    the JSONL the rows are written to lives in the cache, where a relative path means nothing."""
    if isinstance(value, list):
        return [_absolute_media(item) for item in value]
    if (
        isinstance(value, str)
        and value.lower().endswith(MEDIA_SUFFIXES)
        and "://" not in value
        and not Path(value).is_absolute()
    ):
        return str(Path(value).resolve())
    return value


#: The JSONL files written for in-memory data -> the argument they stand for ("data.train").
_IN_MEMORY: dict[str, str] = {}


@contextmanager
def _in_memory_names() -> Iterator[None]:
    """Errors about in-memory rows name the argument and row the caller gave, not the JSONL
    file in the cache that holds them (`data.train (in memory), row 3: ...`)."""
    try:
        yield
    except OmnituneError as error:
        message = str(error)
        for path, field in _IN_MEMORY.items():
            row = rf"{field} (in memory), row \1:"
            message = re.sub(re.escape(path) + r":(\d+):", row, message)
            message = message.replace(path, f"{field} (in memory)")
        if message == str(error):
            raise
        raise type(error)(message) from error


def as_data_file(value: Any, field: str) -> Any:
    """A path for data given in memory: a `datasets.Dataset` or a list of dicts is written once
    as JSONL under $OMNITUNE_CACHE/in-memory/, named by its content, and read from there like
    any file (so the prepared cache and the run's config refer to it). Paths and None pass
    through. Relative media paths in such rows (audio clips, images) are taken from the current
    directory, as the caller meant them, and written as absolute paths."""
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
    rows = [{key: _absolute_media(value) for key, value in row.items()} for row in rows]
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
    _IN_MEMORY[str(path)] = field
    return str(path)
