"""Monitor ingest throughput and memory: the omnitune daemon (every detector and scanner on)
against the bare recipe people write first (Starlette + prometheus_client + SQLite, no drift,
no safety, no capture).

Each side's server runs pinned to CPU 0; the load generator in this process runs on CPU 1 and
keeps `--clients` keep-alive connections (2 by default) busy with 1,000-event batches (scalar
speech features, a transcript to scan, a latency). Figures: events/s from the first request
to the last acknowledgement, and the server's resident memory after 10% and after all of the
events, and after each count in `--rss-at`, so that a window or cache that grows with traffic
shows.

    python -m bench.monitor_ingest --side omnitune|reference --events 200000 [--clients 4]
    python -m bench.monitor_ingest --side omnitune --events 1000000 --rss-at 10000,100000,1000000
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

FEATURES = ("duration_s", "rms_dbfs", "silence_ratio", "spectral_centroid_hz", "snr_db")
BATCH = 1000
TRANSCRIPTS = (
    "turn on the kitchen lights",
    "what is the weather like in paris tomorrow",
    "set a timer for ten minutes",
    "play the next song please",
)


def batch_body(rng: random.Random, start: int) -> bytes:
    events = [
        {
            "model": "asr",
            "adapter": "v1",
            "latency_s": round(rng.lognormvariate(-2.0, 0.4), 5),
            "features": {name: round(rng.gauss(0, 1), 5) for name in FEATURES},
            "output": TRANSCRIPTS[(start + i) % len(TRANSCRIPTS)],
            "request_id": f"r{start + i}",
        }
        for i in range(BATCH)
    ]
    return json.dumps(events).encode()


def write_config(folder: Path) -> Path:
    import yaml

    from omnitune.modalities.profile import build_profile

    rng = random.Random(0)
    rows = ({name: rng.gauss(0, 1) for name in FEATURES} for _ in range(2000))
    reference = folder / "reference.json"
    reference.write_text(json.dumps(build_profile("speech", rows, "bench")))
    config = {
        "server": {"host": "127.0.0.1", "port": 0},
        "store": {"path": str(folder / "events.sqlite"), "max_events": 5_000_000},
        "models": {"asr": {"modality": "speech", "reference": str(reference)}},
        "window": {"size": 1000, "min_events": 200},
        "capture": {"dir": str(folder / "capture")},
    }
    path = folder / "monitor.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start_server(side: str, folder: Path) -> tuple[subprocess.Popen[str], str]:
    pin = ["taskset", "-c", "0"] if os.cpu_count() and os.cpu_count() > 1 else []
    if side == "omnitune":
        command = [sys.executable, "-m", "omnitune", "monitor", "serve"]
        command += ["--config", str(write_config(folder))]
    else:
        command = [sys.executable, "-m", "bench.monitor_ingest", "--serve-bare", str(folder)]
    process = subprocess.Popen(
        [*pin, *command], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert process.stdout is not None
    for line in process.stdout:
        found = re.search(r"listening on http://([\d.]+:\d+)", line)
        if found:
            threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()
            return process, found.group(1)
    raise RuntimeError(f"{side} server did not start (exit {process.wait()})")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drive(
    address: str, events: int, pid: int, clients: int = 2, rss_at: tuple[int, ...] = ()
) -> dict[str, Any]:
    """Send `events` in batches over `clients` connections; return throughput and server RSS
    (after 10%, after each count in `rss_at`, at the end)."""
    if os.cpu_count() and os.cpu_count() > 1:
        os.sched_setaffinity(0, {1})
    bodies: queue.Queue[bytes | None] = queue.Queue(maxsize=max(16, 2 * clients))
    batches = events // BATCH

    def produce() -> None:
        rng = random.Random(1)
        for index in range(batches):
            bodies.put(batch_body(rng, index * BATCH))
        for _ in range(clients):
            bodies.put(None)

    acknowledged = [0]
    checkpoints: dict[str, float] = {}
    lock = threading.Lock()
    host, port = address.split(":")

    def send() -> None:
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        while (body := bodies.get()) is not None:
            connection.request("POST", "/v1/events", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"server answered {response.status}")
            with lock:
                acknowledged[0] += BATCH
                if "rss_mb_at_10pct" not in checkpoints and acknowledged[0] >= events // 10:
                    checkpoints["rss_mb_at_10pct"] = rss_mb(pid)
                for count in rss_at:
                    key = f"rss_mb_at_{count}"
                    if key not in checkpoints and acknowledged[0] >= count:
                        checkpoints[key] = rss_mb(pid)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    while bodies.qsize() < 8 and producer.is_alive():
        time.sleep(0.01)  # a head start, so the server never waits on JSON encoding
    senders = [threading.Thread(target=send) for _ in range(clients)]
    cpu_start = cpu_seconds(pid)
    start = time.perf_counter()
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    elapsed = time.perf_counter() - start
    return {
        "events": acknowledged[0],
        # Near 1.0: the server's core was saturated, so events/s is the server's limit.
        "server_cpu_share": (cpu_seconds(pid) - cpu_start) / elapsed,
        "events_per_second": acknowledged[0] / elapsed,
        "rss_mb_at_10pct": checkpoints.get("rss_mb_at_10pct", float("nan")),
        "rss_mb_at_end": rss_mb(pid),
        **{k: v for k, v in checkpoints.items() if k != "rss_mb_at_10pct"},
        "peak_rss_mb": peak_rss_mb(pid),
        "clients": clients,
    }


def serve_bare(folder: Path) -> None:
    """The reference: what a team writes first. Starlette, a pydantic-free json.loads, one
    SQLite transaction per request, prometheus_client counters and a latency histogram."""
    import socket
    import sqlite3

    import uvicorn
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    registry = CollectorRegistry()
    events_total = Counter("events", "events", ["model", "adapter"], registry=registry)
    latency = Histogram("latency_seconds", "latency", ["model", "adapter"], registry=registry)
    db = sqlite3.connect(folder / "bare.sqlite", check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, request_id TEXT UNIQUE, body TEXT)")
    lock = threading.Lock()

    def store(events: list[dict[str, Any]]) -> None:
        with lock:
            db.execute("BEGIN")
            db.executemany(
                "INSERT OR IGNORE INTO events (request_id, body) VALUES (?, ?)",
                [(e.get("request_id"), json.dumps(e)) for e in events],
            )
            db.execute("COMMIT")
        for event in events:
            labels = (event["model"], event.get("adapter", ""))
            events_total.labels(*labels).inc()
            if event.get("latency_s") is not None:
                latency.labels(*labels).observe(event["latency_s"])

    async def post(request: Request) -> Response:
        events = json.loads(await request.body())
        await run_in_threadpool(store, events if isinstance(events, list) else [events])
        return JSONResponse({"accepted": len(events)})

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type="text/plain")

    app = Starlette(
        routes=[Route("/v1/events", post, methods=["POST"]), Route("/metrics", metrics)]
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    print(f"listening on http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[sock])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--side", choices=["omnitune", "reference"])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--clients", type=int, default=2, help="concurrent connections")
    parser.add_argument(
        "--rss-at", default="", help="comma-separated event counts to read the server's RSS at"
    )
    parser.add_argument("--serve-bare", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        serve_bare(Path(args.serve_bare))
        return
    with tempfile.TemporaryDirectory(prefix="omnitune-bench-") as folder:
        process, address = start_server(args.side, Path(folder))
        try:
            rss_at = tuple(int(n) for n in args.rss_at.split(",") if n)
            figures = drive(address, args.events, process.pid, args.clients, rss_at)
        finally:
            process.terminate()
            process.wait(timeout=60)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
