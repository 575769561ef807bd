"""Reference profiles: how the training inputs looked, feature by feature.

Training writes one to `runs/NAME/reference.json`; the monitor fits its drift detectors on it.
The same per-modality `features()` functions describe training examples and production events,
so drift always compares like with like. Numpy only: the monitor imports this without torch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

PROFILE_VERSION = 1
#: At most this many values per feature are kept (an evenly spaced sample of the sorted values),
#: enough for KS, PSI and Wasserstein tests while keeping the file small.
MAX_VALUES = 2000


def build_profile(
    modality: str, rows: Iterable[Mapping[str, float]], source: str
) -> dict[str, Any]:
    """Summarise feature rows (one mapping per example) into a JSON-serialisable profile."""
    columns: dict[str, list[float]] = {}
    count = 0
    for row in rows:
        count += 1
        for name, value in row.items():
            if value is not None and math.isfinite(value):
                columns.setdefault(name, []).append(float(value))
    features = {name: _feature(values) for name, values in sorted(columns.items())}
    return {
        "version": PROFILE_VERSION,
        "modality": modality,
        "source": source,
        "examples": count,
        "created_unix": int(time.time()),
        "features": features,
    }


def _feature(values: list[float], count: int | None = None) -> dict[str, Any]:
    """One feature's summary: moments, quantiles and at most MAX_VALUES sorted values."""
    array = np.sort(np.asarray(values, dtype=np.float64))
    if len(array) > MAX_VALUES:
        array = array[np.linspace(0, len(array) - 1, MAX_VALUES).round().astype(int)]
    quantiles = np.quantile(array, [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99])
    return {
        "count": len(values) if count is None else count,
        "mean": float(np.mean(values)),
        "std": float(np.std(values)),
        "min": float(array[0]),
        "max": float(array[-1]),
        "quantiles": dict(
            zip(["p01", "p05", "p25", "p50", "p75", "p95", "p99"], quantiles.tolist(), strict=True)
        ),
        "values": [round(v, 6) for v in array.tolist()],
    }


def union_profiles(profiles: list[Mapping[str, Any]]) -> dict[str, Any]:
    """One profile for the inputs of several training sets (a merged adapter serves them all):
    each feature's kept values, resampled in proportion to each set's example count, pooled."""
    modalities = {p["modality"] for p in profiles}
    if len(modalities) != 1:
        raise ValueError(f"profiles of different modalities: {sorted(modalities)}")
    examples = [int(p["examples"]) for p in profiles]
    features: dict[str, Any] = {}
    names = sorted({name for p in profiles for name in p["features"]})
    for name in names:
        pooled: list[float] = []
        count = 0
        for profile, n in zip(profiles, examples, strict=True):
            feature = profile["features"].get(name)
            if not feature or not feature["values"]:
                continue
            kept = np.asarray(feature["values"], dtype=np.float64)
            share = max(1, round(MAX_VALUES * n / sum(examples)))
            positions = np.linspace(0, len(kept) - 1, share)
            pooled += np.interp(positions, np.arange(len(kept)), kept).tolist()
            count += int(feature["count"])
        if pooled:
            features[name] = _feature(pooled, count)
    return {
        "version": PROFILE_VERSION,
        "modality": modalities.pop(),
        "source": " + ".join(str(p.get("source", "?")) for p in profiles),
        "examples": sum(examples),
        "created_unix": int(time.time()),
        "features": features,
    }
