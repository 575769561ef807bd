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

    def __init__(self, message: str, source: str = "Monitor daemon") -> None:
        super().__init__(message)
        self.source = source


def _get_json(
    url: str, token: str | None = None, timeout: float = 5.0, source: str = "Monitor daemon"
) -> Any:
    return _json_of(urllib.request.Request(url), token, timeout, source)


def _post_json(url: str, body: Any, token: str | None = None, timeout: float = 10.0) -> Any:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    request.add_header("Content-Type", "application/json")
    return _json_of(request, token, timeout, "Monitor daemon")


def _json_of(
    request: urllib.request.Request, token: str | None, timeout: float, source: str
) -> Any:
    """The request's JSON answer, or `SourceDown` saying in one line why there is none."""
    url = request.full_url
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        body = exc.read()[:300].decode(errors="replace")
        raise SourceDown(f"{url} answered {exc.code}: {body}", source) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SourceDown(f"{url} is not reachable ({reason})", source) from None
    except json.JSONDecodeError:
        raise SourceDown(f"{url} did not answer JSON", source) from None


#: (url, token) -> (monotonic time, answer) of the daemon's latest /v1/status.
_STATUS: dict[tuple[str, str | None], tuple[float, dict[str, Any]]] = {}
#: One page render asks for the status several times (reachability, counts, alerts...); an
#: answer this young is reused. Shorter than the shortest auto-refresh (5 s), so every refresh
#: reads the daemon anew.
STATUS_REUSE_S = 1.0


@dataclass(frozen=True)
class Daemon:
    url: str
    token: str | None = None

    def status(self, fresh: bool = False) -> dict[str, Any]:
        """The daemon's /v1/status; a second-old answer is reused unless `fresh` (a page that
        just changed the state, as the Review page does, wants it read anew)."""
        key = (self.url, self.token)
        cached = _STATUS.get(key)
        if not fresh and cached is not None and time.monotonic() - cached[0] < STATUS_REUSE_S:
            return cached[1]
        answer = _get_json(f"{self.url.rstrip('/')}/v1/status", self.token)
        _STATUS[key] = (time.monotonic(), answer)
        return answer

    def events(self, limit: int = 5000, **filters: Any) -> list[dict[str, Any]]:
        """The newest `limit` events matching `filters` (since, model, flagged), oldest first."""
        query = urllib.parse.urlencode({"limit": limit, "latest": 1, **filters})
        base = f"{self.url.rstrip('/')}/v1/events?{query}"
        page = _get_json(base, self.token)
        return page["events"]

    def drift_history(self, model: str) -> dict[str, Any]:
        """Each feature's deciding score and threshold per evaluation the daemon keeps."""
        query = urllib.parse.urlencode({"model": model})
        return _get_json(f"{self.url.rstrip('/')}/v1/drift?{query}", self.token)

    def drift_sample(self, model: str, feature: str, limit: int = 1000) -> dict[str, Any]:
        """One feature's reference and current-window values (or category counts)."""
        query = urllib.parse.urlencode({"model": model, "feature": feature, "limit": limit})
        return _get_json(f"{self.url.rstrip('/')}/v1/drift/sample?{query}", self.token)

    def review(self, model: str, limit: int = 1) -> dict[str, Any]:
        """The model's review queue: `queued` (unlabelled) and the first `limit` events."""
        query = urllib.parse.urlencode({"model": model, "limit": limit})
        return _get_json(f"{self.url.rstrip('/')}/v1/review?{query}", self.token)

    def compare(self, model: str, since: float) -> dict[str, Any]:
        """Each adapter version's calls since `since`: champion and canary side by side."""
        query = urllib.parse.urlencode({"model": model, "since": since})
        return _get_json(f"{self.url.rstrip('/')}/v1/compare?{query}", self.token)

    def feedback(self, **label: Any) -> dict[str, Any]:
        """Store a label (POST /v1/feedback): request_id, score, correction, annotator."""
        return _post_json(f"{self.url.rstrip('/')}/v1/feedback", label, self.token)


@dataclass(frozen=True)
class Prometheus:
    url: str

    def reachable(self) -> bool:
        try:
            self._api("status/buildinfo")
            return True
        except SourceDown:
            return False

    def range(self, query: str, start: float, end: float, step_s: float) -> list[dict[str, Any]]:
        """A PromQL range query from `start` to `end` (unix seconds), a point every `step_s`:
        [{"metric": {labels}, "values": [[ts, "number"], ...]}, ...]."""
        return self._api("query_range", query=query, start=start, end=end, step=step_s)["result"]

    def instant(self, query: str) -> list[dict[str, Any]]:
        """A PromQL instant query: [{"metric": {...}, "value": [ts, "number"]}]."""
        return self._api("query", query=query)["result"]

    def alerts(self) -> list[dict[str, Any]]:
        """Alerts pending or firing in Prometheus's rule evaluation (the shipped rules)."""
        return self._api("alerts")["alerts"]

    def _api(self, endpoint: str, **params: Any) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        url = f"{self.url.rstrip('/')}/api/v1/{endpoint}{query}"
        body = _get_json(url, source="Prometheus")
        if body.get("status") != "success":
            raise SourceDown(f"refused {params.get('query', endpoint)!r}: {body}", "Prometheus")
        return body["data"]
