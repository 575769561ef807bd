"""Labels for what the monitor captured: feedback and corrections from people or a teacher
model, and the review queue that asks for them.

A label belongs to one stored event (by its `request_id`) and one annotator: a score (thumbs
up/down or a number from 0 to 1), a correction (the answer the model should have given: text,
or for speech the transcript) and a comment. The same annotator labelling the same event again
replaces their label; a repeat of the same label is stored once. Labels are committed like
events (SQLite WAL, counted in `omnitune_labels_total` in the same transaction).

The review queue lists a model's flagged and captured events that nobody has labelled,
ordered so that an annotator's time goes furthest: safety flags first (a harmful answer is the
most urgent thing to correct), then drift; inside each group one event per distinct input (a
repeated prompt is labelled once), spread over the feature space by a farthest-first traversal
of the events' numeric features, z-scored over the candidates: each next event is the one
farthest from every event listed before it, so the first ten cover ten different regions
instead of ten near-copies of the commonest request.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from omnitune.monitor.config import MonitorConfig
from omnitune.monitor.ingest import Ingestor, Rejected
from omnitune.monitor.metrics import Counts
from omnitune.monitor.store import Store, StoredEvent, StoreFull
from omnitune.monitor.windows import fingerprint

#: Queue order: why an event was queued, most urgent first.
REASON_ORDER = {"safety": 0, "drift": 1}

#: Unlabelled events considered per queue request (the newest); the traversal is O(n * k).
REVIEW_CANDIDATES = 2000

TEACHER_PREFIX = "teacher:"


class Feedback(BaseModel):
    """The body of POST /v1/feedback."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=256)
    score: float | None = Field(
        None, description="true/false (thumbs up/down) or a number from 0 (wrong) to 1 (right)"
    )
    correction: str | None = Field(None, description="the answer the model should have given")
    comment: str | None = Field(None, max_length=4000)
    annotator: str = Field(
        "human",
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]*$",
        description="who labels: a person's name, or teacher:MODEL for a teacher model",
    )

    @field_validator("score", mode="before")
    @classmethod
    def _thumbs_or_number(cls, value: Any) -> Any:
        if isinstance(value, bool):
            return 1.0 if value else 0.0
        if isinstance(value, str):
            raise ValueError("must be true/false (thumbs) or a number from 0 to 1, not text")
        return value

    @field_validator("score")
    @classmethod
    def _in_range(cls, value: float | None) -> float | None:
        if value is not None and not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise ValueError("must be from 0 (wrong) to 1 (right)")
        return value

    @property
    def source(self) -> str:
        return "teacher" if self.annotator.startswith(TEACHER_PREFIX) else "human"


