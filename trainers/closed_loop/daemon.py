"""The monitor daemon's HTTP API as the loop uses it (standard library only: the trainer does
not import the monitor package, it calls the daemon as any client would)."""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omnitune.core.errors import OmnituneError


class DaemonError(OmnituneError):
    """The daemon refused or could not be reached (exit status 1: nothing was promoted)."""

    exit_code = 1


@dataclass
class Daemon:
    url: str
    token: str | None = None

    def load_reference(self, model: str, version: str, profile: Path) -> dict[str, Any]:
        """PUT /v1/models/MODEL/reference: the daemon measures drift against `profile` from
        now on, labelled with `version`, without a restart."""
        if not profile.is_file():
            raise DaemonError(f"{profile}: no reference profile to give the daemon")
        body = {"version": version, "profile": json.loads(profile.read_text())}
        return self._call("PUT", f"/v1/models/{model}/reference", body)

    def _call(self, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(
            self.url.rstrip("/") + path,
            data=json.dumps(body).encode(),
            method=method,
            headers={"content-type": "application/json"},
        )
        if self.token:
            request.add_header("authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=120) as answer:
                return json.loads(answer.read() or b"{}")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            with contextlib.suppress(ValueError):
                detail = json.loads(detail).get("error", detail)
            raise DaemonError(f"{self.url}{path}: {exc.code} {detail}") from None
        except OSError as exc:
            raise DaemonError(f"{self.url}: the daemon did not answer ({exc})") from None
