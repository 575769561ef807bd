"""Where the dashboard reads from: the monitor daemon's JSON API (default) or Prometheus.

Both are plain HTTP clients (urllib) that raise `SourceDown` with a one-line reason when the
source cannot be reached or answers with an error, so the pages show a banner, not a traceback.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any


class SourceDown(Exception):
    """The source did not answer usefully; the message says why, in one line."""


def _get_json(url: str, token: str | None = None, timeout: float = 5.0) -> Any:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise SourceDown(
            f"{url} answered {exc.code}: {exc.read()[:200].decode(errors='replace')}"
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SourceDown(f"{url} is not reachable ({reason})") from None
    except json.JSONDecodeError:
        raise SourceDown(f"{url} did not answer JSON") from None


@dataclass(frozen=True)
class Daemon:
    url: str
    token: str | None = None

    def status(self) -> dict[str, Any]:
        return _get_json(f"{self.url.rstrip('/')}/v1/status", self.token)

    def events(self, limit: int = 5000, **filters: Any) -> list[dict[str, Any]]:
        """The newest `limit` events (oldest first), following the after_id cursor."""
        query = urllib.parse.urlencode({"limit": limit, "latest": 1, **filters})
        base = f"{self.url.rstrip('/')}/v1/events?{query}"
        page = _get_json(base, self.token)
        return page["events"]


@dataclass(frozen=True)
class Prometheus:
    url: str

    def reachable(self) -> bool:
        try:
            _get_json(f"{self.url.rstrip('/')}/api/v1/status/buildinfo")
            return True
        except SourceDown:
            return False

    def range(self, query: str, minutes: float = 15, step_s: float = 15) -> list[dict[str, Any]]:
        """A PromQL range query over the last `minutes`: [{"metric": {...}, "values": [...]}]."""
        end = time.time()
        params = urllib.parse.urlencode(
            {"query": query, "start": end - minutes * 60, "end": end, "step": step_s}
        )
        body = _get_json(f"{self.url.rstrip('/')}/api/v1/query_range?{params}")
        if body.get("status") != "success":
            raise SourceDown(f"Prometheus refused {query!r}: {body.get('error')}")
        return body["data"]["result"]
