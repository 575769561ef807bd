"""The sequential detector keeps its calibrated expected run length and detects a shift fast.

Seeded simulations, bounded in time: each stream has its own reference sample, drawn from the
same distribution as the stream, as a real deployment's reference is. Run lengths count events
from the first full largest window to the first alarm.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from omnitune.monitor.calibration import cached_calibration, calibrate
from omnitune.monitor.detectors import BinnedCramerVonMises, FourierMMD
from omnitune.monitor.sequential import SequentialDrift

WINDOWS, BLOCK, ERT = [50, 200], 10, 1000

#: (reference statistics, a function drawing n events as feature dicts) for one seeded stream.
Stream = tuple[dict[str, Any], Callable[[int], list[dict[str, Any]]]]


def scalar_stream(seed: int, features: int = 1, shift_at: int | None = None) -> Stream:
    rng = np.random.default_rng(seed)
    statistics = {f"x{i}": BinnedCramerVonMises(rng.normal(0, 1, 2000)) for i in range(features)}
    drawn = [0]

    def draw(n: int) -> list[dict[str, Any]]:
        values = rng.normal(0, 1, (n, features))
        if shift_at is not None:
            values[max(0, shift_at - drawn[0]) :, 0] += 1.0  # one reference standard deviation
        drawn[0] += n
        return [{f"x{i}": float(v) for i, v in enumerate(row)} for row in values]

    return statistics, draw


def embedding_stream(seed: int) -> Stream:
    rng = np.random.default_rng(seed)
    statistics = {"e": FourierMMD(rng.normal(0, 1, (1000, 8)), seed=seed)}
    return statistics, lambda n: [{"e": row.tolist()} for row in rng.normal(0, 1, (n, 8))]


def session_stream(seed: int, mean_session: float = 4.0) -> Stream:
    """Sessions of repeated inputs: each input is sent a geometric number of times in a row
    (a user retrying, a retry storm), so consecutive events are identical."""
    statistics, draw_one = scalar_stream(seed, features=3)
    rng = np.random.default_rng(seed + 10_000)
    queue: list[dict[str, Any]] = []

    def draw(n: int) -> list[dict[str, Any]]:
        while len(queue) < n:
            row = draw_one(1)[0]
            row["_input"] = f"{seed}-{len(queue)}-{rng.random()}"
            queue.extend(dict(row) for _ in range(int(rng.geometric(1 / mean_session))))
        taken = queue[:n]
        del queue[:n]
        return taken

    return statistics, draw


def first_alarm(stream: Stream, seed: int, limit: int = 20 * ERT, dedupe: bool = True) -> int:
    """Tested events from the first full largest window to the first alarm (`limit` if none);
    repeats that dedupe skipped are not tested, so they do not count."""
    statistics, draw = stream
    thresholds = calibrate(statistics, WINDOWS, BLOCK, ERT, seed=seed).thresholds
    detector = SequentialDrift(statistics, thresholds, WINDOWS, BLOCK, dedupe=dedupe)
    sent = 0
    while sent < limit:
        rows = draw(BLOCK)
        marks = [r.pop("_input", None) for r in rows]
        alarms = detector.update(rows, [float(sent + i) for i in range(BLOCK)], marks)
        sent += BLOCK
        if alarms:
            return detector.tested - max(WINDOWS)
    return limit


def mean_run_length(make: Callable[[int], Stream], seeds: range, **options: Any) -> float:
    return float(np.mean([first_alarm(make(seed), seed, **options) for seed in seeds]))


def test_mean_run_length_without_drift_is_the_calibrated_one():
    assert ERT / 2 <= mean_run_length(scalar_stream, range(30)) <= 2 * ERT


def test_embeddings_keep_the_calibrated_run_length():
    assert ERT / 2 <= mean_run_length(embedding_stream, range(30)) <= 2 * ERT


def test_a_model_with_many_features_alarms_at_the_models_run_length_not_each_features():
    many = mean_run_length(lambda seed: scalar_stream(seed, features=10), range(20))
    assert ERT / 2 <= many <= 2 * ERT


def test_sessions_of_repeated_inputs_keep_the_run_length_only_with_dedupe():
    deduped = mean_run_length(session_stream, range(20))
    assert ERT / 2 <= deduped <= 2 * ERT
    # Without it, repeats shrink the windows' effective sample size and alarms come early.
    repeated = mean_run_length(session_stream, range(20), dedupe=False)
    assert repeated < ERT / 2


def test_a_one_sigma_shift_is_detected_within_a_tenth_of_the_run_length():
    change = 400
    delays = []
    for seed in range(100, 120):
        stream = scalar_stream(seed, shift_at=change)
        alarm = first_alarm(stream, seed, limit=change + ERT)
        if max(WINDOWS) + alarm > change:  # not a false alarm before the change
            delays.append(max(WINDOWS) + alarm - change)
    assert len(delays) >= 15
    assert np.mean(delays) < ERT / 10


def test_an_alarm_reports_its_delay_from_the_estimated_change_point():
    statistics, draw = scalar_stream(7, shift_at=600)
    thresholds = calibrate(statistics, WINDOWS, BLOCK, 5000, seed=7).thresholds
    detector = SequentialDrift(statistics, thresholds, WINDOWS, BLOCK)
    for start in range(0, 2000, 50):
        rows = draw(50)
        alarms = detector.update(rows, [100.0 + (start + i) * 0.5 for i in range(50)])
        if alarms:
            break
    (feature, alarm), *_ = alarms
    assert feature == "x0"
    detected_at = start + 50
    true_delay = detected_at - 600
    assert abs(alarm.delay_events - true_delay) <= 30
    assert abs(alarm.delay_s - 0.5 * alarm.delay_events) <= 0.5 * 2 * BLOCK


def test_calibration_is_cached_next_to_the_reference_and_rebuilt_when_it_changes(tmp_path):
    reference = tmp_path / "reference.json"
    reference.write_text('{"features": {"x": {"values": [1, 2, 3]}}}')
    statistics = {"x": BinnedCramerVonMises(np.random.default_rng(0).normal(0, 1, 500))}
    first, cached = cached_calibration(str(reference), statistics, WINDOWS, BLOCK, ERT)
    assert not cached and (tmp_path / "reference.json.calibration.json").is_file()
    again, cached = cached_calibration(str(reference), statistics, WINDOWS, BLOCK, ERT)
    assert cached and again.thresholds == first.thresholds
    reference.write_text('{"features": {"x": {"values": [1, 2, 4]}}}')
    _, cached = cached_calibration(str(reference), statistics, WINDOWS, BLOCK, ERT)
    assert not cached
    _, cached = cached_calibration(str(reference), statistics, WINDOWS, BLOCK, 2 * ERT)
    assert not cached  # another ERT: other thresholds
