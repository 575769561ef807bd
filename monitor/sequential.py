"""A model's sequential drift detector: every event updates it, alarms keep a stated ERT.

Each tracked feature is a stream of blocks of `block` events (the feature's online statistic
from `detectors.ONLINE_DETECTORS` sums each block's contributions). When a block completes, the
statistic of every window (the last `w` events, for each configured window size) is compared
with its calibrated threshold (`calibration.calibrate`); a crossing latches the feature's alarm,
which clears after one largest window without a crossing. At the alarm the change point is
estimated (the segment start that maximises the statistic's change score over the recent
blocks), so each alarm carries its detection delay in events and seconds.

Repeated inputs are the usual way traffic breaks the independence the thresholds assume (one
user's session, a retry storm): with `dedupe`, an event whose fingerprint was seen within the
largest window is not tested (it is stored and counted as usual).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Hashable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from omnitune.monitor.detectors import OnlineStatistic

#: blocks kept per feature for the change-point estimate, in largest windows.
HISTORY_WINDOWS = 4


@dataclass
class FeatureAlarm:
    """A feature's latched alarm: when it fired and the estimated change before it."""

    since_ts: float
    delay_events: int
    delay_s: float
    events_since_change: int
    #: the statistic and threshold of the window that crossed when the alarm fired (the alarm
    #: stays latched while later windows fall back under their thresholds)
    score: float = float("nan")
    threshold: float = float("nan")


@dataclass
class _Stream:
    statistic: OnlineStatistic
    thresholds: np.ndarray
    pending: np.ndarray
    pending_count: int = 0
    pending_ts: float = 0.0
    blocks: deque[np.ndarray] = field(default_factory=deque)
    block_ts: deque[float] = field(default_factory=deque)
    scores: np.ndarray | None = None
    quiet_blocks: int = 0
    alarm: FeatureAlarm | None = None
    alarms: int = 0
    seen_blocks: int = 0


