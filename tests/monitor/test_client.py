"""The client as a serving process uses it: never blocks, never raises, keeps what it can."""

from __future__ import annotations

import socket
import time

import pytest

from omnitune.monitor import Client
from tests.monitor.conftest import start_daemon


def test_logs_timed_calls_in_batches(daemon):
    client = Client(daemon.url, batch_size=100, flush_interval_s=0.05)
    for i in range(250):
        client.log(
            "assistant", adapter="v2", input=f"question {i}", output="answer", latency_s=0.01
        )
    with client.timed("assistant", adapter="v2", input="slow one") as call:
        time.sleep(0.12)
        call.output = "done"

    @client.timed("assistant", adapter="v2", input="decorated")
    def generate() -> str:
        return "decorated answer"

    assert generate() == "decorated answer"
    with pytest.raises(RuntimeError), client.timed("assistant", adapter="v2", input="boom"):
        raise RuntimeError("the model failed")  # the caller's error propagates...
    assert client.flush(timeout_s=20)
    client.close()
    assert client.stats() == {"queued": 0, "sent": 253, "dropped": 0, "failed_batches": 0}

    code, page = daemon.request("GET", "/v1/events?limit=5000")
    assert code == 200
    by_input = {e["input"]: e for e in page["events"]}
    assert len(by_input) == 253
    assert by_input["slow one"]["output"] == "done"
    assert 0.12 <= by_input["slow one"]["latency_s"] < 1.0
    assert by_input["decorated"]["output"] == "decorated answer"
    assert by_input["boom"]["error"] is True  # ...and the failure is recorded
    metrics = daemon.metrics()
    assert 'omnitune_event_errors_total{adapter="v2",model="assistant"} 1.0' in metrics


def test_never_raises_or_blocks_when_the_daemon_is_down():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = Client(
        f"http://127.0.0.1:{port}",
        max_queue=100,
        batch_size=50,
        flush_interval_s=0.05,
        retries=1,
        backoff_s=0.01,
    )
    started = time.perf_counter()
    for _ in range(1000):
        client.log("assistant", input="hello", latency_s=0.01)
    client.log("assistant", features={"x": object()})  # unserialisable: still no exception
    assert time.perf_counter() - started < 0.5
    client.close(timeout_s=5)
    stats = client.stats()
    assert stats["sent"] == 0
    assert stats["dropped"] >= 900  # the queue holds 100; the rest were dropped and counted
    assert stats["failed_batches"] >= 1


def test_queued_events_reach_a_daemon_that_starts_late(monitor_config):
    config = monitor_config()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = Client(f"http://127.0.0.1:{port}", retries=30, backoff_s=0.1, flush_interval_s=0.05)
    for i in range(20):
        client.log("assistant", input=f"early {i}", request_id=f"early-{i}")
    daemon = start_daemon(config, port=port)
    try:
        assert client.flush(timeout_s=30)
        client.close()
        assert client.stats()["sent"] == 20
        assert daemon.status()["store"]["events"] == 20
    finally:
        daemon.stop()
