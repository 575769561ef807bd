"""`MonitorMiddleware`: record the OpenAI-style calls of your own ASGI app (Starlette, FastAPI).

    from omnitune.monitor import MonitorMiddleware

    app = FastAPI()            # serves /v1/chat/completions itself
    app.add_middleware(MonitorMiddleware, daemon_url="http://127.0.0.1:9108",
                       models={"digits-chat": "text"})

It watches the request body as the app reads it and the response as the app sends it (chunks
pass on at once: a streamed answer is not held back), notes the time of the first generated
token, and hands the finished call to a `Recorder`, which builds the event off the request
path. The recording proxy (`omnitune monitor proxy`) is this middleware around a forwarding app.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from omnitune.monitor.recording import (
    RECORDED_PATHS,
    REQUEST_ID_HEADER,
    Call,
    Recorder,
    chunk_text,
)

if TYPE_CHECKING:
    from omnitune.monitor.config import ProxySection

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class MonitorMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        recorder: Recorder | None = None,
        *,
        daemon_url: str = "http://127.0.0.1:9108",
        token: str | None = None,
        models: dict[str, str] | None = None,
        section: ProxySection | None = None,
    ) -> None:
        """`recorder`, or one built from `daemon_url`/`token`, the monitored `models`
        ({name: modality}) and a `ProxySection` (`section`: routes, roles, redaction)."""
        self.app = app
        if recorder is None:
            from omnitune.monitor.client import Client
            from omnitune.monitor.config import ProxySection

            section = section or ProxySection()
            client = Client(daemon_url, token, max_queue=section.max_queue)
            recorder = Recorder(client, section, dict(models or {}))
        self.recorder = recorder
        self.limit = recorder.section.max_record_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope.get("method") != "POST"
            or scope.get("path") not in RECORDED_PATHS
        ):
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        call = Call(
            path=scope["path"],
            request_body=b"",
            request_type=headers.get(b"content-type", b"").decode("latin-1"),
            started=time.perf_counter(),
            ended=0.0,
        )
        request_parts: list[bytes] = []
        response_parts: list[bytes] = []
        sizes = {"request": 0, "response": 0}
        streamed = False

        async def watched_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                body = message.get("body", b"")
                sizes["request"] += len(body)
                if sizes["request"] <= self.limit:
                    request_parts.append(body)
                else:
                    call.truncated = True
            return message

        async def watched_send(message: Message) -> None:
            nonlocal streamed
            if message["type"] == "http.response.start":
                call.status = message["status"]
                # The caller learns the event's id, for feedback on this very answer.
                header = (REQUEST_ID_HEADER.lower().encode(), call.request_id.encode())
                message = {**message, "headers": [*message.get("headers", []), header]}
                for key, value in message.get("headers", []):
                    if key.lower() == b"content-type":
                        call.response_type = value.decode("latin-1")
                streamed = "text/event-stream" in call.response_type
            elif message["type"] == "http.response.body":
                body = message.get("body", b"")
                now = time.perf_counter()
                if body and call.first_byte is None:
                    call.first_byte = now
                if streamed and call.first_token is None and body and _carries_text(body):
                    call.first_token = now
                sizes["response"] += len(body)
                if sizes["response"] <= self.limit:
                    response_parts.append(body)
                else:
                    call.truncated = True
            await send(message)

        try:
            await self.app(scope, watched_receive, watched_send)
        finally:
            call.ended = time.perf_counter()
            call.request_body = b"".join(request_parts)
            call.response_body = b"".join(response_parts)
            call.error_class = scope.get("state", {}).get("omnitune_error_class")
            call.adapter = scope.get("state", {}).get("omnitune_adapter")
            if call.status is None and call.error_class is None:
                call.error_class = "protocol"  # the app ended without answering
            self.recorder.record(call)


def _carries_text(body: bytes) -> bool:
    """True when a chunk of server-sent events holds generated text (not only a role)."""
    for line in body.split(b"\n"):
        if line.startswith(b"data:") and line[5:].strip() not in (b"", b"[DONE]"):
            try:
                chunk = json.loads(line[5:])
            except ValueError:
                continue
            if isinstance(chunk, dict) and chunk_text(chunk):
                return True
    return False
