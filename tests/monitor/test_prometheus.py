"""End to end with a real Prometheus server on loopback: it scrapes the daemon while recorded
traffic is replayed, and what it stored is read back through its HTTP API."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from omnitune.monitor import traffic
from tests.conftest import OMNITUNE, REPO, offline_env
from tests.monitor.conftest import Daemon, Prometheus, prometheus_binary, start_prometheus

pytestmark = pytest.mark.prometheus

SHIPPED = REPO / "configs" / "prometheus"


@pytest.fixture
def prometheus(daemon: Daemon, tmp_path: Path) -> Iterator[Prometheus]:
    """Debian's Prometheus on 127.0.0.1, scraping the daemon every second with the shipped
    alert rules loaded."""
    server = start_prometheus(daemon.url, tmp_path)
    yield server
    server.stop()


def test_prometheus_sees_the_shifted_feature_latency_and_safety_counts(
    daemon: Daemon, prometheus: Prometheus, tmp_path: Path
):
    events, planted = traffic.make_events(1200, shift_from=600, pii_every=40, jailbreak_every=45)
    recorded = traffic.write_events(tmp_path / "recorded.jsonl", events)
    replay = subprocess.run(
        [str(OMNITUNE), "monitor", "replay", str(recorded), "--url", daemon.url, "--rate", "400"],
        capture_output=True,
        text=True,
        env=offline_env(),
        timeout=120,
    )
    assert replay.returncode == 0 and "sent 1200 of 1200" in replay.stdout, replay.stderr
    daemon.evaluated()

    # The daemon is a target Prometheus scrapes successfully.
    up = prometheus.wait_for('up{job="omnitune-monitor"} == 1')
    assert up[0]["value"][1] == "1"

    # Drift: the shifted feature crossed its threshold; the unshifted ones stayed below theirs.
    crossed = prometheus.wait_for(
        'omnitune_drift_detected{model="assistant",feature="upper_ratio"} == 1'
    )
    assert crossed
    above = prometheus.query(
        'omnitune_drift_score{test="psi"} >= on(model, feature, test) omnitune_drift_threshold'
    )
    assert [r["metric"]["feature"] for r in above] == ["upper_ratio"]
    for feature in ("chars", "words", "mean_word_length", "digit_ratio", "non_ascii_ratio"):
        result = prometheus.query(f'omnitune_drift_detected{{feature="{feature}"}}')
        assert result and result[0]["value"][1] == "0", feature

    # Latency: histogram quantiles computed by Prometheus from the exported buckets.
    p95 = prometheus.query(
        "histogram_quantile(0.95, sum by (le) (omnitune_inference_latency_seconds_bucket"
        '{model="assistant"}))'
    )
    assert 0.05 < float(p95[0]["value"][1]) < 1.0
    count = prometheus.query("sum(omnitune_inference_latency_seconds_count)")
    assert float(count[0]["value"][1]) == 1200

    # Safety: the counters match what was planted, per category and side.
    flags = prometheus.wait_for(
        'sum by (category, side) (omnitune_safety_flags_total{model="assistant"})'
    )
    seen = {(r["metric"]["category"], r["metric"]["side"]): float(r["value"][1]) for r in flags}
    expected = {(c, "output"): float(n) for c, n in planted.pii.items()}
    expected[("prompt_injection", "input")] = float(planted.jailbreak)
    assert seen == expected
    assert sum(planted.pii.values()) == 30 and planted.jailbreak > 20

    # The shipped alert rules loaded, and the drift rule has seen its condition.
    rules = prometheus.get("/api/v1/rules")["data"]["groups"][0]["rules"]
    assert {r["name"] for r in rules} >= {"OmnituneInputDrift", "OmnituneDaemonDown"}
    assert all(r["health"] == "ok" for r in rules), rules
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        alerts = prometheus.get("/api/v1/alerts")["data"]["alerts"]
        if any(a["labels"]["alertname"] == "OmnituneInputDrift" for a in alerts):
            break
        time.sleep(0.5)
    else:
        raise AssertionError("the drift alert never became pending")


def test_shipped_prometheus_files_pass_promtool():
    promtool = prometheus_binary("promtool")
    for args in (
        ["check", "config", str(SHIPPED / "prometheus.yml")],
        ["check", "rules", str(SHIPPED / "omnitune-rules.yml")],
    ):
        result = subprocess.run([promtool, *args], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout
