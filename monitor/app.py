"""The daemon's HTTP API, a Starlette app over a `Monitor`.

POST /v1/events   one JSON event, a JSON array or JSON lines; 200 once committed
GET  /metrics     Prometheus text format
GET  /healthz     liveness (no auth, for probes)
GET  /v1/status   drift, safety and latency state and active alerts
GET  /v1/events   stored (redacted) events: ?since=UNIX&after_id=N&model=M&flagged=1&limit=N
                  (&latest=1: the newest `limit`; &labelled=1: labelled only), with labels
POST /v1/feedback a label of one stored event: {"request_id", "score", "correction", ...}
GET  /v1/review   ?model=M&limit=N: the unlabelled flagged and captured events, most useful first

Every refusal is a 4xx with `{"error": "..."}` naming the problem (the event index and field
for invalid events), counted in `omnitune_rejected_requests_total{reason}`; the daemon goes on
serving. Blocking work (SQLite, detectors) runs in Starlette's thread pool.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from omnitune.monitor.auth import bearer_refusal
from omnitune.monitor.engine import Monitor
from omnitune.monitor.events import BodyError, parse_events
from omnitune.monitor.ingest import IngestResult, Rejected
from omnitune.monitor.labels import parse_feedback

MAX_EVENTS_LISTED = 5000


class BodyTooLarge(Exception):
    pass


class BodyTimeout(Exception):
    pass


class EventApi:
    """The HTTP routes over one `Monitor`, each a small handler; `create_app` mounts them."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor
        self.server = monitor.config.server

    def refuse(self, status: int, reason: str, message: str) -> JSONResponse:
        self.monitor.reject(reason)
        return JSONResponse({"error": message}, status_code=status)

    def unauthorized(self, request: Request) -> JSONResponse | None:
        if self.server.token is None:
            return None
        refusal = bearer_refusal(request.headers.get("authorization", ""), self.server.token)
        if refusal is None:
            return None
        response = self.refuse(*refusal)
        if refusal[0] == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response

    def parse_and_ingest(self, body: bytes, content_type: str) -> IngestResult:
        events = parse_events(body, content_type)
        if len(events) > self.server.max_events_per_request:
            raise Rejected(
                413,
                "too_many_events",
                f"{len(events)} events in one request; the limit is "
                f"{self.server.max_events_per_request}",
            )
        return self.monitor.ingest(events)

    async def read_body(self, request: Request) -> bytes:
        """The body, refused past max_body_bytes or when it is not in by body_timeout_s."""
        declared = request.headers.get("content-length")
        if (
            declared is not None
            and declared.isdigit()
            and int(declared) > self.server.max_body_bytes
        ):
            raise BodyTooLarge

        async def collect() -> bytes:
            chunks, size = [], 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > self.server.max_body_bytes:
                    raise BodyTooLarge
                chunks.append(chunk)
            return b"".join(chunks)

        try:
            return await asyncio.wait_for(collect(), timeout=self.server.body_timeout_s)
        except TimeoutError:
            raise BodyTimeout from None

    async def post_events(self, request: Request) -> Response:
        if (denied := self.unauthorized(request)) is not None:
            return denied
        try:
            body = await self.read_body(request)
        except BodyTooLarge:
            return self.refuse(
                413,
                "too_large",
                f"body is larger than {self.server.max_body_bytes} bytes; send batches",
            )
        except BodyTimeout:
            response = self.refuse(
                408,
                "body_timeout",
                f"the body did not arrive within {self.server.body_timeout_s:g} s "
                "(server.body_timeout_s)",
            )
            response.headers["Connection"] = "close"
            return response
        content_type = request.headers.get("content-type", "")
        try:
            # Parsing and ingest run in one worker thread: handing the parsed events from the
            # event loop to a worker made the two threads trade the GIL on every batch.
            result = await run_in_threadpool(self.parse_and_ingest, body, content_type)
        except BodyError as exc:
            message = str(exc)
            invalid_json = message.startswith("invalid JSON") or message.startswith("empty")
            return self.refuse(400 if invalid_json else 422, "invalid", message)
        except Rejected as exc:
            return self.refuse(exc.status, exc.reason, str(exc))
        return JSONResponse(
            {
                "accepted": result.accepted,
                "duplicates": result.duplicates,
                "flagged": result.flagged,
                "captured": result.captured,
            }
        )

    async def metrics(self, request: Request) -> Response:
        if self.server.metrics_token and (denied := self.unauthorized(request)) is not None:
            return denied
        body = await run_in_threadpool(generate_latest, self.monitor.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def status(self, request: Request) -> Response:
        if (denied := self.unauthorized(request)) is not None:
            return denied
        return JSONResponse(await run_in_threadpool(self.monitor.status))

    async def list_events(self, request: Request) -> Response:
        if (denied := self.unauthorized(request)) is not None:
            return denied
        try:
            filters = _event_filters(dict(request.query_params))
        except ValueError as exc:
            return self.refuse(400, "invalid_query", str(exc))
        events = await run_in_threadpool(lambda: self.monitor.recent_events(**filters))
        next_id = events[-1]["id"] if events else filters.get("after_id")
        return JSONResponse({"events": events, "next_after_id": next_id})

    async def drift_history(self, request: Request) -> Response:
        if (denied := self.unauthorized(request)) is not None:
            return denied
        query = dict(request.query_params)
        try:
            params = _required(query, {"model"})
            return JSONResponse(
                await run_in_threadpool(self.monitor.drift_history, params["model"])
            )
        except ValueError as exc:
            return self.refuse(400, "invalid_query", str(exc))
        except KeyError as exc:
            return JSONResponse({"error": exc.args[0]}, status_code=404)

    async def drift_sample(self, request: Request) -> Response:
        if (denied := self.unauthorized(request)) is not None:
            return denied
        query = dict(request.query_params)
        try:
            params = _required(query, {"model", "feature"}, {"limit"})
            limit = params.get("limit", "1000")
            if not limit.isdigit() or not 1 <= int(limit) <= MAX_EVENTS_LISTED:
                raise ValueError(f"limit must be an integer from 1 to {MAX_EVENTS_LISTED}")
            sample = await run_in_threadpool(
                self.monitor.drift_sample, params["model"], params["feature"], int(limit)
            )
            return JSONResponse(sample)
        except ValueError as exc:
            return self.refuse(400, "invalid_query", str(exc))
        except KeyError as exc:
            return JSONResponse({"error": exc.args[0]}, status_code=404)

    async def post_feedback(self, request: Request) -> Response:
        """A label of one stored event: score, correction, comment, annotator."""
        if (denied := self.unauthorized(request)) is not None:
            return denied
        try:
            body = await self.read_body(request)
        except (BodyTooLarge, BodyTimeout):
            return self.refuse(413, "too_large", "feedback body too large or too slow")
        try:
            feedback = parse_feedback(body, self.server.max_label_bytes)
            answer = await run_in_threadpool(self.monitor.feedback, feedback)
        except Rejected as exc:
            return self.refuse(exc.status, exc.reason, str(exc))
        return JSONResponse(answer)

    async def review(self, request: Request) -> Response:
        """The model's queue of unlabelled flagged and captured events, most useful first."""
        if (denied := self.unauthorized(request)) is not None:
            return denied
        try:
            params = _required(dict(request.query_params), {"model"}, {"limit"})
            limit = params.get("limit", "20")
            if not limit.isdigit() or not 1 <= int(limit) <= MAX_EVENTS_LISTED:
                raise ValueError(f"limit must be an integer from 1 to {MAX_EVENTS_LISTED}")
            queue = await run_in_threadpool(self.monitor.review, params["model"], int(limit))
        except ValueError as exc:
            return self.refuse(400, "invalid_query", str(exc))
        except KeyError as exc:
            return JSONResponse({"error": exc.args[0]}, status_code=404)
        return JSONResponse(queue)

    async def compare(self, request: Request) -> Response:
        """Champion and canary side by side: each adapter version's calls since `since`."""
        if (denied := self.unauthorized(request)) is not None:
            return denied
        try:
            params = _required(dict(request.query_params), {"model"}, {"since"})
            since = float(params.get("since", "0"))
            answer = await run_in_threadpool(self.monitor.compare, params["model"], since)
        except ValueError as exc:
            return self.refuse(400, "invalid_query", str(exc))
        except KeyError as exc:
            return JSONResponse({"error": exc.args[0]}, status_code=404)
        return JSONResponse(answer)

    async def put_reference(self, request: Request) -> Response:
        """A new drift baseline for a model (`omnitune loop promote` / `rollback`): body
        {"version": NAME, "profile": a run's reference.json}. Changing what drift is measured
        against is an operator's act, so it needs the bearer token even where events do not
        (a daemon without `server.token` refuses it)."""
        if self.server.token is None:
            return self.refuse(
                403,
                "forbidden",
                "reference updates need a bearer token: set server.token on the daemon",
            )
        if (denied := self.unauthorized(request)) is not None:
            return denied
        try:
            body = await self.read_body(request)
        except (BodyTooLarge, BodyTimeout):
            return self.refuse(413, "too_large", "reference body too large or too slow")
        try:
            version, profile = _reference_body(body)
            answer = await run_in_threadpool(
                self.monitor.load_reference, request.path_params["model"], version, profile
            )
        except ValueError as exc:
            return self.refuse(400, "invalid_reference", str(exc))
        except KeyError as exc:
            return JSONResponse({"error": exc.args[0]}, status_code=404)
        return JSONResponse(answer)

    async def not_found(self, request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": f"no such endpoint: {request.url.path}"}, status_code=404)

    async def not_allowed(self, request: Request, exc: Exception) -> Response:
        return JSONResponse(
            {"error": f"{request.method} is not allowed on {request.url.path}"}, status_code=405
        )

    async def crashed(self, request: Request, exc: Exception) -> Response:
        import logging

        logging.getLogger("omnitune.monitor").exception("error serving %s", request.url.path)
        return JSONResponse({"error": "internal error; see the daemon's log"}, status_code=500)


def create_app(
    monitor: Monitor,
    lifespan: Callable[[Starlette], AbstractAsyncContextManager[None]] | None = None,
) -> Starlette:
    """The daemon's Starlette app: `EventApi`'s handlers on their routes."""
    api = EventApi(monitor)
    routes = [
        Route("/v1/events", api.post_events, methods=["POST"]),
        Route("/v1/events", api.list_events, methods=["GET"]),
        Route("/metrics", api.metrics, methods=["GET"]),
        Route("/healthz", api.healthz, methods=["GET"]),
        Route("/v1/status", api.status, methods=["GET"]),
        Route("/v1/drift", api.drift_history, methods=["GET"]),
        Route("/v1/drift/sample", api.drift_sample, methods=["GET"]),
        Route("/v1/feedback", api.post_feedback, methods=["POST"]),
        Route("/v1/review", api.review, methods=["GET"]),
        Route("/v1/models/{model}/reference", api.put_reference, methods=["PUT"]),
        Route("/v1/compare", api.compare, methods=["GET"]),
    ]
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={404: api.not_found, 405: api.not_allowed, 500: api.crashed},
    )


def _reference_body(body: bytes) -> tuple[str, dict[str, Any]]:
    try:
        data = json.loads(body)
    except ValueError:
        raise ValueError("body: not JSON") from None
    if not isinstance(data, dict):
        raise ValueError("body: not a JSON object")
    version, profile = data.get("version"), data.get("profile")
    if not isinstance(version, str) or not version:
        raise ValueError("version: missing (a name such as v3)")
    if not isinstance(profile, dict) or not isinstance(profile.get("features"), dict):
        raise ValueError("profile: missing or not a reference profile (no 'features')")
    return version, profile


def _required(
    query: dict[str, str], required: set[str], optional: set[str] | frozenset[str] = frozenset()
) -> dict[str, str]:
    """The query's parameters, after refusing unknown ones and naming a missing one."""
    unknown = sorted(set(query) - required - set(optional))
    if unknown:
        known = ", ".join(sorted(required | set(optional)))
        raise ValueError(f"unknown query parameter {unknown[0]!r} (known: {known})")
    missing = sorted(required - set(query))
    if missing:
        raise ValueError(f"query parameter {missing[0]!r} is required")
    return query


def _event_filters(query: dict[str, str]) -> dict[str, Any]:
    _required(
        query, set(), {"since", "after_id", "model", "flagged", "limit", "latest", "labelled"}
    )
    filters: dict[str, Any] = {}
    try:
        if "since" in query:
            filters["since"] = float(query["since"])
        if "after_id" in query:
            filters["after_id"] = int(query["after_id"])
        if "limit" in query:
            filters["limit"] = int(query["limit"])
    except ValueError:
        raise ValueError("since must be unix seconds; after_id and limit integers") from None
    if not 1 <= filters.get("limit", 500) <= MAX_EVENTS_LISTED:
        raise ValueError(f"limit must be between 1 and {MAX_EVENTS_LISTED}")
    if "model" in query:
        filters["model"] = query["model"]
    for flag in ("flagged", "latest", "labelled"):
        if query.get(flag, "0").lower() in {"1", "true", "yes"}:
            filters[flag] = True
    return filters
