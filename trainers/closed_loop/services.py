"""The monitor daemon's and the recording proxy's HTTP APIs as the loop uses them (standard
library only: the trainer does not import the monitor package, it calls both as any client
would)."""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omnitune.core.errors import OmnituneError


class ServiceError(OmnituneError):
    """The daemon or proxy refused, or could not be reached (exit status 1: nothing was
    promoted)."""

    exit_code = 1


@dataclass
class Daemon:
    url: str
    token: str | None = None

    def load_reference(self, model: str, version: str, profile: Path) -> dict[str, Any]:
        """PUT /v1/models/MODEL/reference: the daemon measures drift against `profile` from
        now on, labelled with `version`, without a restart."""
        if not profile.is_file():
            raise ServiceError(f"{profile}: no reference profile to give the daemon")
        body = {"version": version, "profile": json.loads(profile.read_text())}
        return self._call("PUT", f"/v1/models/{model}/reference", body)

    def _call(self, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        return call(self.url, self.token, method, path, body, "daemon")


@dataclass
class Proxy:
    """The recording proxy's canary endpoint."""

    url: str
    token: str | None = None

    def set_canary(self, canary: dict[str, Any]) -> dict[str, Any]:
        return call(self.url, self.token, "PUT", "/omnitune/canary", canary, "proxy")

    def clear_canary(self) -> dict[str, Any]:
        return call(self.url, self.token, "DELETE", "/omnitune/canary", None, "proxy")


def call(
    url: str, token: str | None, method: str, path: str, body: dict[str, Any] | None, what: str
) -> dict[str, Any]:
    request = urllib.request.Request(
        url.rstrip("/") + path,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"content-type": "application/json"},
    )
    if token:
        request.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return json.loads(answer.read() or b"{}")
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        with contextlib.suppress(ValueError):
            detail = json.loads(detail).get("error", detail)
        raise ServiceError(f"{url}{path}: {exc.code} {detail}") from None
    except OSError as exc:
        raise ServiceError(f"{url}: the {what} did not answer ({exc})") from None
