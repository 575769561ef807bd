"""Canary routing for the recording proxy: which calls a challenger serves.

The share is exact per block of 100 calls (each block's canary positions drawn at random),
so 1,000 calls at 10% are 100 canary calls, not 100 +- 30 as a coin flip per call would give,
and no client pattern can line up with a fixed period. A call can ask for an arm with the
canary header (1/true: the canary; 0/false: the champion), for a tester or a sticky session
the caller manages. The router is replaced whole when the canary changes, under a lock."""

from __future__ import annotations

import json
import random
import threading
from dataclasses import dataclass, field
from typing import Any

from omnitune.monitor.config import CanarySection

BLOCK = 100
YES, NO = frozenset({"1", "true", "yes"}), frozenset({"0", "false", "no"})


@dataclass
class CanaryRouter:
    section: CanarySection
    calls: dict[str, int] = field(default_factory=lambda: {"champion": 0, "canary": 0})
    _block: list[bool] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _rng: random.Random = field(default_factory=random.Random)

    def choose(self, headers: dict[str, str]) -> bool:
        """True when this call goes to the canary."""
        asked = headers.get(self.section.header.lower(), "").strip().lower()
        with self._lock:
            if asked in YES or asked in NO:
                chosen = asked in YES
            else:
                if not self._block:
                    canaries = round(self.section.share * BLOCK)
                    self._block = [True] * canaries + [False] * (BLOCK - canaries)
                    self._rng.shuffle(self._block)
                chosen = self._block.pop()
            self.calls["canary" if chosen else "champion"] += 1
        return chosen

    def describe(self) -> dict[str, Any]:
        return {**self.section.model_dump(mode="json"), "calls": dict(self.calls)}


def rewrite_model(body: bytes, model: str) -> bytes | None:
    """The JSON request body with its `model` replaced; None when it is not a JSON object."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    data["model"] = model
    return json.dumps(data).encode()


class CanaryControl:
    """The proxy's canary: the router in force (None: every call upstream), the routing of one
    request, and the `/omnitune/canary` handlers that show and change it."""

    def __init__(self, section: CanarySection | None, token: str | None) -> None:
        self.router = CanaryRouter(section) if section else None
        self.token = token

    async def route(self, request: Any, upstream: str) -> tuple[str, bytes | None]:
        """(where `request` goes, a replacement body or None). A canary call is marked in the
        ASGI scope with its adapter version, which the recorder gives its event."""
        from omnitune.monitor.recording import RECORDED_PATHS

        router = self.router
        if router is None or request.url.path not in RECORDED_PATHS:
            return upstream, None
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers.raw}
        if not router.choose(headers):
            return upstream, None
        request.scope.setdefault("state", {})["omnitune_adapter"] = router.section.adapter
        body = None
        if router.section.model:
            raw = await request.body()
            body = rewrite_model(raw, router.section.model) or raw
        return router.section.upstream or upstream, body

    async def show(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        return JSONResponse({"canary": self.router.describe() if self.router else None})

    async def change(self, request: Any) -> Any:
        """PUT a `proxy.canary` section (JSON) to route a share to a challenger from now on;
        DELETE to send every call upstream again. Needs `server.token`, as the daemon's
        reference endpoint does."""
        from pydantic import ValidationError
        from starlette.responses import JSONResponse

        denied = _refused(request, self.token)
        if denied is not None:
            return denied
        if request.method == "DELETE":
            self.router = None
            return JSONResponse({"canary": None})
        try:
            chosen = CanarySection.model_validate_json(await request.body())
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "body"
            return JSONResponse({"error": f"{where}: {first['msg']}"}, status_code=400)
        self.router = CanaryRouter(chosen)
        return JSONResponse({"canary": self.router.describe()})


def _refused(request: Any, token: str | None) -> Any:
    """A 401/403 answer unless the request carries `token` (403 when none is configured:
    changing where calls go is an operator's act)."""
    from starlette.responses import JSONResponse

    from omnitune.monitor.auth import bearer_refusal

    if token is None:
        return JSONResponse(
            {"error": "canary changes need a bearer token: set server.token"}, status_code=403
        )
    refusal = bearer_refusal(request.headers.get("authorization", ""), token)
    if refusal is None:
        return None
    status, _, message = refusal
    return JSONResponse({"error": message}, status_code=status)
