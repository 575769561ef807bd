"""Ingest: check a batch of events, commit it to the store in one transaction, then feed the
windows, the counters and the capture.

When `Ingestor.ingest` returns, the events are on disk (the daemon answers 200 only then);
what happens after the commit (windows, capture files) may fail without losing an event.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter

from omnitune.monitor.capture import Capture, training_record
from omnitune.monitor.events import Event
from omnitune.monitor.features import event_features
from omnitune.monitor.metrics import CountKey, Counts
from omnitune.monitor.safety import Scanner, redact, scan
from omnitune.monitor.store import Row, Store, StoreFull
from omnitune.monitor.windows import ModelState, fingerprint

logger = logging.getLogger("omnitune.monitor")

#: Event fields about the HTTP call itself, stored in the payload when given.
CALL_FIELDS = ("error_class", "status", "ttft_s", "prompt_tokens", "completion_tokens")

#: Serialises stored payloads in pydantic-core: four times faster than json.dumps per event.
_PAYLOAD = TypeAdapter(dict[str, Any])

#: Input keys that name a media file the capture turns into a training row.
MEDIA_PATH_KEYS = frozenset({"image_path", "audio_path"})


class Rejected(Exception):
    """A request the daemon refuses as a whole; `status` is the HTTP status (4xx, or 503 when
    the store's disk is full: the client should retry later)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


@dataclass
class IngestResult:
    accepted: int
    duplicates: int
    flagged: int
    captured: int


@dataclass
class Ingestor:
    """The write side of the monitor: every event and refused request goes through here."""

    models: dict[str, ModelState]
    store: Store
    counts: Counts
    scanners: list[Scanner]
    capture: Capture | None
    lock: threading.Lock
    #: PII scanners only: they also scrub the strings no safety flag is raised on (labels,
    #: other input fields, categorical features), so no stored string keeps PII.
    pii_scanners: list[Scanner] = field(init=False)

    def __post_init__(self) -> None:
        self.pii_scanners = [s for s in self.scanners if s.name == "pii"]

    def check(self, events: list[Event]) -> None:
        """Refuse the whole batch (nothing stored) when an event names an unknown model or a
        modality other than its model's."""
        for index, event in enumerate(events):
            state = self.models.get(event.model)
            if state is None:
                known = ", ".join(sorted(self.models))
                raise Rejected(
                    422,
                    "unknown_model",
                    f"event {index}: unknown model {event.model!r} (declared: {known})",
                )
            if event.modality is not None and event.modality != state.section.modality:
                raise Rejected(
                    422,
                    "wrong_modality",
                    f"event {index}: modality {event.modality!r}, but model {event.model!r} "
                    f"is declared {state.section.modality!r}",
                )

    def ingest(self, events: list[Event], meta: dict[str, str] | None = None) -> IngestResult:
        """Store `events` in one transaction, then update windows and counters.

        When this returns, the events are committed; a repeated `request_id` is skipped and
        counted as a duplicate."""
        self.check(events)
        arrival = time.time()
        prepared = [self._prepare(event, arrival) for event in events]
        rows: list[Row] = [p[0] for p in prepared]

        def deltas(fresh: list[bool]) -> dict[CountKey, float]:
            counted: dict[CountKey, float] = {}
            for new, (row, _, flags, _) in zip(fresh, prepared, strict=True):
                if not new:
                    continue
                _, _, model, adapter, modality, latency, _, _ = row
                key = ("events", (model, adapter, modality))
                counted[key] = counted.get(key, 0.0) + 1
                for category, side in flags:
                    flag_key = ("safety_flags", (model, category, side))
                    counted[flag_key] = counted.get(flag_key, 0.0) + 1
                if latency is not None:
                    self.counts.latency_deltas(counted, model, adapter, latency)
            for new, event in zip(fresh, events, strict=True):
                if new and event.error:
                    key = ("event_errors", (event.model, event.adapter))
                    counted[key] = counted.get(key, 0.0) + 1
                if new and event.error_class is not None:
                    key = ("call_errors", (event.model, event.adapter, event.error_class))
                    counted[key] = counted.get(key, 0.0) + 1
                if new and event.ttft_s is not None:
                    self.counts.latency_deltas(
                        counted, event.model, event.adapter, event.ttft_s, kind="ttft"
                    )
            pending.update(counted)
            return counted

        pending: dict[CountKey, float] = {}
        try:
            fresh = self.store.commit(rows, deltas, meta)
        except StoreFull as exc:
            raise Rejected(
                503,
                "store_full",
                f"the event store's disk is full ({exc}): these events were not stored; send "
                "them again once space is freed",
            ) from None
        self.counts.add(pending)
        captured = self._after_commit(prepared, fresh)
        return IngestResult(
            accepted=sum(fresh),
            duplicates=len(fresh) - sum(fresh),
            flagged=sum(1 for new, p in zip(fresh, prepared, strict=True) if new and p[2]),
            captured=captured,
        )

    def _stored(self, key: str, value: Any, text_in: str, clean: str) -> Any:
        """One field of a dict input as stored: the input text redacted as scanned, other
        strings scrubbed, media paths as given (file names, not user text: a content hash can
        look like a card number, and a redacted path names no file)."""
        if key in MEDIA_PATH_KEYS:
            return value
        if isinstance(value, str) and value == text_in:
            return clean
        return self.scrub(value)

    def _prepare(
        self, event: Event, arrival: float
    ) -> tuple[Row, dict[str, Any], tuple[tuple[str, str], ...], dict[str, Any]]:
        state = self.models[event.model]
        modality = state.section.modality
        features = self.scrub(event_features(event, modality))
        text_in = event.input_text()
        found_in = scan(text_in, self.scanners, "input")
        found_out = scan(event.output or "", self.scanners, "output")
        flags: tuple[tuple[str, str], ...] = ()
        if found_in or found_out:
            flags = tuple(
                sorted(
                    {(f.category, "input") for f in found_in}
                    | {(f.category, "output") for f in found_out}
                )
            )
        clean = redact(text_in, found_in) if found_in else text_in
        stored_input: Any = event.input
        if isinstance(event.input, dict):
            stored_input = {k: self._stored(k, v, text_in, clean) for k, v in event.input.items()}
        elif found_in:
            stored_input = clean
        output = redact(event.output, found_out) if event.output and found_out else event.output
        kept = {k: v for k, v in features.items() if k in state.features}
        payload = {
            "input": stored_input,
            "output": output,
            "label": self.scrub(event.label),
            "features": kept,
            "error": event.error,
        }
        for name in CALL_FIELDS:  # what a proxy saw of the call, when it says
            value = getattr(event, name)
            if value is not None:
                payload[name] = value
        row: Row = (
            event.request_id,
            event.ts if event.ts is not None else arrival,
            event.model,
            event.adapter,
            modality,
            event.latency_s,
            ",".join(f"{c}@{s}" for c, s in flags) if flags else "",
            _PAYLOAD.dump_json(payload).decode(),
        )
        return row, payload, flags, kept

    def scrub(self, value: Any) -> Any:
        """`value` with PII in every string inside it replaced by `[CATEGORY]`."""
        if not self.pii_scanners:
            return value
        if isinstance(value, str):
            return redact(value, scan(value, self.pii_scanners, "input"))
        if isinstance(value, dict):
            return {key: self.scrub(item) for key, item in value.items()}
        if isinstance(value, list) and value and isinstance(value[0], str):
            return [self.scrub(item) for item in value]
        return value

    def _after_commit(self, prepared: list[Any], fresh: list[bool]) -> int:
        captures: dict[str, list[dict[str, Any]]] = {}
        capture_counts: dict[CountKey, float] = {}
        online: dict[str, tuple[list[dict[str, Any]], list[float], list[int | None]]] = {}
        review: list[tuple[str, str, str, float]] = []  # flagged or captured: to be labelled
        with self.lock:
            for new, (row, payload, flags, kept) in zip(fresh, prepared, strict=True):
                if not new:
                    continue
                request_id, ts, model, adapter, modality, latency, _, _ = row
                state = self.models[model]
                state.observe(kept, latency, adapter, flags)
                if state.sequential is not None:
                    batch = online.setdefault(model, ([], [], []))
                    batch[0].append(kept)
                    batch[1].append(ts)
                    batch[2].append(fingerprint(payload))
                if flags and request_id is not None:
                    review.append((request_id, model, "safety", ts))
                if self.capture is None:
                    continue
                reason = self.capture.reasons(bool(flags), state.drifting)
                if reason is None:
                    continue
                meta = {"reason": reason, "ts": ts, "adapter": adapter, "request_id": request_id}
                record = training_record(modality, payload, meta)
                if record is None or not self.capture.take(model):
                    continue
                captures.setdefault(model, []).append(record)
                if not flags and request_id is not None:
                    review.append((request_id, model, reason, ts))
                key = ("captured", (model, reason))
                capture_counts[key] = capture_counts.get(key, 0.0) + 1
            for model, (rows, stamps, marks) in online.items():
                self.models[model].sequential.update(rows, stamps, marks)
            if self.capture is not None:
                for model, records in captures.items():
                    try:
                        self.capture.write(model, records)
                    except OSError as exc:  # the events are committed: answer 200 anyway
                        logger.warning("capture of %s events failed: %s", model, exc)
                        for key in [k for k in capture_counts if k[1][0] == model]:
                            del capture_counts[key]
        if capture_counts:
            self.commit_counts(capture_counts)
        self._queue_for_review(review)
        return int(sum(capture_counts.values()))

    def _queue_for_review(self, rows: list[tuple[str, str, str, float]]) -> None:
        """Put flagged and captured events on the review queue (GET /v1/review). The events
        are committed already: a queue write that fails is logged, and the request succeeds."""
        try:
            self.store.add_to_review(rows)
        except sqlite3.Error as exc:
            logger.warning("could not queue %d events for review: %s", len(rows), exc)

    def reject(self, reason: str) -> None:
        """Count a refused request (kept across restarts like every counter)."""
        self.commit_counts({("rejected", (reason,)): 1.0})

    def commit_counts(self, delta: dict[CountKey, float]) -> None:
        """Add counter deltas, durably when the disk allows (on a full disk, in memory only:
        the request that caused them was answered already)."""
        try:
            self.store.commit([], lambda _: delta)
        except StoreFull:
            logger.warning("disk full: counters %s kept in memory only", sorted(delta))
        self.counts.add(delta)
