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
from typing import TYPE_CHECKING, Any

from omnitune.monitor.canary import CanaryControl
from omnitune.monitor.metrics import ProxyCollector
from omnitune.monitor.middleware import MonitorMiddleware
from omnitune.monitor.recording import Recorder

if TYPE_CHECKING:
    from omnitune.monitor.config import MonitorConfig

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


def build_proxy(config: MonitorConfig, recorder: Recorder | None = None) -> Any:
    """The proxy's ASGI app for a `MonitorConfig` whose `proxy.upstream` is set: a forwarding
    Starlette app (pooled upstream client opened by its lifespan) inside `MonitorMiddleware`."""
    import httpx
    from prometheus_client import CollectorRegistry, generate_latest
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    section = config.proxy
    recorder = recorder or _recorder_for(config)
    pool: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: Any):
        pool["http"] = httpx.AsyncClient(
            limits=httpx.Limits(
                max_connections=section.max_connections,
                max_keepalive_connections=section.max_connections,
            ),
            timeout=httpx.Timeout(section.timeout_s, connect=section.connect_timeout_s),
            trust_env=False,
        )
        try:
            yield
        finally:
            await pool["http"].aclose()
            recorder.close()

    canary = CanaryControl(section.canary, config.server.token)

    async def forward(request: Request) -> Response:
        upstream, body = await canary.route(request, section.upstream)
        return await _forward(pool["http"], upstream, request, body)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "upstream": section.upstream})

    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProxyCollector(recorder, lambda: canary.router))

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    app = Starlette(
        routes=[
            Route("/omnitune/healthz", healthz, methods=["GET"]),
            Route("/omnitune/metrics", metrics, methods=["GET"]),
            Route("/omnitune/canary", canary.show, methods=["GET"]),
            Route("/omnitune/canary", canary.change, methods=["PUT", "DELETE"]),
            Route("/{path:path}", forward, methods=methods),
        ],
        lifespan=lifespan,
    )
    return MonitorMiddleware(app, recorder)


def _recorder_for(config: MonitorConfig) -> Recorder:
    """A recorder whose events go to the config's daemon, for its declared models."""
    from omnitune.monitor.client import Client

    section = config.proxy
    client = Client(daemon_url(config), config.server.token, max_queue=section.max_queue)
    modalities = {name: model.modality for name, model in config.models.items()}
    return Recorder(client, section, modalities)


async def _forward(http: Any, upstream: str, request: Any, body: bytes | None = None) -> Any:
    """Send `request` on to `upstream` as it came (or with `body` instead of its own: a
    canary's rewritten model); the upstream's answer as it was sent."""
    import httpx
    from starlette.responses import Response, StreamingResponse

    url = upstream + request.url.path + (f"?{request.url.query}" if request.url.query else "")
    headers = _end_to_end(request.headers.raw)
    if body is not None:  # httpx sets the new length
        headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
    outgoing = http.build_request(
        request.method, url, headers=headers, content=request.stream() if body is None else body
    )
    try:
        answer = await http.send(outgoing, stream=True)
    except httpx.TimeoutException as exc:
        return _failure(request, "timeout", 504, f"upstream timed out: {exc!r}")
    except httpx.TransportError as exc:
        return _failure(request, "connect", 502, f"upstream unreachable: {exc!r}")
    headers = [(k.lower(), v) for k, v in _end_to_end(answer.headers.raw)]
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
        whole.raw_headers = headers
        return whole

    async def chunks():
        try:
            async for chunk in answer.aiter_raw():
                yield chunk
        except httpx.HTTPError:
            request.scope.setdefault("state", {})["omnitune_error_class"] = "protocol"
        finally:
            await answer.aclose()

    streamed = StreamingResponse(chunks(), status_code=answer.status_code)
    streamed.raw_headers = headers
    return streamed


def _end_to_end(raw: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The headers that travel past this hop (RFC 9110's hop-by-hop ones dropped)."""
    return [(k, v) for k, v in raw if k.decode("latin-1").lower() not in HOP_BY_HOP]


def _failure(request: Any, error_class: str, status: int, message: str) -> Any:
    from starlette.responses import Response

    request.scope.setdefault("state", {})["omnitune_error_class"] = error_class
    body = {"error": {"message": message, "type": f"upstream_{error_class}", "code": status}}
    return Response(json.dumps(body), status_code=status, media_type="application/json")


def daemon_url(config: MonitorConfig) -> str:
    if config.proxy.daemon_url:
        return config.proxy.daemon_url
    host = config.server.host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{config.server.port}"


def serve_proxy(config: MonitorConfig) -> int:
    """Bind, print the address, and proxy until SIGTERM/SIGINT."""
    import uvicorn

    from omnitune.core.errors import ConfigError

    section = config.proxy
    if not section.upstream:
        raise ConfigError("proxy.upstream: set the upstream server's URL (or --upstream)")
    from omnitune.monitor.server import bind

    app = build_proxy(config)
    sock, url = bind(section.host, section.port, "proxy.port")
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
