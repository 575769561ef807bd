"""The daemon's HTTP API as the command line uses it (`monitor status`, `export`, `label`):
JSON in and out with the standard library, every failure an `OmnituneError` naming the URL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import urlencode
from urllib.request import Request, urlopen

from omnitune.core.errors import OmnituneError


class DaemonApi:
    def __init__(self, url: str, token: str | None = None, timeout_s: float = 30.0) -> None:
        self.url, self.token, self.timeout_s = url.rstrip("/"), token, timeout_s

    def get(self, path: str, **query: Any) -> Any:
        params = {k: v for k, v in query.items() if v is not None}
        return self._call(Request(self.url + path + (f"?{urlencode(params)}" if params else "")))

    def post(self, path: str, body: Any) -> Any:
        request = Request(self.url + path, data=json.dumps(body).encode(), method="POST")
        request.add_header("Content-Type", "application/json")
        return self._call(request)

    def events(self, model: str, **filters: Any) -> Iterator[dict[str, Any]]:
        """Every stored event of `model` matching `filters`, oldest first, page by page."""
        after = 0
        while True:
            page = self.get("/v1/events", model=model, after_id=after, limit=5000, **filters)
            if not page["events"]:
                return
            yield from page["events"]
            after = page["next_after_id"]

    def _call(self, request: Request) -> Any:
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read())
        except HTTPError as exc:
            body = exc.read().decode(errors="replace")  # the daemon's {"error": ...}
            raise OmnituneError(f"{self.url}: {exc.code} {body}") from None
        except (URLError, OSError) as exc:
            raise OmnituneError(f"{self.url}: daemon not reachable ({exc})") from None
