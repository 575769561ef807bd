"""A live daemon with known traffic for the dashboard tests (and the monitor's fixtures)."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from omnitune.monitor import traffic
from tests.conftest import OMNITUNE, REPO, offline_env
from tests.monitor.conftest import (  # noqa: F401 - fixtures used here
    Daemon,
    monitor_config,
    reference,
    start_daemon,
)

APP = str(REPO / "dashboard" / "app.py")


@pytest.fixture
def app(monkeypatch, tmp_path):
    """`app(daemon_url, prometheus=url)`: the dashboard as `omnitune dashboard` would start it
    (a None daemon_url with a Prometheus URL is `--prometheus` alone)."""

    def open_app(url: str | None, prometheus: str | None = None) -> Any:
        for name, value in (("OMNITUNE_DAEMON_URL", url), ("OMNITUNE_PROMETHEUS_URL", prometheus)):
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)
        monkeypatch.setenv("OMNITUNE_RUNS_DIR", str(tmp_path / "runs"))
        from streamlit.testing.v1 import AppTest

        return AppTest.from_file(APP, default_timeout=60).run()

    return open_app


@pytest.fixture
def live_daemon(monitor_config) -> Iterator[tuple[Daemon, traffic.Planted]]:  # noqa: F811
    daemon = start_daemon(monitor_config())
    events, planted = traffic.make_events(600, shift_from=300, pii_every=40, jailbreak_every=45)
    assert daemon.post(events)[0] == 200
    daemon.evaluated()
    yield daemon, planted
    daemon.stop()


def start_dashboard(*arguments: str, port: int, timeout: float = 60) -> subprocess.Popen:
    """`omnitune dashboard ARGUMENTS --port PORT`, returned once Streamlit answers its health
    check (the caller terminates it)."""
    process = subprocess.Popen(
        [str(OMNITUNE), "dashboard", *arguments, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=offline_env(),
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2)
            return process
        except OSError:
            time.sleep(0.3)
    process.terminate()
    raise AssertionError("the dashboard never answered its health check")


def write_registry(root, model: str = "assistant"):
    """A registry as `omnitune loop promote` writes it: v1 serving (the first version, no
    gate) and v2 a 20% canary that a gate let in; made by the loop's own code, not by hand.
    Returns the root."""
    import json
    from pathlib import Path

    from omnitune.trainers.closed_loop.bootstrap import Difference
    from omnitune.trainers.closed_loop.gate import GateReport, SliceReport, write_report
    from omnitune.trainers.closed_loop.registry import Canary, Registry, promote
    from omnitune.trainers.closed_loop.settings import GateSection

    root = Path(root)
    runs = {}
    for name in ("champion", "challenger"):
        run = root.parent / "runs" / name
        (run / "adapter").mkdir(parents=True)
        (run / "adapter" / "adapter_config.json").write_text("{}")
        (run / "reference.json").write_text(json.dumps({"modality": "text", "features": {}}))
        runs[name] = run
    slices = {
        "captures": SliceReport(
            "labels/sft/test.jsonl",
            32,
            "exact_match",
            True,
            {
                "exact_match": Difference(0.09, 0.31, 0.22, 0.09, 0.34, 32),
                "loss": Difference(5.93, 5.44, 0.49, 0.45, 0.53, 32),
            },
        ),
        "original": SliceReport(
            "data/test.jsonl",
            48,
            "exact_match",
            True,
            {
                "exact_match": Difference(0.48, 0.50, 0.02, -0.04, 0.08, 48),
                "loss": Difference(5.42, 5.37, 0.05, 0.03, 0.06, 48),
            },
        ),
    }
    report = GateReport(
        str(runs["champion"].resolve()),
        str(runs["challenger"].resolve()),
        GateSection(),
        slices,
        "promote",
        ["captures: exact_match gain +0.2200 (lower end +0.0900 >= 0)"],
    )
    write_report(report, runs["challenger"] / "gate")
    registry = Registry(root, model)
    promote(registry, runs["champion"])
    promote(registry, runs["challenger"], canary=Canary(0.2, "http://127.0.0.1:8001"))
    return root
