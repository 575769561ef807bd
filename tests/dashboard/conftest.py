"""A live daemon with known traffic for the dashboard tests (and the monitor's fixtures)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from omnitune.monitor import traffic
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