def parse_feedback(body: bytes, max_bytes: int) -> Feedback:
    """The request body as a `Feedback`, or `Rejected` (413 for a correction or comment over
    `max_bytes`, 422 naming the field, 400 for a body that is not JSON)."""
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise Rejected(400, "invalid", f"invalid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise Rejected(422, "invalid", "feedback must be a JSON object")
    for field in ("correction", "comment"):
        text = data.get(field)
        if isinstance(text, str) and len(text.encode()) > max_bytes:
            raise Rejected(
                413,
                "too_large",
                f"{field}: {len(text.encode())} bytes; the limit is {max_bytes} "
                "(server.max_label_bytes)",
            )
    try:
        feedback = Feedback.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "feedback"
        raise Rejected(
            422, "invalid", f"{where}: {first['msg'].removeprefix('Value error, ')}"
        ) from None
    if feedback.score is None and feedback.correction is None:
        raise Rejected(422, "invalid", "feedback needs a score, a correction or both")
    return feedback


@dataclass
class Labelling:
    """Stores labels and builds the review queue (the monitor's labelling side)."""

    config: MonitorConfig
    store: Store
    counts: Counts
    ingestor: Ingestor

    def feedback(self, feedback: Feedback) -> dict[str, Any]:
        """Store `feedback`; `Rejected` 404 when no stored event has its request id."""
        event = self.store.event(feedback.request_id)
        if event is None:
            raise Rejected(
                404,
                "unknown_request",
                f"no stored event has request_id {feedback.request_id!r} (feedback is for "
                "events the daemon has stored; an event over the retention limit is gone)",
            )
        label = {
            "source": feedback.source,
            "ts": time.time(),
            "score": feedback.score,
            # Stored as scrubbed as the events themselves: no PII reaches a dataset.
            "correction": self.ingestor.scrub(feedback.correction),
            "comment": self.ingestor.scrub(feedback.comment),
        }
        delta = {("labels", (event.model, feedback.source)): 1.0}
        try:
            outcome = self.store.put_label(feedback.request_id, feedback.annotator, label, delta)
        except StoreFull as exc:
            raise Rejected(
                503, "store_full", f"the event store's disk is full ({exc}); send it again later"
            ) from None
        if outcome == "stored":
            self.counts.add(delta)
        return {"request_id": feedback.request_id, "model": event.model, "label": outcome}

    def review(self, model: str, limit: int) -> dict[str, Any]:
        """The first `limit` events of `model`'s review queue, in review order."""
        if model not in self.config.models:
            raise KeyError(f"unknown model {model!r} (configured: {', '.join(self.config.models)})")
        candidates = self.store.unlabelled(model, REVIEW_CANDIDATES)
        ordered = review_order(candidates, limit)
        return {
            "model": model,
            "queued": self.store.queue_length(model),
            "events": [
                {**_event_view(event), "reason": reason, "duplicates": copies}
                for event, reason, copies in ordered
            ],
        }


def review_order(
    candidates: list[tuple[StoredEvent, str]], limit: int
) -> list[tuple[StoredEvent, str, int]]:
    """Urgent reasons first; within a reason, one event per distinct input (with how many
    queued events repeat it) in farthest-first order over the numeric features."""
    ordered: list[tuple[StoredEvent, str, int]] = []
    groups: dict[str, list[StoredEvent]] = {}
    for event, reason in candidates:  # newest first
        groups.setdefault(reason, []).append(event)
    for reason in sorted(groups, key=lambda r: REASON_ORDER.get(r, len(REASON_ORDER))):
        distinct: dict[Any, list[StoredEvent]] = {}
        for event in groups[reason]:
            key = fingerprint(event.payload)
            distinct.setdefault(event.id if key is None else key, []).append(event)
        firsts = [copies[0] for copies in distinct.values()]
        counts = {copies[0].id: len(copies) for copies in distinct.values()}
        for index in farthest_first(_feature_matrix(firsts), limit - len(ordered)):
            ordered.append((firsts[index], reason, counts[firsts[index].id]))
        if len(ordered) >= limit:
            break
    return ordered


def farthest_first(points: np.ndarray, count: int) -> list[int]:
    """Indices of `count` rows of `points`: the first row, then each time the row farthest
    from all chosen so far (ties: the earlier row)."""
    total = len(points)
    if total == 0 or count <= 0:
        return []
    chosen = [0]
    nearest = np.linalg.norm(points - points[0], axis=1)
    while len(chosen) < min(count, total):
        nearest[chosen] = -1.0
        best = int(np.argmax(nearest))
        chosen.append(best)
        nearest = np.minimum(nearest, np.linalg.norm(points - points[best], axis=1))
    return chosen


def _feature_matrix(events: list[StoredEvent]) -> np.ndarray:
    """Each event's numeric features (scalars, and embedding components) as one row, every
    column z-scored over these events; an event without a feature gets its column's mean."""
    columns: dict[str, list[float | None]] = {}
    for row, event in enumerate(events):
        for name, value in (event.payload.get("features") or {}).items():
            values = value if isinstance(value, list) else [value]
            for position, item in enumerate(values):
                if isinstance(item, (int, float)) and not isinstance(item, bool):
                    column = columns.setdefault(f"{name}[{position}]", [None] * len(events))
                    column[row] = float(item)
    if not columns:
        return np.zeros((len(events), 1))
    matrix = np.array(
        [[np.nan if v is None else v for v in column] for column in columns.values()]
    ).T
    means = np.nanmean(matrix, axis=0)
    matrix = np.where(np.isnan(matrix), means, matrix)
    spread = matrix.std(axis=0)
    return (matrix - means) / np.where(spread > 0, spread, 1.0)


def _event_view(event: StoredEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "request_id": event.request_id,
        "ts": event.ts,
        "model": event.model,
        "adapter": event.adapter,
        "modality": event.modality,
        "flags": [f for f in event.flags.split(",") if f],
        **event.payload,
    }
