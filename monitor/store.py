"""The daemon's durable state: events, counters and tail offsets in one SQLite file (WAL mode).

A request's events, the counter increments they cause and (for tailed logs) the new file
offset are written in one transaction, and the daemon answers 2xx only after it commits. WAL
with `synchronous=NORMAL` survives the daemon being killed at any point (the committed WAL
frames are in the OS's page cache); `fsync: true` in the config sets `synchronous=FULL`, which
also survives losing power, at a cost per request.
"""

from __future__ import annotations

import contextlib
import errno
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omnitune.core.errors import OmnituneError

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    request_id TEXT UNIQUE,
    ts REAL NOT NULL,
    model TEXT NOT NULL,
    adapter TEXT NOT NULL,
    modality TEXT NOT NULL,
    latency_s REAL,
    flags TEXT NOT NULL,
    payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT NOT NULL,
    labels TEXT NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (name, labels)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS labels (
    request_id TEXT NOT NULL,
    annotator TEXT NOT NULL,
    source TEXT NOT NULL,
    ts REAL NOT NULL,
    score REAL,
    correction TEXT,
    comment TEXT,
    PRIMARY KEY (request_id, annotator)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS review (
    request_id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    reason TEXT NOT NULL,
    ts REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS review_model ON review (model, ts);
"""

#: A label's stored fields, after its (request_id, annotator) key.
LABEL_FIELDS = ("source", "ts", "score", "correction", "comment")

COLUMNS = [
    *("id", "request_id", "ts", "model", "adapter", "modality", "latency_s", "flags", "payload")
]
#: Retention's filter: an event someone labelled stays (see `enforce_retention`).
_UNLABELLED = "NOT EXISTS (SELECT 1 FROM labels l WHERE l.request_id = events.request_id)"
#: The WAL file is cut back to this size after a checkpoint (it only grows otherwise).
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024
_SQLITE_FULL = 13


class StoreError(OmnituneError):
    """The store file cannot be used: not SQLite, another program's database, or damaged."""


class StoreFull(Exception):
    """A write failed for lack of disk space; nothing of it was committed."""


def is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorcode", None) == _SQLITE_FULL or "disk is full" in str(exc)
    return isinstance(exc, OSError) and exc.errno == errno.ENOSPC


#: (request_id, ts, model, adapter, modality, latency_s, flags, payload JSON)
Row = tuple[str | None, float, str, str, str, float | None, str, str]
CounterKey = tuple[str, tuple[str, ...]]
CounterDeltas = Mapping[CounterKey, float]


@dataclass(frozen=True)
class StoredEvent:
    id: int
    request_id: str | None
    ts: float
    model: str
    adapter: str
    modality: str
    latency_s: float | None
    flags: str
    payload: dict[str, Any]


class Store:
    def __init__(self, path: Path, fsync: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            # Identify the file before writing anything to it: another program's database is
            # refused untouched.
            tables = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master")}
            columns = [row[1] for row in self._db.execute("PRAGMA table_info(events)")]
            if tables and columns != COLUMNS:
                found = f"columns {', '.join(columns)}" if columns else "no 'events' table"
                problem = f"it holds {', '.join(sorted(tables))}: {found}"
                self._db.close()
                raise StoreError(unusable(path, problem))
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
            self._db.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
            self._db.executescript(SCHEMA)
            # Kept in memory: count(*) scans the whole table, which at millions of rows costs
            # tens of milliseconds under the lock that ingest needs.
            self._count = self._db.execute("SELECT count(*) FROM events").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise StoreError(unusable(path, str(exc))) from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def commit(
        self,
        rows: list[Row],
        counters: Callable[[list[bool]], Mapping[CounterKey, float]] | None = None,
        meta: Mapping[str, str] | None = None,
    ) -> list[bool]:
        """Insert `rows` (a repeated request_id is skipped), add counter deltas and set `meta`,
        in one transaction.

        Returns, per row, whether it was new. `counters` is called inside the transaction with
        that list and returns the deltas to add, so counts follow the new rows only."""
        with self._transaction() as db:
            fresh = self._insert(rows)
            self._add_counters(counters(fresh) if counters else {})
            if meta:
                db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", meta.items())
        with self._lock:
            self._count += sum(fresh)
        return fresh

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction under the store's lock: committed when the block ends,
        rolled back if it raises (a full disk as `StoreFull`: nothing of it was kept)."""
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException as exc:
                # SQLite may have rolled back already (it does on a full disk).
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                if is_disk_full(exc):
                    raise StoreFull(str(exc)) from None
                raise

    def _add_counters(self, deltas: CounterDeltas) -> None:
        """Add counter deltas inside the caller's transaction."""
        if deltas:
            self._db.executemany(
                "INSERT INTO counters VALUES (?, ?, ?) ON CONFLICT (name, labels) "
                "DO UPDATE SET value = value + excluded.value",
                [(n, json.dumps(lab), v) for (n, lab), v in deltas.items()],
            )

    def _insert(self, rows: list[Row]) -> list[bool]:
        ids = [row[0] for row in rows if row[0] is not None]
        if not ids:
            self._db.executemany("INSERT INTO events VALUES (NULL, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            return [True] * len(rows)
        seen = self._existing(ids)
        fresh = []
        batch = []
        for row in rows:
            new = row[0] is None or row[0] not in seen
            if row[0] is not None:
                seen.add(row[0])  # a request_id repeated inside one batch counts once
            fresh.append(new)
            if new:
                batch.append(row)
        self._db.executemany("INSERT INTO events VALUES (NULL, ?, ?, ?, ?, ?, ?, ?, ?)", batch)
        return fresh

    def _existing(self, ids: list[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            query = f"SELECT request_id FROM events WHERE request_id IN ({marks})"
            found.update(r[0] for r in self._db.execute(query, chunk))
        return found

    def counters(self) -> dict[CounterKey, float]:
        with self._lock:
            rows = self._db.execute("SELECT name, labels, value FROM counters").fetchall()
        return {(name, tuple(json.loads(labels))): value for name, labels, value in rows}

    def meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def recent(self, model: str, limit: int) -> list[StoredEvent]:
        """The newest `limit` events of `model`, oldest first (to rebuild windows)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, request_id, ts, model, adapter, modality, latency_s, flags, payload "
                "FROM events "
                "WHERE model = ? ORDER BY id DESC LIMIT ?",
                (model, limit),
            ).fetchall()
        return [_stored(row) for row in reversed(rows)]

    def events(
        self,
        since: float | None = None,
        after_id: int | None = None,
        model: str | None = None,
        flagged: bool = False,
        limit: int = 500,
        latest: bool = False,
        labelled: bool = False,
    ) -> list[StoredEvent]:
        """Events matching the filters, oldest first (the dashboard's feed); with `latest`, the
        newest `limit` of them."""
        clauses, args = [], []
        if since is not None:
            clauses.append("ts >= ?")
            args.append(since)
        if after_id is not None:
            clauses.append("id > ?")
            args.append(after_id)
        if model is not None:
            clauses.append("model = ?")
            args.append(model)
        if flagged:
            clauses.append("flags != ''")
        if labelled:
            clauses.append("request_id IN (SELECT request_id FROM labels)")
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        query = (
            "SELECT id, request_id, ts, model, adapter, modality, latency_s, flags, payload "
            "FROM events "
            f"{where} ORDER BY id {'DESC' if latest else 'ASC'} LIMIT ?"
        )
        with self._lock:
            rows = self._db.execute(query, [*args, limit]).fetchall()
        return [_stored(row) for row in (reversed(rows) if latest else rows)]

    def count(self) -> int:
        return self._count

    # Labels and the review queue ------------------------------------------------------------

    def event(self, request_id: str) -> StoredEvent | None:
        """The stored event with `request_id`, if any."""
        with self._lock:
            row = self._db.execute(
                f"SELECT {', '.join(COLUMNS)} FROM events WHERE request_id = ?", (request_id,)
            ).fetchone()
        return _stored(row) if row else None

    def put_label(
        self, request_id: str, annotator: str, label: Mapping[str, Any], counters: CounterDeltas
    ) -> str:
        """Store `annotator`'s label of `request_id` (LABEL_FIELDS) and, when it is the first
        from that annotator, add `counters`, in one transaction. Returns "stored", "updated"
        (a different label from the same annotator replaces the old one) or "unchanged" (the
        same label again: a retried request)."""
        values = tuple(label[name] for name in LABEL_FIELDS)
        with self._transaction() as db:
            old = db.execute(
                f"SELECT {', '.join(LABEL_FIELDS)} FROM labels "
                "WHERE request_id = ? AND annotator = ?",
                (request_id, annotator),
            ).fetchone()
            outcome = "stored" if old is None else "updated"
            if old is not None and _same_label(old, values):
                outcome = "unchanged"
            if outcome != "unchanged":
                db.execute(
                    "INSERT OR REPLACE INTO labels VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (request_id, annotator, *values),
                )
            if outcome == "stored":
                self._add_counters(counters)
        return outcome

    def labels(self, request_ids: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
        """Every label of each of `request_ids`, oldest first."""
        ids = [i for i in dict.fromkeys(request_ids) if i]
        found: dict[str, list[dict[str, Any]]] = {}
        with self._lock:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                rows = self._db.execute(
                    f"SELECT request_id, annotator, {', '.join(LABEL_FIELDS)} FROM labels "
                    f"WHERE request_id IN ({','.join('?' * len(chunk))}) ORDER BY ts",
                    chunk,
                ).fetchall()
                for request_id, annotator, *values in rows:
                    label = {"annotator": annotator, **dict(zip(LABEL_FIELDS, values, strict=True))}
                    found.setdefault(request_id, []).append(label)
        return found

    def review_reasons(self, request_ids: Iterable[str]) -> dict[str, str]:
        """Why each of `request_ids` was queued for review (safety, drift), where it was."""
        ids = [i for i in dict.fromkeys(request_ids) if i]
        found: dict[str, str] = {}
        with self._lock:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                found.update(
                    self._db.execute(
                        "SELECT request_id, reason FROM review "
                        f"WHERE request_id IN ({','.join('?' * len(chunk))})",
                        chunk,
                    ).fetchall()
                )
        return found

    def add_to_review(self, rows: list[tuple[str, str, str, float]]) -> None:
        """Queue (request_id, model, reason, ts) rows for review; a queued id stays as it is."""
        if not rows:
            return
        with self._transaction() as db:
            db.executemany("INSERT OR IGNORE INTO review VALUES (?, ?, ?, ?)", rows)

    def unlabelled(self, model: str, limit: int) -> list[tuple[StoredEvent, str]]:
        """The newest `limit` queued events of `model` that nobody has labelled yet, with why
        each was queued, newest first."""
        columns = ", ".join(f"e.{c}" for c in COLUMNS)
        with self._lock:
            rows = self._db.execute(
                f"SELECT {columns}, r.reason FROM review r "
                "JOIN events e ON e.request_id = r.request_id "
                "WHERE r.model = ? AND NOT EXISTS "
                "(SELECT 1 FROM labels l WHERE l.request_id = r.request_id) "
                "ORDER BY r.ts DESC, e.id DESC LIMIT ?",
                (model, limit),
            ).fetchall()
        return [(_stored(row[:-1]), row[-1]) for row in rows]

    def by_adapter(self, model: str, since: float, latencies: int = 5000) -> dict[str, dict]:
        """Per adapter version of `model`, over the events since `since`: how many, how many
        failed or were flagged, the newest `latencies` latencies, and the feedback on them
        (count and mean score): what a champion and its canary are compared on."""
        with self._lock:
            rows = self._db.execute(
                "SELECT adapter, count(*), sum(flags != ''), "
                "sum(coalesce(json_extract(payload, '$.error'), 0)) "
                "FROM events WHERE model = ? AND ts >= ? GROUP BY adapter",
                (model, since),
            ).fetchall()
            summary = {
                adapter: {"events": n, "flagged": int(flagged or 0), "errors": int(errors or 0)}
                for adapter, n, flagged, errors in rows
            }
            for adapter, entry in summary.items():
                entry["latencies"] = [
                    value
                    for (value,) in self._db.execute(
                        "SELECT latency_s FROM events WHERE model = ? AND adapter = ? AND ts >= ? "
                        "AND latency_s IS NOT NULL ORDER BY id DESC LIMIT ?",
                        (model, adapter, since, latencies),
                    )
                ]
                count, mean = self._db.execute(
                    "SELECT count(l.score), avg(l.score) FROM labels l JOIN events e "
                    "ON e.request_id = l.request_id "
                    "WHERE e.model = ? AND e.adapter = ? AND e.ts >= ? AND l.score IS NOT NULL",
                    (model, adapter, since),
                ).fetchone()
                entry["feedback"] = {"count": count, "mean_score": mean}
        return summary

    def queue_length(self, model: str) -> int:
        """How many queued events of `model` are still unlabelled (and still stored)."""
        with self._lock:
            return self._db.execute(
                "SELECT count(*) FROM review r JOIN events e ON e.request_id = r.request_id "
                "WHERE r.model = ? AND NOT EXISTS "
                "(SELECT 1 FROM labels l WHERE l.request_id = r.request_id)",
                (model,),
            ).fetchone()[0]

    def enforce_retention(
        self, max_age_s: float | None, max_events: int | None, now: float | None = None
    ) -> int:
        """Delete events older than `max_age_s` and the oldest beyond `max_events`.

        Labelled events are kept whatever their age: a label is someone's work, and
        `omnitune monitor export` needs the event's input beside it.
        """
        deleted = 0
        with self._lock:
            if max_age_s is not None:
                cutoff = (now or time.time()) - max_age_s
                deleted += self._db.execute(
                    f"DELETE FROM events WHERE ts < ? AND {_UNLABELLED}", (cutoff,)
                ).rowcount
            if max_events is not None:
                row = self._db.execute("SELECT max(id) FROM events").fetchone()
                if row[0] is not None:
                    deleted += self._db.execute(
                        f"DELETE FROM events WHERE id <= ? AND {_UNLABELLED}",
                        (row[0] - max_events,),
                    ).rowcount
            if deleted:
                # The queue joins its events, so a queued id whose event is gone would never
                # show again; left in place it would only grow the file. Labels stay: they are
                # people's work, and retention keeps the events they label for the export.
                self._db.execute(
                    "DELETE FROM review WHERE NOT EXISTS "
                    "(SELECT 1 FROM events e WHERE e.request_id = review.request_id)"
                )
                self._count -= deleted
                self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        return deleted


def unusable(path: Path, problem: str) -> str:
    return (
        f"store.path {path}: not an omnitune event store, or a damaged one ({problem}). Move "
        "it aside to start a new store, or restore it from a backup"
    )


def _same_label(old: Iterable[Any], new: Iterable[Any]) -> bool:
    """Whether two labels (values in LABEL_FIELDS order) say the same, their time aside."""

    def said(values: Iterable[Any]) -> dict[str, Any]:
        return {k: v for k, v in zip(LABEL_FIELDS, values, strict=True) if k != "ts"}

    return said(old) == said(new)


def _stored(row: Iterable[Any]) -> StoredEvent:
    id_, request_id, ts, model, adapter, modality, latency, flags, payload = row
    return StoredEvent(
        id_, request_id, ts, model, adapter, modality, latency, flags, json.loads(payload)
    )
