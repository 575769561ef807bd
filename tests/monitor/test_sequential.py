"""The sequential detector keeps its calibrated expected run length and detects a shift fast.

Seeded simulations, bounded in time: each stream has its own reference sample, drawn from the
same distribution as the stream, as a real deployment's reference is.
"""

from __future__ import annotations

import numpy as np

from omnitune.monitor.calibration import cached_calibration, calibrate
from omnitune.monitor.detectors import BinnedCramerVonMises
from omnitune.monitor.sequential import SequentialDrift

WINDOWS, BLOCK, ERT = [50, 200], 10, 1000


def first_alarm(seed: int, shift_at: int | None = None, limit: int = 20 * ERT) -> int | None:
    """Events from the first full largest window to the first alarm (None: none by `limit`)."""
    rng = np.random.default_rng(seed)
    statistics = {"x": BinnedCramerVonMises(rng.normal(0, 1, 2000))}
    thresholds = calibrate(statistics, WINDOWS, BLOCK, ERT, seed=seed).thresholds
    detector = SequentialDrift(statistics, thresholds, WINDOWS, BLOCK)
    values = rng.normal(0, 1, limit)
    if shift_at is not None:
        values[shift_at:] += 1.0  # one reference standard deviation
    for i, value in enumerate(values):
        if detector.update([{"x": float(value)}], [float(i)]):
            return i + 1 - max(WINDOWS)
    return None


def test_mean_run_length_without_drift_is_the_calibrated_one():
    runs = [first_alarm(seed) for seed in range(30)]
    assert all(r is not None for r in runs)
    assert ERT / 2 <= np.mean(runs) <= 2 * ERT


def test_a_one_sigma_shift_is_detected_within_a_tenth_of_the_run_length():
    change = 400
    delays = []
    for seed in range(100, 120):
        alarm = first_alarm(seed, shift_at=change, limit=change + ERT)
        if alarm is not None and alarm + max(WINDOWS) > change:  # not a false alarm before it
            delays.append(alarm + max(WINDOWS) - change)
    assert len(delays) >= 15
    assert np.mean(delays) < ERT / 10


def test_calibration_is_cached_next_to_the_reference_and_rebuilt_when_it_changes(tmp_path):
    reference = tmp_path / "reference.json"
    reference.write_text('{"features": {"x": {"values": [1, 2, 3]}}}')
    statistics = {"x": BinnedCramerVonMises(np.random.default_rng(0).normal(0, 1, 500))}
    settings = {"windows": WINDOWS, "block": BLOCK, "ert": ERT}
    first, cached = cached_calibration(str(reference), statistics, WINDOWS, BLOCK, ERT, settings)
    assert not cached and (tmp_path / "reference.json.calibration.json").is_file()
    again, cached = cached_calibration(str(reference), statistics, WINDOWS, BLOCK, ERT, settings)
    assert cached and again.thresholds == first.thresholds
    reference.write_text('{"features": {"x": {"values": [1, 2, 4]}}}')
    _, cached = cached_calibration(str(reference), statistics, WINDOWS, BLOCK, ERT, settings)
    assert not cached
