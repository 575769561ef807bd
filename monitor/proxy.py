"""`omnitune monitor proxy`: a recording reverse proxy in front of an OpenAI-compatible server.

    clients ──► proxy (this) ──► upstream (vLLM, TGI, SGLang, `transformers serve`, ...)
                  └── one event per call ──► monitor daemon

Every request is forwarded as it came (method, path, query, headers but the hop-by-hop ones,
body) over a pooled `httpx.AsyncClient`, and the upstream's answer comes back as it was sent:
status, headers and body bytes, streamed chunks passed on as they arrive. The recorded paths
(chat completions, completions, audio transcriptions) go through `MonitorMiddleware`, which
times the call and hands it to the recorder off the request path. A refused connection to the
upstream answers 502 and a timeout 504, with an OpenAI-style error body, and both are recorded
with their class. The proxy's own health and counters live under `/omnitune/` (every other
path is the upstream's): `/omnitune/healthz`, `/omnitune/metrics`.
"""

from __future__ import annotations

import json
import sys
from contextlib import asynccontextmanager
from typing import Any

from omnitune.monitor.middleware import MonitorMiddleware
from omnitune.monitor.recording import Recorder

#: Connection-level headers (RFC 9110 section 7.6.1) are for one hop, never forwarded.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)


def build_proxy(config: Any, recorder: Recorder | None = None) -> Any:
    """The proxy's ASGI app for a `MonitorConfig` whose `proxy.upstream` is set."""
    import httpx
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    section = config.proxy
    upstream = section.upstream
    if recorder is None:
        from omnitune.monitor.client import Client

        client = Client(daemon_url(config), config.server.token, max_queue=section.max_queue)
        modalities = {name: model.modality for name, model in config.models.items()}
        recorder = Recorder(client, section, modalities)
    limits = httpx.Limits(
        max_connections=section.max_connections,
        max_keepalive_connections=section.max_connections,
    )
    timeout = httpx.Timeout(section.timeout_s, connect=section.connect_timeout_s)
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: Any):
        state["http"] = httpx.AsyncClient(limits=limits, timeout=timeout, trust_env=False)
        try:
            yield
        finally:
            await state["http"].aclose()
            recorder.close()

    async def forward(request: Request) -> Response:
        url = upstream + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        headers = [
            (k, v) for k, v in request.headers.raw if k.decode("latin-1").lower() not in HOP_BY_HOP
        ]
        outgoing = state["http"].build_request(
            request.method, url, headers=headers, content=request.stream()
        )
        try:
            answer = await state["http"].send(outgoing, stream=True)
        except httpx.TimeoutException as exc:
            return _failure(request, "timeout", 504, f"upstream timed out: {exc!r}")
        except httpx.TransportError as exc:
            return _failure(request, "connect", 502, f"upstream unreachable: {exc!r}")
        kept = [
            (k.lower(), v)
            for k, v in answer.headers.raw
            if k.decode("latin-1").lower() not in HOP_BY_HOP
        ]
        if "text/event-stream" not in answer.headers.get("content-type", ""):
            # A whole answer: read it and send it in one piece (a streaming response costs a
            # task group per call, a third of the proxy's own time on a small answer).
            try:
                content = b"".join([chunk async for chunk in answer.aiter_raw()])
            except httpx.TimeoutException as exc:
                return _failure(request, "timeout", 504, f"upstream timed out: {exc!r}")
            except httpx.HTTPError as exc:
                return _failure(request, "protocol", 502, f"upstream broke off: {exc!r}")
            finally:
                await answer.aclose()
            whole = Response(status_code=answer.status_code)
            whole.body = content
            whole.raw_headers = kept
            return whole

        async def body():
            try:
                async for chunk in answer.aiter_raw():
                    yield chunk
            except httpx.HTTPError:
                request.scope.setdefault("state", {})["omnitune_error_class"] = "protocol"
            finally:
                await answer.aclose()

        response = StreamingResponse(body(), status_code=answer.status_code)
        response.raw_headers = kept
        return response

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "upstream": upstream})

    class RecorderCollector:
        def describe(self) -> list[Any]:
            return []

        def collect(self):
            stats = recorder.stats
            calls = CounterMetricFamily(
                "omnitune_proxy_failed_calls",
                "Calls through the proxy that failed, by class (4xx, 5xx, connect, timeout, "
                "protocol).",
                labels=["class"],
            )
            for name, count in sorted(stats.by_class.items()):
                calls.add_metric([name], count)
            yield calls
            for name, text, value in (
                ("recorded", "Calls turned into monitor events.", stats.recorded),
                ("dropped", "Calls not recorded: the recording queue was full.", stats.dropped),
                ("unmapped", "Calls not recorded: no monitored model for them.", stats.unmapped),
                ("unparsed", "Bodies that could not be read as the API's format.", stats.unparsed),
            ):
                family = CounterMetricFamily(f"omnitune_proxy_{name}_calls", text)
                family.add_metric([], value)
                yield family
            client = recorder.client.stats()
            dropped = CounterMetricFamily(
                "omnitune_proxy_dropped_events",
                "Events the monitor client dropped (the daemon slow or down).",
            )
            dropped.add_metric([], client["dropped"])
            yield dropped
            queued = GaugeMetricFamily(
                "omnitune_proxy_queued_events", "Events waiting to be sent to the daemon."
            )
            queued.add_metric([], client["queued"])
            yield queued

    registry = CollectorRegistry(auto_describe=False)
    registry.register(RecorderCollector())

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    app = Starlette(
        routes=[
            Route("/omnitune/healthz", healthz, methods=["GET"]),
            Route("/omnitune/metrics", metrics, methods=["GET"]),
            Route("/{path:path}", forward, methods=methods),
        ],
        lifespan=lifespan,
    )
    wrapped = MonitorMiddleware(app, recorder)
    wrapped.recorder = recorder
    return wrapped


def _failure(request: Any, error_class: str, status: int, message: str) -> Any:
    from starlette.responses import Response

    request.scope.setdefault("state", {})["omnitune_error_class"] = error_class
    body = {"error": {"message": message, "type": f"upstream_{error_class}", "code": status}}
    return Response(json.dumps(body), status_code=status, media_type="application/json")


def daemon_url(config: Any) -> str:
    if config.proxy.daemon_url:
        return config.proxy.daemon_url
    host = config.server.host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{config.server.port}"


def serve_proxy(config: Any) -> int:
    """Bind, print the address, and proxy until SIGTERM/SIGINT."""
    import uvicorn

    from omnitune.trainers.errors import ConfigError

    section = config.proxy
    if not section.upstream:
        raise ConfigError("proxy.upstream: set the upstream server's URL (or --upstream)")
    from omnitune.monitor.server import bind

    app = build_proxy(config)
    sock, url = bind(section.host, section.port)
    print(
        f"omnitune monitor proxy: listening on {url} -> {section.upstream} "
        f"(events to {daemon_url(config)})",
        flush=True,
    )
    server = uvicorn.Server(
        uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=10
        )
    )
    server.run(sockets=[sock])
    print("omnitune monitor proxy: stopped", file=sys.stderr, flush=True)
    return 0
