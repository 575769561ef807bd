"""Calibrated drift alarms in the running daemon: what a user sees through the CLI, the HTTP API
and /metrics (the statistics themselves are tested in test_sequential.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from omnitune.monitor import traffic
from tests.conftest import run_cli
from tests.monitor.conftest import start_daemon


def post_in_batches(daemon, events, size=50):
    for start in range(0, len(events), size):
        assert daemon.post(events[start : start + size])[0] == 200


def test_a_shift_raises_a_calibrated_alarm_with_its_delay_kept_across_a_restart(monitor_config):
    config = monitor_config()
    daemon = start_daemon(config)
    try:
        quiet, _ = traffic.make_events(300, seed=3)
        post_in_batches(daemon, quiet)
        status = daemon.evaluated()["models"]["assistant"]
        assert status["drift_method"] == "sequential" and not status["drifting"]
        calibration = status["calibration"]
        assert calibration["expected_run_events"] == 10_000 and not calibration["cached"]
        assert 0.75 * 10_000 <= calibration["simulated_run_events"] <= 1.25 * 10_000
        assert status["drift"]["upper_ratio"]["decision"]["test"] == "cvm"

        shouting, _ = traffic.make_events(200, seed=4, shift_from=0, start_ts=1.8e9 + 3)
        post_in_batches(daemon, shouting, size=20)
        status = daemon.evaluated()
        decision = status["models"]["assistant"]["drift"]["upper_ratio"]["decision"]
        assert decision["drifted"] and not decision["warning"]
        # The change was 300 events in; 20-event batches arrive as the detector's blocks fill.
        assert 10 <= decision["delay_events"] <= 60
        assert 0.0 <= decision["delay_s"] <= 0.6  # events are 10 ms apart
        (alert,) = [a for a in status["alerts"] if a["subject"] == "upper_ratio"]
        assert "after the estimated change" in alert["message"]
        metrics = daemon.metrics()
        assert 'omnitune_drift_expected_run_events{model="assistant"} 10000.0' in metrics
        delay = re.search(
            r'omnitune_drift_delay_events\{feature="upper_ratio",model="assistant"\} (\S+)',
            metrics,
        )
        assert delay and float(delay.group(1)) == decision["delay_events"]
        assert 'omnitune_drift_delay_events{feature="chars"' not in metrics  # no alarm there
    finally:
        daemon.stop()

    again = start_daemon(config)  # thresholds from the cache, detector state from the store
    try:
        model = again.evaluated()["models"]["assistant"]
        assert model["calibration"]["cached"]
        assert model["drift"]["upper_ratio"]["decision"]["drifted"]
    finally:
        again.stop()


def reference_events(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    rows = [{"model": "m", "features": {"x": float(v)}} for v in rng.normal(0, 1, 2000)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_an_immaterial_shift_is_a_warning_where_the_model_asks_for_an_effect_size(
    monitor_config, tmp_path
):
    reference = str(reference_events(tmp_path / "reference.jsonl"))
    config = monitor_config(
        models={
            "gated": {"modality": "text", "reference": reference},
            "strict": {"modality": "text", "reference": reference, "material": "none"},
        },
        # A one-sigma shift is calibrated-significant at once, but below a 2-sigma gate.
        drift={"interval_s": 0.2, "wasserstein_threshold": 2.0, "expected_run_events": 5000},
    )
    daemon = start_daemon(config)
    try:
        rng = np.random.default_rng(1)
        values = np.concatenate([rng.normal(0, 1, 250), rng.normal(1, 1, 250)])
        for model in ("gated", "strict"):
            events = [
                {"model": model, "features": {"x": float(v)}, "request_id": f"{model}{i}"}
                for i, v in enumerate(values)
            ]
            post_in_batches(daemon, events)
        status = daemon.evaluated()
        gated = status["models"]["gated"]["drift"]["x"]["decision"]
        strict = status["models"]["strict"]["drift"]["x"]["decision"]
        assert gated["warning"] and not gated["drifted"] and gated["delay_events"] > 0
        assert strict["drifted"] and not strict["warning"]
        assert [a["model"] for a in status["alerts"] if a["kind"] == "drift"] == ["strict"]
        assert status["models"]["gated"]["calibration"]["material"] == "wasserstein"
        assert status["models"]["strict"]["calibration"]["material"] == "none"
        metrics = daemon.metrics()
        assert 'omnitune_drift_warning{feature="x",model="gated"} 1.0' in metrics
        assert 'omnitune_drift_detected{feature="x",model="gated"} 0.0' in metrics
    finally:
        daemon.stop()


def test_repeated_inputs_are_stored_but_tested_once(daemon):
    events, _ = traffic.make_events(1, seed=5)
    repeats = [{**events[0], "request_id": f"retry-{i}"} for i in range(40)]
    assert daemon.post(repeats)[0] == 200
    model = daemon.evaluated()["models"]["assistant"]
    assert model["events_total"] == 40
    assert model["calibration"]["tested_events"] == 1
    assert model["calibration"]["deduplicated_events"] == 39


def test_calibrate_ahead_of_serving_then_serve_from_the_cache(monitor_config, reference):
    config = monitor_config(drift={"expected_run_events": 4000})
    first = run_cli("monitor", "calibrate", "--config", str(config))
    assert first.returncode == 0, first.stderr
    assert "ERT 4,000 events, windows [50, 200], blocks of 10" in first.stdout
    assert re.search(r"assistant: 6 features, calibrated in [\d.]+ s", first.stdout)
    assert f"cache {reference}.calibration.json" in first.stdout
    again = run_cli("monitor", "calibrate", "--config", str(config))
    assert "from the cache" in again.stdout
    forced = run_cli("monitor", "calibrate", "--config", str(config), "--force")
    assert "assistant: 6 features, calibrated" in forced.stdout

    daemon = start_daemon(config)
    try:
        assert daemon.status()["models"]["assistant"]["calibration"]["cached"]
    finally:
        daemon.stop()

    other = run_cli("monitor", "calibrate", "--config", str(config), "drift.windows=[55]")
    assert other.returncode == 2
    assert "drift.windows: 55 is not a multiple of drift.block_events (10)" in other.stderr
    both = run_cli("monitor", "calibrate", "--config", str(config), "drift.false_alarms_per_day=2")
    assert both.returncode == 2 and "drift.false_alarms_per_day" in both.stderr
