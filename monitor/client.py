"""The client a serving process uses to report inference calls to the monitor daemon.

    from omnitune.monitor import Client

    monitor = Client("http://127.0.0.1:9108", token=None)
    with monitor.timed("support-bot", adapter="v3", input=prompt) as call:
        call.output = model.generate(prompt)

`log()` and `timed()` only append to a bounded in-memory queue (a few microseconds on the
caller's thread); a background thread sends the queue in batches, with retries. When the daemon
is down for long, the queue fills and new events are dropped and counted (`stats()["dropped"]`)
instead of growing memory or blocking the caller. Nothing here ever raises into the serving
code path. Standard library only: the client needs neither torch nor the daemon's extras.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import itertools
import json
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar
from urllib.parse import urlsplit

logger = logging.getLogger("omnitune.monitor.client")

F = TypeVar("F", bound=Callable[..., Any])

#: Retries back off exponentially from `backoff_s`, up to this.
MAX_BACKOFF_S = 5.0


class Client:
    def __init__(
        self,
        url: str = "http://127.0.0.1:9108",
        token: str | None = None,
        *,
        max_queue: int = 100_000,
        batch_size: int = 500,
        flush_interval_s: float = 0.5,
        timeout_s: float = 5.0,
        retries: int = 3,
        backoff_s: float = 0.2,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError(f"monitor URL must be http(s)://HOST[:PORT], not {url!r}")
        self.url = url
        self._scheme, self._host = parts.scheme, parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._path = parts.path.rstrip("/") + "/v1/events"
        self._headers = {"Content-Type": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self.max_queue, self.batch_size = max_queue, batch_size
        self.flush_interval_s, self.timeout_s = flush_interval_s, timeout_s
        self.retries, self.backoff_s = retries, backoff_s
        self._queue: deque[dict[str, Any]] = deque()
        self._ids = itertools.count()
        self._prefix = os.urandom(6).hex() + "-"
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._closing = False
        self._connection: http.client.HTTPConnection | None = None
        self.sent = self.dropped = self.failed_batches = 0
        self._thread = threading.Thread(
            target=self._run, name="omnitune-monitor-client", daemon=True
        )
        self._thread.start()
        atexit.register(_close_quietly, weakref.ref(self))

    # The caller's side: cheap and never raising -----------------------------------------------

    def log(
        self,
        model: str,
        *,
        adapter: str = "",
        input: Any = None,
        output: str | None = None,
        latency_s: float | None = None,
        features: dict[str, Any] | None = None,
        label: str | None = None,
        modality: str | None = None,
        error: bool = False,
        ts: float | None = None,
        request_id: str | None = None,
    ) -> None:
        """Queue one event; returns at once. Dropped (and counted) when the queue is full."""
        try:
            if self._full():
                return
            event: dict[str, Any] = {
                "model": model,
                "ts": time.time() if ts is None else ts,
                "request_id": request_id or f"{self._prefix}{next(self._ids)}",
            }
            if adapter:
                event["adapter"] = adapter
            if input is not None:
                event["input"] = input
            if output is not None:
                event["output"] = output
            if latency_s is not None:
                event["latency_s"] = latency_s
            if features:
                event["features"] = features
            if label is not None:
                event["label"] = label
            if modality is not None:
                event["modality"] = modality
            if error:
                event["error"] = True
            self._enqueue(event)
        except Exception:  # never into the serving path
            self.dropped += 1

    def feedback(
        self,
        request_id: str,
        *,
        score: bool | float | None = None,
        correction: str | None = None,
        comment: str | None = None,
        annotator: str = "human",
    ) -> dict[str, Any]:
        """Label the call `request_id` names (the `X-Omnitune-Request-Id` header of a response
        through the recording proxy or middleware, or the id given to `log`): a thumbs
        up/down (`score=True/False`) or a score from 0 to 1, and/or the answer it should have
        given. Sent at once, not queued; returns the daemon's answer with its HTTP `status`
        (`{"status": 200, "label": "stored", ...}`; a refusal has `status` 4xx and `error`;
        an unreachable daemon `status` None). Like the rest of the client it never raises."""
        body: dict[str, Any] = {"request_id": request_id, "annotator": annotator}
        for key, value in (("score", score), ("correction", correction), ("comment", comment)):
            if value is not None:
                body[key] = value
        kind = (
            http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        )
        connection = kind(self._host, self._port, timeout=self.timeout_s)
        path = self._path.removesuffix("/v1/events") + "/v1/feedback"
        try:
            connection.request("POST", path, body=json.dumps(body).encode(), headers=self._headers)
            response = connection.getresponse()
            status, text = response.status, response.read().decode("utf-8", "replace")
        except (OSError, http.client.HTTPException) as exc:
            return {"status": None, "error": str(exc)}
        finally:
            connection.close()
        try:
            answer = json.loads(text)
        except ValueError:
            answer = {"error": text[:200]}
        return {"status": status, **(answer if isinstance(answer, dict) else {"answer": answer})}

    def log_event(self, event: dict[str, Any]) -> None:
        """Queue an event given as a dict in the daemon's format (e.g. a line of a log file).
        A missing `request_id` is filled in, so retries never store it twice."""
        try:
            if self._full():
                return
            if "request_id" not in event:
                event = {**event, "request_id": f"{self._prefix}{next(self._ids)}"}
            self._enqueue(event)
        except Exception:
            self.dropped += 1

    def _full(self) -> bool:
        """True (and the event counted as dropped) when the queue is full or closing."""
        if len(self._queue) >= self.max_queue or self._closing:
            self.dropped += 1
            return True
        return False

    def _enqueue(self, event: dict[str, Any]) -> None:
        self._queue.append(event)
        if len(self._queue) == self.batch_size:
            self._wake.set()  # a full batch: send now rather than at the next interval

    def timed(self, model: str, **fields: Any) -> Timed:
        """A context manager (or decorator) that logs the wrapped call with its latency."""
        return Timed(self, model, fields)

    def stats(self) -> dict[str, int]:
        return {
            "queued": len(self._queue),
            "sent": self.sent,
            "dropped": self.dropped,
            "failed_batches": self.failed_batches,
        }

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until the queue has been sent (or given up on); True if it is empty."""
        deadline = time.monotonic() + timeout_s
        while self._queue and time.monotonic() < deadline:
            self._idle.clear()
            self._wake.set()
            self._idle.wait(min(0.05, max(0.0, deadline - time.monotonic())))
        return not self._queue

    def close(self, timeout_s: float = 10.0) -> None:
        """Send what is queued (up to `timeout_s`), then stop the sender thread."""
        if self._closing:
            return
        self.flush(timeout_s)
        self._closing = True
        self._wake.set()
        self._thread.join(timeout=timeout_s)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # The sender thread -------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._closing:
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            while self._queue and not self._closing:
                batch = []
                while self._queue and len(batch) < self.batch_size:
                    batch.append(self._queue.popleft())
                self._send(batch)
            self._idle.set()
        if self._connection is not None:
            self._connection.close()

    def _send(self, batch: list[dict[str, Any]]) -> None:
        body = json.dumps(batch, separators=(",", ":"), default=str).encode()
        for attempt in range(self.retries + 1):
            try:
                status, text = self._post(body)
            except (OSError, http.client.HTTPException) as exc:
                status, text = None, str(exc)
                self._reset()
            if status is not None and 200 <= status < 300:
                self.sent += len(batch)
                return
            if status is not None and 400 <= status < 500 and status != 429:
                break  # the daemon refused this batch; resending cannot help
            if attempt < self.retries and not self._closing:
                time.sleep(min(self.backoff_s * 2**attempt, MAX_BACKOFF_S))
        self.failed_batches += 1
        self.dropped += len(batch)
        logger.warning("monitor: dropped %d events (%s: %s)", len(batch), status, text[:200])

    def _post(self, body: bytes) -> tuple[int, str]:
        if self._connection is None:
            kind = (
                http.client.HTTPSConnection
                if self._scheme == "https"
                else http.client.HTTPConnection
            )
            self._connection = kind(self._host, self._port, timeout=self.timeout_s)
        self._connection.request("POST", self._path, body=body, headers=self._headers)
        response = self._connection.getresponse()
        text = response.read().decode("utf-8", "replace")
        return response.status, text

    def _reset(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class Timed:
    """`with client.timed(model, input=...) as call: call.output = ...`; as a decorator, the
    function's return value (as text) is the output."""

    def __init__(self, client: Client, model: str, fields: dict[str, Any]) -> None:
        self.client, self.model, self.fields = client, model, fields
        self.output: str | None = fields.pop("output", None)
        self.label: str | None = fields.pop("label", None)
        self._start = 0.0

    def __enter__(self) -> Timed:
        self._start = time.perf_counter()
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        latency = time.perf_counter() - self._start
        self.client.log(
            self.model,
            latency_s=latency,
            output=self.output,
            label=self.label,
            error=kind is not None,
            **self.fields,
        )

    def __call__(self, function: F) -> F:
        @wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            call = Timed(self.client, self.model, dict(self.fields))
            with call:
                result = function(*args, **kwargs)
                call.output = result if isinstance(result, str) else None
            return result

        return wrapper  # type: ignore[return-value]


def _close_quietly(reference: weakref.ref[Client]) -> None:
    client = reference()
    if client is not None:
        with contextlib.suppress(Exception):
            client.close(timeout_s=2.0)
