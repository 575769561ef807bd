"""Thresholds for the sequential detector, calibrated by simulation to an expected run length.

A drift alarm's false-alarm rate is stated as its expected run length (ERT): the mean number of
events, from the first full largest window, to an alarm when nothing drifted. One threshold per
feature and window would each have some ERT, but a model alarms when any of them crosses, and
the windows overlap, so neither a Bonferroni split nor a closed form gives the model's ERT.

So the calibration simulates runs. Each run draws its own "true" traffic distribution from the
reference's sampling uncertainty (a finite reference is not the truth, and a threshold fitted to
the reference alone alarms far too often on real traffic: see `simulate_blocks`), then block
sums from that distribution, and the detector's statistics over them. Every (feature, window)
statistic gets the same tail probability q, and a bisection finds the q at which the mean, over
runs, of the time to the first alarm is the ERT. Averaging run lengths (not pooling alarm
rates) is what matters here: runs whose truth lies close to the reference alarm rarely, and a
pooled rate would let the others decide, stating an ERT shorter than the mean a user sees.

Each run keeps only the records of its statistics' running maximum (a few dozen values), from
which its first crossing of any threshold is read, so the bisection costs microseconds and the
simulation is done in chunks of runs in bounded memory. Calibration takes about a second per
feature at the default ERT and is cached next to the reference
(`<reference>.calibration.json`), keyed by the reference's content and every setting that
changes the thresholds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from omnitune.monitor.detectors import OnlineStatistic

logger = logging.getLogger("omnitune.monitor")

#: bump when the statistics or the simulation change, so that old caches are rebuilt.
CALIBRATION_VERSION = 2

#: simulated runs to a first alarm; the ERT estimate's relative error is about 1/sqrt of this.
RUNS = 200
#: each run is followed for this many ERTs; later first alarms count as that long (censored:
#: about 2% of a geometric run length's mean, so the stated ERT errs long by that much).
HORIZON_ERTS = 4
#: numbers simulated at once (block sums x contribution width): runs go in chunks of this size.
CHUNK_VALUES = 8_000_000
#: blocks simulated in all, at most; past it the horizon shortens (a warning says so).
MAX_SIMULATED_BLOCKS = 4_000_000


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
    """Thresholds per feature and window so that the model's first alarm comes, on average,
    `expected_run_events` events after the first full largest window when nothing drifted."""
    start = time.perf_counter()
    spans = [w // block for w in windows]
    longest = max(spans)
    target = expected_run_events / block  # mean run length in blocks
    horizon = max(int(HORIZON_ERTS * target), 4 * longest)
    if RUNS * (horizon + longest) > MAX_SIMULATED_BLOCKS:
        horizon = MAX_SIMULATED_BLOCKS // RUNS - longest
        logger.warning(
            "drift calibration: an ERT of %d events is %d blocks of %d; runs are followed for "
            "%d blocks only, so the stated ERT is a lower bound (raise drift.block_events)",
            expected_run_events,
            int(target),
            block,
            horizon,
        )
    length = horizon + longest - 1  # blocks per run; the first test is at block longest - 1
    # The tail any one series may need: a model's alarm every `target` blocks, each crossing
    # lasting up to a window, shared by at least one series.
    share = min(1.0, 4.0 * longest / target)

    def simulate(index: int, statistic: OnlineStatistic) -> list[_RunSeries]:
        rng = np.random.default_rng([seed, index])  # per feature: the same whatever the threads
        return _RunSeries.simulate(statistic, spans, windows, rng, block, length, longest, share)

    # numpy releases the GIL in its kernels, so features simulate in parallel on threads.
    with ThreadPoolExecutor(max_workers=min(len(statistics), os.cpu_count() or 1)) as pool:
        series = list(pool.map(simulate, range(len(statistics)), statistics.values()))
    flat = [s for group in series for s in group]
    names = [(name, w) for name in statistics for w in windows]

    def first_alarms(q: float) -> np.ndarray:
        """Per run, the block of its first alarm (`horizon` where none came)."""
        first = np.full(RUNS, horizon, dtype=np.int64)
        for s in flat:
            s.first_crossings(s.threshold(q), first)
        return first

    # q: the share of a series' tested blocks at or above its threshold (same for all series).
    low, high = math.log(0.5 / (RUNS * horizon)), math.log(0.5)
    for _ in range(40):
        middle = (low + high) / 2
        early = first_alarms(math.exp(middle)).mean() < target
        low, high = (low, middle) if early else (middle, high)
    q = math.exp(low)
    first = first_alarms(q)
    thresholds: dict[str, list[float]] = {}
    for (name, _), s in zip(names, flat, strict=True):
        thresholds.setdefault(name, []).append(s.threshold(q))
    return Calibration(
        key=key,
        expected_run_events=expected_run_events,
        simulated_run_events=round(float(first.mean()) * block, 1),
        simulated_alarms=int(np.sum(first < horizon)),
        tail_probability=q,
        thresholds=thresholds,
        seconds=round(time.perf_counter() - start, 3),
    )


@dataclass
class _RunSeries:
    """One (feature, window) statistic over the simulated runs, reduced to what the bisection
    reads: its largest values (for thresholds at a tail probability) and, per run, the records
    of its running maximum (for the first crossing of any threshold)."""

    top: np.ndarray  # the largest values over all runs' tested blocks, descending
    tested: int  # tested blocks over all runs
    record_values: np.ndarray  # per run, increasing; flattened
    record_blocks: np.ndarray  # the block (from the first test) of each record
    record_runs: np.ndarray  # the run of each record

    def threshold(self, q: float) -> float:
        rank = min(len(self.top) - 1, max(0, math.ceil(q * self.tested) - 1))
        return float(self.top[rank])

    def first_crossings(self, limit: float, first: np.ndarray) -> None:
        """Lower `first` (per run) to this series' first block above `limit`."""
        above = self.record_values > limit
        np.minimum.at(first, self.record_runs[above], self.record_blocks[above])

    @classmethod
    def simulate(
        cls,
        statistic: OnlineStatistic,
        spans: list[int],
        windows: list[int],
        rng: np.random.Generator,
        block: int,
        length: int,
        longest: int,
        share: float,
    ) -> list[_RunSeries]:
        tested = length - longest + 1
        per_chunk = max(1, CHUNK_VALUES // (length * statistic.width))
        keep = min(RUNS * tested, int(share * RUNS * tested) + 20 * RUNS)
        parts: list[list[tuple[np.ndarray, ...]]] = [[] for _ in spans]
        for first_run in range(0, RUNS, per_chunk):
            runs = min(per_chunk, RUNS - first_run)
            sums = statistic.simulate_blocks(rng, runs * length, block, runs)
            sums = sums.reshape(runs, length, statistic.width)
            running = np.concatenate(
                [np.zeros((runs, 1, statistic.width)), np.cumsum(sums, axis=1)], axis=1
            )
            for i, (span, window) in enumerate(zip(spans, windows, strict=True)):
                values = statistic.statistic(running[:, span:] - running[:, :-span], window)
                values = values[:, longest - span :]  # column 0: the first test
                peak = np.maximum.accumulate(values, axis=1)
                rising = np.ones_like(peak, dtype=bool)
                rising[:, 1:] = peak[:, 1:] > peak[:, :-1]
                run_index, blocks = np.nonzero(rising)
                flat = values.ravel()
                top = flat[np.argpartition(-flat, keep - 1)[:keep]] if keep < flat.size else flat
                parts[i].append((top, values[rising], blocks, run_index + first_run))
        out = []
        for chunks in parts:
            top = np.sort(np.concatenate([c[0] for c in chunks]))[::-1][:keep]
            out.append(
                cls(
                    top,
                    RUNS * tested,
                    np.concatenate([c[1] for c in chunks]),
                    np.concatenate([c[2] for c in chunks]),
                    np.concatenate([c[3] for c in chunks]),
                )
            )
        return out


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
) -> tuple[Calibration, bool]:
    """The cached calibration for this reference, features and settings, or a new one (then
    cached). Returns it and whether it came from the cache."""
    settings = {
        "features": sorted(statistics),
        "windows": windows,
        "block_events": block,
        "expected_run_events": expected_run_events,
    }
    key = cache_key(source, settings)
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
