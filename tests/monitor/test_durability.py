"""Every event the daemon acknowledged survives SIGKILL; counters and windows come back."""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time

from omnitune.monitor import traffic
from tests.monitor.conftest import start_daemon


def send_until_refused(url: str, sender: int, acked: list[str], stop: threading.Event) -> None:
    """POST batches of 50 events until the daemon stops answering; record acknowledged ids."""
    host, port = url.removeprefix("http://").split(":")
    batch_number = 0
    while not stop.is_set() and batch_number < 2000:
        events, _ = traffic.make_events(50, seed=1000 * sender + batch_number)
        for i, event in enumerate(events):
            event["request_id"] = f"s{sender}-b{batch_number}-{i}"
        try:
            connection = http.client.HTTPConnection(host, int(port), timeout=10)
            connection.request("POST", "/v1/events", json.dumps(events))
            response = connection.getresponse()
            response.read()
            connection.close()
        except (OSError, http.client.HTTPException):
            return
        if response.status == 200:
            acked.extend(event["request_id"] for event in events)
        batch_number += 1


def test_sigkill_while_clients_send_loses_no_acknowledged_event(monitor_config):
    config = monitor_config()
    daemon = start_daemon(config)
    acked: list[str] = []
    stop = threading.Event()
    senders = [
        threading.Thread(target=send_until_refused, args=(daemon.url, n, acked, stop))
        for n in range(3)
    ]
    for sender in senders:
        sender.start()
    deadline = time.monotonic() + 30
    while len(acked) < 3000 and time.monotonic() < deadline:
        time.sleep(0.05)
    daemon.stop(signal.SIGKILL)  # mid-stream: requests are in flight
    stop.set()
    for sender in senders:
        sender.join(timeout=30)
    assert len(acked) >= 3000, "the senders never got going"

    restarted = start_daemon(config)
    try:
        stored = set(restarted.stored_request_ids())
        missing = set(acked) - stored
        assert not missing, f"{len(missing)} acknowledged events lost, e.g. {sorted(missing)[:3]}"
        status = restarted.status()
        # Counters were committed with the events: the restarted daemon counts all of them.
        assert status["models"]["assistant"]["events_total"] == len(stored)
        assert status["models"]["assistant"]["window"] == 400  # rebuilt from the store
        # Retrying an acknowledged batch stores nothing twice.
        events, _ = traffic.make_events(50, seed=0)
        for i, event in enumerate(events):
            event["request_id"] = f"s0-b0-{i}"
        code, body = restarted.post(events)
        assert code == 200 and (body["accepted"], body["duplicates"]) == (0, 50)
    finally:
        restarted.stop()
