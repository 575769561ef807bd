"""End to end with a real Prometheus server on loopback: it scrapes the daemon while recorded
traffic is replayed, and what it stored is read back through its HTTP API."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from omnitune.monitor import traffic
from tests.conftest import OMNITUNE, REPO, offline_env
from tests.monitor.conftest import Daemon

pytestmark = pytest.mark.prometheus

SHIPPED = REPO / "configs" / "prometheus"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _prometheus_binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: `make test` installs Debian's prometheus package")
    return found


class Prometheus:
    def __init__(self, url: str, process: subprocess.Popen[bytes]) -> None:
        self.url, self.process = url, process

    def query(self, expr: str) -> list[dict]:
        query = urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{query}", timeout=10) as answer:
            body = json.loads(answer.read())
        assert body["status"] == "success", body
        return body["data"]["result"]

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=10) as answer:
            return json.loads(answer.read())

    def wait_for(self, expr: str, timeout: float = 60.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self.query(expr)
            if result:
                return result
            time.sleep(0.5)
        raise AssertionError(f"Prometheus never returned a result for {expr}")


@pytest.fixture
def prometheus(daemon: Daemon, tmp_path: Path) -> Iterator[Prometheus]:
    """Debian's Prometheus on 127.0.0.1, scraping the daemon every second with the shipped
    alert rules loaded."""
    binary = _prometheus_binary("prometheus")
    shutil.copy(SHIPPED / "omnitune-rules.yml", tmp_path / "omnitune-rules.yml")
    shipped = yaml.safe_load((SHIPPED / "prometheus.yml").read_text())
    shipped["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    shipped["scrape_configs"][0]["static_configs"] = [
        {"targets": [daemon.url.removeprefix("http://")]}
    ]
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(shipped))
    port = _free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = Prometheus(f"http://127.0.0.1:{port}", process)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if server.get("/api/v1/status/buildinfo")["status"] == "success":
                    break
            except OSError:
                time.sleep(0.2)
        else:
            pytest.fail("Prometheus did not start: " + (tmp_path / "prometheus.log").read_text())
        yield server
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


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
    promtool = _prometheus_binary("promtool")
    for args in (
        ["check", "config", str(SHIPPED / "prometheus.yml")],
        ["check", "rules", str(SHIPPED / "omnitune-rules.yml")],
    ):
        result = subprocess.run([promtool, *args], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout
