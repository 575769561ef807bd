"""What logging one inference call costs the serving thread: omnitune's `Client.log` (queue,
background batches) against the plain recipe of POSTing each event as it happens (keep-alive
http.client, one request per event).

A real daemon runs pinned to CPU 0; the caller runs on CPU 1 and times every call with
perf_counter_ns, including the time the client's sender thread takes from it through the GIL.

    python -m bench.monitor_client --side omnitune|reference --calls 20000
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

from bench.monitor_ingest import FEATURES, start_server


def event_fields(index: int) -> dict:
    return {
        "adapter": "v1",
        "latency_s": 0.12,
        "features": {name: 0.1 * (index % 7) for name in FEATURES},
        "output": "turn on the kitchen lights",
    }


def omnitune_side(address: str, calls: int) -> tuple[list[int], dict]:
    from omnitune.monitor import Client

    client = Client(f"http://{address}", batch_size=500, flush_interval_s=0.1)
    timings = []
    for index in range(calls):
        fields = event_fields(index)
        start = time.perf_counter_ns()
        client.log("asr", **fields)
        timings.append(time.perf_counter_ns() - start)
    client.flush(timeout_s=60)
    client.close()
    return timings, client.stats()


def reference_side(address: str, calls: int) -> tuple[list[int], dict]:
    host, port = address.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    timings, sent = [], 0
    for index in range(calls):
        event = {"model": "asr", **event_fields(index), "request_id": f"ref-{index}"}
        start = time.perf_counter_ns()
        connection.request("POST", "/v1/events", json.dumps(event))
        response = connection.getresponse()
        response.read()
        timings.append(time.perf_counter_ns() - start)
        sent += response.status == 200
    return timings, {"sent": sent, "dropped": calls - sent}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--side", choices=["omnitune", "reference"], required=True)
    parser.add_argument("--calls", type=int, default=20000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="omnitune-bench-") as folder:
        process, address = start_server("omnitune", Path(folder))
        try:
            if os.cpu_count() and os.cpu_count() > 1:
                os.sched_setaffinity(0, {1})
            side = omnitune_side if args.side == "omnitune" else reference_side
            timings, stats = side(address, args.calls)
        finally:
            process.terminate()
            process.wait(timeout=60)
    timings.sort()
    print(
        json.dumps(
            {
                "median_us_per_event": statistics.median(timings) / 1000,
                "p99_us_per_event": timings[int(len(timings) * 0.99)] / 1000,
                "mean_us_per_event": statistics.fmean(timings) / 1000,
                "delivered": stats["sent"],
                "dropped": stats["dropped"],
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


if __name__ == "__main__":
    main()
