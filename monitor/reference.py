"""What a model's inputs looked like in training: the baseline its drift detectors are fit on.

Two sources: the profile training writes (`runs/NAME/reference.json`, scalar features with up
to 2,000 sampled values each; a run folder is accepted too), or a JSONL file of reference
events, which can also carry embeddings (lists of numbers) and categorical features (strings).
Events are turned into features by the same `event_features()` used on live traffic.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from omnitune.core.errors import ConfigError


@dataclass
class Reference:
    source: str
    scalars: dict[str, np.ndarray] = field(default_factory=dict)
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)
    categories: dict[str, Counter[str]] = field(default_factory=dict)

    def names(self) -> list[str]:
        return sorted([*self.scalars, *self.embeddings, *self.categories])


def load_reference(path: Path, modality: str, name: str = "model") -> Reference:
    """The reference at `path` (reference.json, a run folder holding one, or events JSONL)."""
    if path.is_dir():
        path = path / "reference.json"
    if not path.is_file():
        raise ConfigError(f"models.{name}.reference: {path}: no such file")
    if path.suffix == ".json":
        return _from_profile(path, modality, name)
    return _from_events(path, modality, name)


def _from_profile(path: Path, modality: str, name: str) -> Reference:
    try:
        profile = json.loads(path.read_text(encoding="utf-8"))
        features = profile["features"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(
            f"models.{name}.reference: {path} is not a reference profile (no 'features')"
        ) from None
    if profile.get("modality") not in (None, modality):
        raise ConfigError(
            f"models.{name}.reference: {path} profiles {profile['modality']} inputs, "
            f"but the model is declared {modality}"
        )
    reference = Reference(str(path))
    for feature, summary in features.items():
        values = summary.get("values") if isinstance(summary, dict) else None
        if values:
            reference.scalars[feature] = np.asarray(values, dtype=np.float64)
    if not reference.scalars:
        raise ConfigError(f"models.{name}.reference: {path} has no feature values")
    return reference


def _from_events(path: Path, modality: str, name: str) -> Reference:
    from pydantic import ValidationError

    from omnitune.monitor.events import Event
    from omnitune.monitor.features import event_features

    scalars: dict[str, list[float]] = {}
    vectors: dict[str, list[list[float]]] = {}
    categories: dict[str, Counter[str]] = {}
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                event = Event.model_validate_json(line)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                raise ConfigError(
                    f"models.{name}.reference: {path}, line {line_number}: "
                    f"{where + ': ' if where else ''}{first['msg']}"
                ) from None
            for feature, value in event_features(event, modality).items():
                if isinstance(value, str):
                    categories.setdefault(feature, Counter())[value] += 1
                elif isinstance(value, list):
                    vectors.setdefault(feature, []).append(value)
                else:
                    scalars.setdefault(feature, []).append(value)
    reference = Reference(
        str(path),
        {k: np.sort(np.asarray(v, dtype=np.float64)) for k, v in scalars.items()},
        {k: np.asarray(v, dtype=np.float64) for k, v in vectors.items()},
        categories,
    )
    if not reference.names():
        raise ConfigError(f"models.{name}.reference: {path} has no events with features")
    for feature, matrix in reference.embeddings.items():
        if matrix.ndim != 2:
            raise ConfigError(
                f"models.{name}.reference: {path}: embedding '{feature}' has vectors of "
                "different lengths"
            )
    return reference
