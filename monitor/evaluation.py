"""Evaluation: run each model's drift, latency and safety checks on a snapshot of its windows,
set the gauges and keep the active alerts (one per model, kind and subject).

Runs on the daemon's evaluation thread; the windows are copied under the monitor's lock, the
tests run outside it, so ingest never waits for a detector.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from omnitune.monitor import detectors
from omnitune.monitor.config import MonitorConfig
from omnitune.monitor.drift_results import sequential_results, windowed_results
from omnitune.monitor.metrics import Gauges
from omnitune.monitor.store import Store
from omnitune.monitor.windows import ModelState

QUANTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}

AlertKey = tuple[str, str, str]


@dataclass
class Evaluator:
    """Runs the checks and owns the alerts (`alerts`, keyed by model, kind and subject)."""

    config: MonitorConfig
    models: dict[str, ModelState]
    store: Store
    gauges: Gauges
    lock: threading.Lock
    alerts: dict[AlertKey, dict[str, Any]] = field(default_factory=dict)
    evaluated_at: float | None = None

    def evaluate(self) -> None:
        """Run every model's detectors on its window and refresh gauges and alerts."""
        now = time.time()
        for state in self.models.values():
            with self.lock:
                snapshot = {name: list(values) for name, values in state.features.items()}
                latencies = {a: np.asarray(v) for a, v in state.latencies.items()}
                flags = list(state.flags)
                state.new_events = 0
            self._evaluate_drift(state, snapshot, now)
            self._evaluate_latency(state, latencies, now)
            self._evaluate_safety(state, flags, now)
            self.gauges.window_events.labels(state.name).set(len(flags))
        self.gauges.stored_events.set(self.store.count())
        for model in self.models:
            self.gauges.review_queue.labels(model).set(self.store.queue_length(model))
        for model in self.models:
            for kind in ("drift", "safety", "latency"):
                active = sum(1 for k in self.alerts if k[0] == model and k[1] == kind)
                self.gauges.alerts.labels(model, kind).set(active)
        self.evaluated_at = now

    def _evaluate_drift(
        self, state: ModelState, snapshot: dict[str, list[Any]], now: float
    ) -> None:
        if state.reference is None:
            return
        cfg = self.config.drift
        if state.sequential is not None:
            with self.lock:
                online = state.sequential.state()
            results, deciding = sequential_results(state, online, snapshot, cfg)
        else:
            min_events = self.config.window.min_events
            results, deciding = windowed_results(state, snapshot, cfg, min_events)
        with self.lock:
            state.results = results
            state.decisions = deciding
            if deciding:
                state.history.append((now, deciding))
            for name, result in deciding.items():
                if result.drifted:
                    state.drift_since.setdefault(name, now)
                else:
                    state.drift_since.pop(name, None)
        for name, tests in results.items():
            for test, result in tests.items():
                self.gauges.drift_score.labels(state.name, name, test).set(result.score)
                self.gauges.drift_threshold.labels(state.name, name, test).set(result.threshold)
            decided = deciding[name]
            self.gauges.drift_detected.labels(state.name, name).set(int(decided.drifted))
            self.gauges.drift_warning.labels(state.name, name).set(int(decided.warning))
            self._delay_gauges(state.name, name, decided)
            self._alert(
                (state.name, "drift", name),
                decided.drifted,
                now,
                drift_message(name, decided),
                decided.score,
                decided.threshold,
            )

    def _delay_gauges(self, model: str, feature: str, result: detectors.DriftResult) -> None:
        """Detection delay while a sequential alarm is latched; no series otherwise."""
        pairs = (
            (self.gauges.drift_delay_events, result.delay_events),
            (self.gauges.drift_delay_seconds, result.delay_s),
        )
        for gauge, value in pairs:
            if value is None:
                with contextlib.suppress(KeyError):
                    gauge.remove(model, feature)
            else:
                gauge.labels(model, feature).set(value)

    def _evaluate_latency(
        self, state: ModelState, latencies: dict[str, np.ndarray], now: float
    ) -> None:
        slo = self.config.latency
        for adapter, values in latencies.items():
            if not len(values):
                continue
            for label, q in QUANTILES.items():
                self.gauges.latency_window.labels(state.name, adapter, label).set(
                    float(np.quantile(values, q))
                )
            if slo.slo_seconds is None:
                continue
            observed = float(np.quantile(values, slo.slo_quantile))
            breached = len(values) >= self.config.window.min_events and observed > slo.slo_seconds
            self._alert(
                (state.name, "latency", adapter or "-"),
                breached,
                now,
                f"p{slo.slo_quantile * 100:g} latency {observed:.3g} s is above the SLO of "
                f"{slo.slo_seconds:g} s (adapter {adapter or '-'})",
                observed,
                slo.slo_seconds,
            )

    def _evaluate_safety(
        self, state: ModelState, flags: list[tuple[tuple[str, str], ...]], now: float
    ) -> None:
        total = len(flags)
        counted: dict[tuple[str, str], int] = {}
        for event_flags in flags:
            for flag in event_flags:
                counted[flag] = counted.get(flag, 0) + 1
        limit = self.config.safety.rate_threshold
        seen_keys = set(counted)
        for (category, side), count in counted.items():
            rate = count / total
            self.gauges.safety_rate.labels(state.name, category, side).set(rate)
            self._alert(
                (state.name, "safety", f"{category}@{side}"),
                total >= self.config.window.min_events and rate > limit,
                now,
                f"{rate:.1%} of the window's {side}s flagged {category} (limit {limit:.1%})",
                rate,
                limit,
            )
        for key in [k for k in self.alerts if k[0] == state.name and k[1] == "safety"]:
            category, side = key[2].split("@")
            if (category, side) not in seen_keys:
                self.alerts.pop(key)
                self.gauges.safety_rate.labels(state.name, category, side).set(0.0)

    def _alert(
        self,
        key: tuple[str, str, str],
        active: bool,
        now: float,
        message: str,
        value: float,
        threshold: float,
    ) -> None:
        if not active:
            self.alerts.pop(key, None)
            return
        since = self.alerts.get(key, {}).get("since", now)
        self.alerts[key] = {
            "model": key[0],
            "kind": key[1],
            "subject": key[2],
            "since": since,
            "message": message,
            "value": value,
            "threshold": threshold,
        }


def drift_message(name: str, decided: detectors.DriftResult) -> str:
    """The alert's line. A sequential alarm is latched: it names the statistic that fired it
    and when, then the value now (which may have fallen back under the threshold); a windowed
    test decides on the current value."""
    if decided.fired_score is None or decided.fired_at is None:
        return f"{name} drifted ({decided.test} {decided.score:.3g} >= {decided.threshold:.3g})"
    fired = time.strftime("%H:%M:%S", time.gmtime(decided.fired_at))
    return (
        f"{name} drifted ({decided.test} {decided.fired_score:.3g} > "
        f"{decided.fired_threshold:.3g} at {fired} UTC, {decided.delay_events} events / "
        f"{decided.delay_s:.3g} s after the estimated change; now {decided.score:.3g})"
    )
