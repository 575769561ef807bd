"""Ingesting a JSONL log file as it grows, for services that cannot call HTTP.

The offset of the last ingested line is committed in the same transaction as the events it
covers, so a restart neither loses nor repeats lines. A file that shrinks or is replaced (log
rotation: a new inode) is read again from its start. Lines that are not valid events are
counted under `omnitune_rejected_requests_total{reason="tail_invalid"}` and skipped.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from pydantic import ValidationError

from omnitune.monitor.engine import Monitor
from omnitune.monitor.events import Event
from omnitune.monitor.ingest import Rejected

logger = logging.getLogger("omnitune.monitor")

#: Lines ingested per transaction.
BATCH_LINES = 2000


class Tailer:
    def __init__(self, monitor: Monitor, path: Path) -> None:
        self.monitor = monitor
        self.path = path
        self.key = f"tail:{path.resolve()}"

    def _position(self) -> tuple[int, int]:
        saved = self.monitor.store.meta(self.key)
        if not saved:
            return 0, 0
        inode, offset = saved.split(":")
        return int(inode), int(offset)

    def poll(self) -> int:
        """Ingest the complete lines added since the last poll; returns how many events."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return 0
        inode, offset = self._position()
        if inode != stat.st_ino or stat.st_size < offset:
            offset = 0  # rotated or truncated: the file is new to us
        if stat.st_size == offset:
            return 0
        ingested = 0
        with self.path.open("rb") as handle:
            handle.seek(offset)
            while True:
                lines = handle.readlines(BATCH_LINES * 512)
                complete = [line for line in lines if line.endswith(b"\n")]
                if not complete:
                    break
                offset += sum(len(line) for line in complete)
                ingested += self._ingest(complete, f"{stat.st_ino}:{offset}")
                if len(complete) < len(lines):
                    break  # a partial last line: read it when it is finished
        return ingested

    def _ingest(self, lines: list[bytes], position: str) -> int:
        events, bad = [], 0
        for line in lines:
            if not line.strip():
                continue
            try:
                event = Event.model_validate_json(line)
                self.monitor.check([event])
            except (ValidationError, Rejected):
                bad += 1
                continue
            events.append(event)
        for _ in range(bad):
            self.monitor.reject("tail_invalid")
        self.monitor.ingest(events, meta={self.key: position})
        return len(events)


class TailThread(threading.Thread):
    def __init__(self, monitor: Monitor, paths: list[Path], poll_s: float) -> None:
        super().__init__(name="omnitune-tail", daemon=True)
        self.tailers = [Tailer(monitor, path) for path in paths]
        self.poll_s = poll_s
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            for tailer in self.tailers:
                try:
                    tailer.poll()
                except Exception:
                    logger.exception("tailing %s failed; retrying", tailer.path)
            self.stopping.wait(self.poll_s)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=10)
