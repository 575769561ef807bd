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
