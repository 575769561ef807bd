"""Thresholds for the sequential detector, calibrated by simulation to an expected run length.

A drift alarm's false-alarm rate is stated as its expected run length (ERT): the mean number of
events, from the moment the detector starts testing, to an alarm when nothing drifted. One
threshold per feature and window would each have some ERT, but a model alarms when any of them
crosses, and the windows overlap, so neither a Bonferroni split nor a closed form gives the
model's ERT. Instead: simulate one long null stream per feature (block sums drawn from the
reference, `OnlineStatistic.simulate_blocks`), give every (feature, window) statistic the same
tail probability q, and find by bisection the q whose alarms, with the detector restarting after
each one as the daemon's would, come every ERT events on average. The windows are full again one
largest window after a restart, so the simulated runs are exactly those of a restarted detector.

Calibration takes a fraction of a second per feature at the default ERT and is cached next to
the reference (`<reference>.calibration.json`), keyed by the reference's content and every
setting that changes the thresholds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from omnitune.monitor.detectors import OnlineStatistic

logger = logging.getLogger("omnitune.monitor")

#: bump when the statistics or the simulation change, so that old caches are rebuilt.
CALIBRATION_VERSION = 1

#: simulated alarms aimed for; the ERT estimate's relative error is about 1/sqrt of this.
TARGET_ALARMS = 200
MAX_SIMULATED_BLOCKS = 4_000_000
SEGMENTS = 40


@dataclass
class Calibration:
    key: str
    expected_run_events: int
    simulated_run_events: float
    simulated_alarms: int
    tail_probability: float
    thresholds: dict[str, list[float]]
    seconds: float

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1), encoding="utf-8")

    @classmethod
    def read(cls, path: Path) -> Calibration | None:
        try:
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            return None


def calibrate(
    statistics: dict[str, OnlineStatistic],
    windows: list[int],
    block: int,
    expected_run_events: int,
    seed: int = 0,
    key: str = "",
) -> Calibration:
    """Thresholds per feature and window so that the model's alarms come every
    `expected_run_events` events (counted from the first full largest window) without drift."""
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    spans = [w // block for w in windows]
    longest = max(spans)
    target = expected_run_events / block  # mean run length in blocks
    blocks = int(min(MAX_SIMULATED_BLOCKS, max(20 * longest, TARGET_ALARMS * (target + longest))))
    valid = blocks - longest + 1
    # The tail share any one series may need: a model's alarm every `target` blocks, each
    # crossing lasting up to a window, shared by at least one series.
    keep = min(valid, int(valid * min(1.0, 4.0 * longest / target)) + 2000)
    tops: list[tuple[np.ndarray, np.ndarray]] = []  # per series: values desc, block indices
    names: list[tuple[str, int]] = []
    for name, statistic in statistics.items():
        sums = statistic.simulate_blocks(rng, blocks, block, SEGMENTS)
        running = np.concatenate([np.zeros((1, statistic.width)), np.cumsum(sums, axis=0)])
        for span, window in zip(spans, windows, strict=True):
            series = statistic.statistic(running[span:] - running[:-span], window)
            series = series[longest - span :]  # aligned: index 0 = block longest - 1
            top = np.argpartition(-series, keep - 1)[:keep] if keep < len(series) else None
            index = np.arange(len(series)) if top is None else top
            order = np.argsort(-series[index], kind="stable")
            tops.append((series[index][order], index[order]))
            names.append((name, window))

    def thresholds_at(q: float) -> list[float]:
        rank = min(keep - 1, max(0, math.ceil(q * valid) - 1))
        return [float(values[rank]) for values, _ in tops]

    def run_length(q: float) -> tuple[float, int]:
        limits = thresholds_at(q)
        crossings = np.unique(
            np.concatenate(
                [idx[values > limit] for (values, idx), limit in zip(tops, limits, strict=True)]
            )
        )
        at_risk, alarms, position = 0, 0, 0
        while True:
            found = int(np.searchsorted(crossings, position))
            if found == len(crossings):
                at_risk += valid - position
                break
            alarm = int(crossings[found])
            at_risk += alarm - position + 1
            alarms += 1
            position = alarm + longest  # the restarted detector's windows are full again
        return at_risk / max(alarms, 1), alarms

    low, high = math.log(1.0 / valid), math.log(keep / valid)
    for _ in range(40):
        middle = (low + high) / 2
        mean, _ = run_length(math.exp(middle))
        low, high = (low, middle) if mean < target else (middle, high)
    q = math.exp(low)
    mean, alarms = run_length(q)
    limits = thresholds_at(q)
    thresholds: dict[str, list[float]] = {}
    for (name, _), limit in zip(names, limits, strict=True):
        thresholds.setdefault(name, []).append(limit)
    if alarms < 20:
        logger.warning(
            "drift calibration: only %d simulated alarms for an ERT of %d events; the "
            "thresholds are rough (lower drift.expected_run_events or raise drift.block_events)",
            alarms,
            expected_run_events,
        )
    return Calibration(
        key=key,
        expected_run_events=expected_run_events,
        simulated_run_events=round(mean * block, 1),
        simulated_alarms=alarms,
        tail_probability=q,
        thresholds=thresholds,
        seconds=round(time.perf_counter() - start, 3),
    )


def cache_key(source: str, settings: dict[str, object]) -> str:
    """The reference file's bytes (or its name, for an in-memory one) plus the settings."""
    digest = hashlib.sha256()
    path = Path(source)
    digest.update(path.read_bytes() if path.is_file() else source.encode())
    digest.update(json.dumps({**settings, "version": CALIBRATION_VERSION}, sort_keys=True).encode())
    return digest.hexdigest()[:32]


def cache_path(source: str) -> Path | None:
    path = Path(source)
    return path.with_name(path.name + ".calibration.json") if path.is_file() else None


def cached_calibration(
    source: str,
    statistics: dict[str, OnlineStatistic],
    windows: list[int],
    block: int,
    expected_run_events: int,
    settings: dict[str, object],
) -> tuple[Calibration, bool]:
    """The cached calibration for this reference and settings, or a new one (then cached).
    Returns it and whether it came from the cache."""
    key = cache_key(source, {**settings, "features": sorted(statistics)})
    path = cache_path(source)
    if path is not None:
        cached = Calibration.read(path)
        if cached is not None and cached.key == key:
            return cached, True
    calibration = calibrate(statistics, windows, block, expected_run_events, key=key)
    if path is not None:
        try:
            calibration.save(path)
        except OSError as exc:  # a read-only reference folder: calibrate at every start
            logger.warning("drift calibration not cached (%s): %s", path, exc)
    return calibration, False
