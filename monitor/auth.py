"""The bearer-token check the daemon's API and the proxy's canary endpoint share."""

from __future__ import annotations

import hmac


def bearer_refusal(header: str, token: str) -> tuple[int, str, str] | None:
    """(status, reason, message) refusing an `Authorization` header that does not carry
    `token` as a bearer token (401 without one, 403 with a wrong one); None when it does.
    Compared in constant time."""
    scheme, _, given = header.partition(" ")
    if not header or scheme.lower() != "bearer":
        return 401, "unauthorized", "missing bearer token (Authorization header)"
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        return 403, "forbidden", "wrong bearer token"
    return None
