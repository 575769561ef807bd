"""A live daemon with known traffic for the dashboard tests (and the monitor's fixtures)."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from collections.abc import Iterator

import pytest

from omnitune.monitor import traffic
from tests.conftest import OMNITUNE, offline_env
from tests.monitor.conftest import (  # noqa: F401 - fixtures used here
    Daemon,
    monitor_config,
    reference,
    start_daemon,
)


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
