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
from dataclasses import dataclass, field
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
        self._seen: deque[str] = deque(maxlen=max(windows))
        self._seen_counts: Counter[str] = Counter()
        self.tested = 0
        self.deduplicated = 0

    def update(
        self,
        rows: list[dict[str, Any]],
        timestamps: list[float],
        fingerprints: list[str | None] | None = None,
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
        raised = None
        for i in range(len(contributions)):
            if stream.pending_count == 0:
                stream.pending_ts = timestamps[i]
            stream.pending += contributions[i]
            stream.pending_count += 1
            if stream.pending_count < self.block:
                continue
            stream.blocks.append(stream.pending)
            stream.block_ts.append(stream.pending_ts)
            stream.pending = np.zeros_like(stream.pending)
            stream.pending_count = 0
            if len(stream.blocks) < self.longest:
                continue
            recent = np.asarray(list(stream.blocks)[-self.longest :])
            suffix = np.cumsum(recent[::-1], axis=0)
            sums = np.stack([suffix[span - 1] for span in self.spans])
            stream.scores = np.array(
                [
                    float(stream.statistic.statistic(sums[j], window))
                    for j, window in enumerate(self.windows)
                ]
            )
            crossing = bool(np.any(stream.scores > stream.thresholds))
            if crossing:
                stream.quiet_blocks = 0
                if stream.alarm is None:
                    stream.alarm = self._alarm(stream, timestamps[i])
                    stream.alarms += 1
                    raised = stream.alarm
            elif stream.alarm is not None:
                stream.quiet_blocks += 1
                if stream.quiet_blocks >= self.longest:
                    stream.alarm = None
            if stream.alarm is not None and stream.alarm is not raised:
                stream.alarm.events_since_change += self.block
        return raised

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
                "scores": None if s.scores is None else s.scores.tolist(),
                "thresholds": s.thresholds.tolist(),
                "alarm": s.alarm,
                "alarms": s.alarms,
            }
            for name, s in self.streams.items()
        }