class SequentialDrift:
    def __init__(
        self,
        statistics: dict[str, OnlineStatistic],
        thresholds: dict[str, list[float]],
        windows: list[int],
        block: int,
        dedupe: bool = True,
    ) -> None:
        self.windows = list(windows)
        self.block = block
        self.spans = [w // block for w in windows]
        self.longest = max(self.spans)
        self.dedupe = dedupe
        self.streams = {
            name: _Stream(
                statistic,
                np.asarray(thresholds[name], dtype=np.float64),
                np.zeros(statistic.width),
                blocks=deque(maxlen=HISTORY_WINDOWS * self.longest),
                block_ts=deque(maxlen=HISTORY_WINDOWS * self.longest),
            )
            for name, statistic in statistics.items()
        }
        self._seen: deque[Hashable] = deque(maxlen=max(windows))
        self._seen_counts: Counter[Hashable] = Counter()
        self.tested = 0
        self.deduplicated = 0

    def update(
        self,
        rows: list[dict[str, Any]],
        timestamps: list[float],
        fingerprints: list[Hashable | None] | None = None,
    ) -> list[tuple[str, FeatureAlarm]]:
        """Feed events (feature dicts, in arrival order); returns the alarms they raised."""
        kept: list[int] = []
        for i in range(len(rows)):
            mark = fingerprints[i] if fingerprints is not None and self.dedupe else None
            if mark is not None:
                if self._seen_counts[mark]:
                    self.deduplicated += 1
                    continue
                if len(self._seen) == self._seen.maxlen:
                    old = self._seen[0]
                    self._seen_counts[old] -= 1
                    if not self._seen_counts[old]:
                        del self._seen_counts[old]
                self._seen.append(mark)
                self._seen_counts[mark] += 1
            kept.append(i)
        self.tested += len(kept)
        raised = []
        for name, stream in self.streams.items():
            present = [i for i in kept if rows[i].get(name) is not None]
            if not present:
                continue
            values = [rows[i][name] for i in present]
            try:
                contributions = stream.statistic.contributions(values)
            except (ValueError, TypeError):  # e.g. an embedding of another length: not tested
                continue
            alarm = self._advance(stream, contributions, [timestamps[i] for i in present])
            if alarm is not None:
                raised.append((name, alarm))
        return raised

    def _advance(
        self, stream: _Stream, contributions: np.ndarray, timestamps: list[float]
    ) -> FeatureAlarm | None:
        """Add events to the open block; score every block they complete (all windows of all
        new blocks in one vectorised call), then latch or clear the alarm block by block."""
        count = len(contributions)
        if count == 0:
            return None
        if stream.pending_count == 0:
            stream.pending_ts = timestamps[0]
        done = (stream.pending_count + count) // self.block
        if done == 0:
            stream.pending += contributions.sum(axis=0)
            stream.pending_count += count
            return None
        # Block j of those completed now ends at event ends[j] - 1 of this batch.
        ends = np.arange(1, done + 1) * self.block - stream.pending_count
        running = np.concatenate(
            [np.zeros((1, stream.statistic.width)), np.cumsum(contributions, axis=0)]
        )
        starts = np.concatenate([[0], ends[:-1]])
        new_blocks = running[ends] - running[starts]
        new_blocks[0] += stream.pending
        starts_ts = [stream.pending_ts, *(timestamps[e] for e in ends[:-1])]
        rest = int(ends[-1])
        stream.pending = running[count] - running[rest]
        stream.pending_count = count - rest
        if stream.pending_count:
            stream.pending_ts = timestamps[rest]
        scores = self._window_scores(stream, new_blocks)
        crossings = (scores > stream.thresholds).any(axis=1).tolist()
        full = (stream.seen_blocks + np.arange(1, done + 1) >= self.longest).tolist()
        raised = None
        for j in range(done):
            stream.blocks.append(new_blocks[j])
            stream.block_ts.append(starts_ts[j])
            stream.seen_blocks += 1
            if not full[j]:
                continue
            stream.scores = scores[j]
            if crossings[j]:
                stream.quiet_blocks = 0
                if stream.alarm is None:
                    crossed = int(np.argmax(scores[j] / stream.thresholds))
                    stream.alarm = self._alarm(stream, timestamps[int(ends[j]) - 1])
                    stream.alarm.score = float(scores[j][crossed])
                    stream.alarm.threshold = float(stream.thresholds[crossed])
                    stream.alarms += 1
                    raised = stream.alarm
                    continue
            elif stream.alarm is not None:
                stream.quiet_blocks += 1
                if stream.quiet_blocks >= self.longest:
                    stream.alarm = None
            if stream.alarm is not None:
                stream.alarm.events_since_change += self.block
        return raised

    def _window_scores(self, stream: _Stream, new_blocks: np.ndarray) -> np.ndarray:
        """Each window's statistic (columns) at each new block (rows); rows before the largest
        window is full are not tested."""
        width = stream.statistic.width
        history = list(stream.blocks)[-(self.longest - 1) :] if self.longest > 1 else []
        combined = np.concatenate([np.asarray(history).reshape(-1, width), new_blocks])
        running = np.concatenate([np.zeros((1, width)), np.cumsum(combined, axis=0)])
        positions = np.arange(len(history), len(combined)) + 1  # prefix length at each block
        per_window = []
        for span, window in zip(self.spans, self.windows, strict=True):
            low = np.maximum(positions - span, 0)
            per_window.append(stream.statistic.statistic(running[positions] - running[low], window))
        return np.stack(per_window, axis=1)

    def _alarm(self, stream: _Stream, now: float) -> FeatureAlarm:
        history = np.asarray(stream.blocks)
        suffix = np.cumsum(history[::-1], axis=0)  # row k: the newest k + 1 blocks
        counts = (np.arange(len(history)) + 1.0) * self.block
        start = int(np.argmax(stream.statistic.change_score(suffix, counts)))
        delay_events = (start + 1) * self.block
        first_ts = stream.block_ts[len(history) - 1 - start]
        return FeatureAlarm(now, delay_events, max(0.0, now - first_ts), delay_events)

    def state(self) -> dict[str, dict[str, Any]]:
        """Per feature: the windows' latest statistics and thresholds, and the alarm if any."""
        return {
            name: {
                "test": s.statistic.test,
                "scores": None if s.scores is None else s.scores.tolist(),
                "thresholds": s.thresholds.tolist(),
                "alarm": None if s.alarm is None else replace(s.alarm),
                "alarms": s.alarms,
            }
            for name, s in self.streams.items()
        }
