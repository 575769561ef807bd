"""The daemon killed with SIGKILL again and again under load keeps every acknowledged event
exactly once (issue 18, daemon crash).

Three client threads send about 1,000 events/s in batches of 10 over loopback, each batch with
its own request ids. A batch that gets no answer (the daemon died mid-request) is sent again
once the daemon is back, as `omnitune.monitor.client` does: the ids make the retry idempotent.
After the last restart the store is read back through the API.
"""

from __future__ import annotations

import http.client
import json
import random
import signal
import threading
import time
from collections import Counter

import pytest

from omnitune.monitor import traffic
from tests import reliability
from tests.monitor.conftest import free_port, start_daemon

pytestmark = [pytest.mark.slow, pytest.mark.reliability]

KILLS = 12
SENDERS = 3
BATCH = 10
RATE = 1_000  # events/s, all senders together


class Sender(threading.Thread):
    """Sends numbered batches at its share of RATE; retries a batch until it is acknowledged."""

    def __init__(self, number: int, port: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.number, self.port, self.stop = number, port, stop
        self.sent: Counter[str] = Counter()  # request id -> times sent
        self.acked: set[str] = set()
        self.failed_attempts = 0

    def run(self) -> None:
        interval = BATCH * SENDERS / RATE
        batch_number = 0
        connection = None
        while not self.stop.is_set():
            events, _ = traffic.make_events(BATCH, seed=10_000 * self.number + batch_number)
            for index, event in enumerate(events):
                event["request_id"] = f"c{self.number}-b{batch_number}-{index}"
            body = json.dumps(events)
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    if connection is None:
                        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                    self.sent.update(event["request_id"] for event in events)
                    connection.request("POST", "/v1/events", body)
                    response = connection.getresponse()
                    response.read()
                    if response.status == 200:
                        self.acked.update(event["request_id"] for event in events)
                        break
                    raise AssertionError(f"daemon answered {response.status} to a valid batch")
                except (OSError, http.client.HTTPException):
                    self.failed_attempts += 1
                    if connection is not None:
                        connection.close()
                    connection = None
                    self.stop.wait(0.05)  # the daemon is down: try again shortly
                finally:
                    self.stop.wait(max(0.0, interval - (time.monotonic() - started)))
            batch_number += 1


def test_repeated_sigkill_under_load_keeps_every_acknowledged_event_once(monitor_config):
    config = monitor_config()
    port = free_port()
    stop = threading.Event()
    senders = [Sender(number, port, stop) for number in range(SENDERS)]
    chooser = random.Random(18)
    daemon = start_daemon(config, port=port)
    started = time.monotonic()
    for sender in senders:
        sender.start()
    up_seconds = []
    try:
        for _ in range(KILLS):
            up = chooser.uniform(0.5, 1.5)
            time.sleep(up)
            up_seconds.append(up)
            daemon.stop(signal.SIGKILL)
            daemon = start_daemon(config, port=port)
        time.sleep(1.0)  # the retries of the last kill land
    finally:
        stop.set()
        for sender in senders:
            sender.join(timeout=30)
    elapsed = time.monotonic() - started
    try:
        rows = daemon.stored_request_ids()
        status = daemon.status()
    finally:
        daemon.stop()

    acked = set().union(*(s.acked for s in senders))
    sent = Counter()
    for sender in senders:
        sent.update(sender.sent)
    stored = Counter(rows)
    lost = acked - set(stored)
    duplicated = sum(count - 1 for count in stored.values() if count > 1)
    assert len(acked) >= KILLS * 200, "the senders never got going"
    assert not lost, f"{len(lost)} acknowledged events lost, e.g. {sorted(lost)[:3]}"
    assert duplicated == 0
    assert set(stored) <= set(sent), "the store holds events nobody sent"
    assert status["models"]["assistant"]["events_total"] == len(rows)
    resent = sum(count - 1 for count in sent.values())
    reliability.record(
        "daemon-sigkill",
        "Daemon killed with SIGKILL under load",
        f"{KILLS} SIGKILLs, each after 0.5-1.5 s of serving, while {SENDERS} client threads "
        f"sent about {RATE:,} events/s in batches of {BATCH} over loopback "
        f"({elapsed:.0f} s in all, restarts included). A batch without an answer was sent "
        "again after the restart with the same request ids. The store was then read back "
        "through `GET /v1/events`.",
        [
            {
                "events sent (distinct)": len(sent),
                "sends incl. retries": sum(sent.values()),
                "acknowledged": len(acked),
                "stored": len(rows),
                "lost (acknowledged, not stored)": len(lost),
                "duplicated in the store": duplicated,
                "committed but unacknowledged": len(set(stored) - acked),
                "retried sends": resent,
                "acknowledged events/s while up": round(len(acked) / sum(up_seconds)),
            }
        ],
    )
