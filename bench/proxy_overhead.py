"""What the recording proxy costs a client: latency added per call and throughput under load.

One side per process. Both start a stub OpenAI-compatible upstream that answers at once (its
own process: a chat completion as JSON, or three server-sent chunks when `stream` is set).
`--side direct` calls the stub; `--side proxy` also starts `omnitune monitor serve` and
`omnitune monitor proxy` (recording on: one event per call reaches the daemon) and calls the
stub through the proxy. Each side measures, with the same client code:

- `p50_ms`, `p99_ms`: one keep-alive client, non-streamed calls one after another;
- `stream_p50_ms`, `stream_p99_ms`: the same, streamed, to the last chunk;
- `c16_p50_ms`, `c16_p99_ms`: per-call latency with 16 concurrent clients;
- `rps_1`, `rps_16`, `rps_64`: calls per second with 1, 16 and 64 concurrent clients.

    python -m bench.proxy_overhead --side proxy --calls 1000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import REPO, peak_rss_mb

OMNITUNE = str(Path(sys.executable).parent / "omnitune")
ANSWER = {
    "id": "stub",
    "object": "chat.completion",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "4 2 7"}}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
}


def stub_app() -> Any:
    from starlette.applications import Starlette
    from starlette.responses import Response, StreamingResponse
    from starlette.routing import Route

    body = json.dumps(ANSWER).encode()
    chunks = [
        f"data: {json.dumps({'choices': [{'index': 0, 'delta': {'content': p}}]})}\n\n".encode()
        for p in ("4", " 2", " 7")
    ] + [b"data: [DONE]\n\n"]

    async def chat(request):
        asked = await request.body()
        if b'"stream": true' in asked or b'"stream":true' in asked:

            async def stream():
                for chunk in chunks:
                    yield chunk

            return StreamingResponse(stream(), media_type="text/event-stream")
        return Response(body, media_type="application/json")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(command: list[str], pattern: str | None = None) -> tuple[subprocess.Popen, str]:
    """Start a process; with `pattern`, wait for its "listening on URL" line."""
    process = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    if pattern is None:
        return process, ""
    assert process.stdout is not None
    for line in process.stdout:
        match = re.search(pattern, line)
        if match:
            return process, match.group(1)
    raise RuntimeError(f"{command} did not start")


def wait_for(url: str) -> None:
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.post(url + "/v1/chat/completions", json={"model": "m"}, timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} never answered")


def percentiles(seconds: list[float]) -> tuple[float, float]:
    ordered = sorted(seconds)
    return (
        1000 * ordered[len(ordered) // 2],
        1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
    )


def sequential(url: str, calls: int, stream: bool) -> list[float]:
    import httpx

    request = {"model": "bench", "messages": [{"role": "user", "content": "four two seven"}]}
    if stream:
        request["stream"] = True
    times = []
    with httpx.Client(timeout=30) as http:
        for _ in range(calls):
            start = time.perf_counter()
            if stream:
                with http.stream("POST", url + "/v1/chat/completions", json=request) as answer:
                    for _ in answer.iter_raw():
                        pass
            else:
                http.post(url + "/v1/chat/completions", json=request).raise_for_status()
            times.append(time.perf_counter() - start)
    return times


async def concurrent(url: str, clients: int, calls: int) -> tuple[float, list[float]]:
    import httpx

    request = {"model": "bench", "messages": [{"role": "user", "content": "four two seven"}]}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    times: list[float] = []
    remaining = calls
    async with httpx.AsyncClient(timeout=30, limits=limits) as http:

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                start = time.perf_counter()
                answer = await http.post(url + "/v1/chat/completions", json=request)
                answer.raise_for_status()
                times.append(time.perf_counter() - start)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return calls / elapsed, times


def measure(url: str, calls: int) -> dict[str, Any]:
    sequential(url, 100, False)  # warm-up: connections, caches
    figures: dict[str, Any] = {}
    figures["p50_ms"], figures["p99_ms"] = percentiles(sequential(url, calls, False))
    figures["stream_p50_ms"], figures["stream_p99_ms"] = percentiles(
        sequential(url, calls // 2, True)
    )
    for clients in (1, 16, 64):
        rate, times = asyncio.run(concurrent(url, clients, calls))
        figures[f"rps_{clients}"] = rate
        if clients == 16:
            figures["c16_p50_ms"], figures["c16_p99_ms"] = percentiles(times)
    return figures


def run_side(side: str, calls: int) -> dict[str, Any]:
    import yaml

    processes: list[subprocess.Popen] = []
    port = free_port()
    stub, _ = start([sys.executable, "-m", "bench.proxy_overhead", "--stub", str(port)])
    processes.append(stub)
    upstream = f"http://127.0.0.1:{port}"
    wait_for(upstream)
    url = upstream
    events = 0
    try:
        with tempfile.TemporaryDirectory() as folder:
            if side == "proxy":
                from omnitune.monitor import traffic

                reference = traffic.write_reference(Path(folder) / "reference.json")
                config = Path(folder) / "monitor.yaml"
                settings = {
                    "server": {"host": "127.0.0.1", "port": 0},
                    "store": {"path": f"{folder}/events.sqlite"},
                    "models": {"bench": {"modality": "text", "reference": str(reference)}},
                    "capture": {"dir": None},
                }
                config.write_text(yaml.safe_dump(settings))
                daemon, daemon_url = start(
                    [OMNITUNE, "monitor", "serve", "--config", str(config)],
                    r"listening on (http://[\d.]+:\d+)",
                )
                processes.append(daemon)
                settings["proxy"] = {"upstream": upstream, "daemon_url": daemon_url}
                config.write_text(yaml.safe_dump(settings))
                proxy, url = start(
                    [OMNITUNE, "monitor", "proxy", "--config", str(config), "--port", "0"],
                    r"listening on (http://[\d.]+:\d+)",
                )
                processes.append(proxy)
                wait_for(url)
            figures = measure(url, calls)
            if side == "proxy":
                import httpx

                time.sleep(1.5)  # the client's last batch
                status = httpx.get(daemon_url + "/v1/status", timeout=10).json()
                events = status["store"]["events"]
    finally:
        for process in reversed(processes):
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
    figures["events_stored"] = events
    figures["peak_rss_mb"] = peak_rss_mb()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--side", choices=["direct", "proxy"])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--stub", type=int, help="(internal) serve the stub upstream on PORT")
    args = parser.parse_args()
    if args.stub:
        import uvicorn

        uvicorn.run(stub_app(), host="127.0.0.1", port=args.stub, log_level="warning")
        return
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    print(json.dumps(run_side(args.side, args.calls)))


if __name__ == "__main__":
    main()
