"""The daemon's core: ingest events durably, keep per-model windows, evaluate the detectors.

`Monitor` knows nothing about HTTP: the Starlette app, the log tailer and the tests all call
`ingest()`, `evaluate()` and `status()`. Memory is bounded by the config: each model keeps
`window.size` values per tested feature, latency and safety flag; everything older lives only
in the store. On start the windows are rebuilt from the store's newest events and the counters
from its counts table.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sqlite3
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import TypeAdapter
from pydantic_core import to_json

from omnitune.monitor import detectors
from omnitune.monitor.calibration import Calibration, cached_calibration
from omnitune.monitor.capture import Capture, training_record
from omnitune.monitor.config import DriftSection, ModelSection, MonitorConfig
from omnitune.monitor.events import Event
from omnitune.monitor.features import event_features
from omnitune.monitor.metrics import CountKey, Counts, build_registry
from omnitune.monitor.reference import Reference, load_reference
from omnitune.monitor.safety import build_scanners, redact, scan
from omnitune.monitor.sequential import SequentialDrift
from omnitune.monitor.store import Row, Store, StoreFull, is_disk_full

logger = logging.getLogger("omnitune.monitor")

QUANTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}

#: Event fields about the HTTP call itself, stored in the payload when given.
CALL_FIELDS = ("error_class", "status", "ttft_s", "prompt_tokens", "completion_tokens")

#: Serialises stored payloads in pydantic-core: four times faster than json.dumps per event.
_PAYLOAD = TypeAdapter(dict[str, Any])

#: Fewest events an effect size (materiality, the window's PSI/KS/Wasserstein) is computed on.
MIN_EFFECT_EVENTS = 50


def online_statistics(reference: Reference, features: list[str]) -> dict[str, Any]:
    """The sequential detector's statistic per feature, by the feature's kind in the reference
    (`detectors.ONLINE_DETECTORS`)."""
    statistics: dict[str, Any] = {}
    for name in features:
        if name in reference.scalars:
            statistics[name] = detectors.ONLINE_DETECTORS["scalar"](reference.scalars[name])
        elif name in reference.embeddings:
            statistics[name] = detectors.ONLINE_DETECTORS["embedding"](reference.embeddings[name])
        else:
            statistics[name] = detectors.ONLINE_DETECTORS["categorical"](reference.categories[name])
    return statistics


def calibrate_model(
    reference: Reference, statistics: dict[str, Any], drift: DriftSection
) -> tuple[Calibration, bool]:
    """A model's thresholds: from the cache next to its reference when the reference and every
    setting they depend on are unchanged, else calibrated now (and cached). Returns the
    calibration and whether it came from the cache."""
    return cached_calibration(
        reference.source, statistics, drift.windows, drift.block_events, drift.run_events()
    )


def fingerprint(payload: dict[str, Any]) -> int | None:
    """What makes two events the same input for de-duplication: the stored input and the
    features together (one question asked of different images, or a placeholder input with
    precomputed embeddings, are different events). A process-local hash: fingerprints live in
    memory only (a restart computes them again from the stored payloads)."""
    basis = [payload.get("input"), payload.get("features")]
    if not any(basis):
        return None
    return hash(to_json(basis))


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
class ModelState:
    """One model's windows and latest evaluation."""

    name: str
    section: ModelSection
    reference: Reference | None
    size: int
    scalar_refs: dict[str, detectors.ScalarReference] = field(default_factory=dict)
    features: dict[str, deque[Any]] = field(default_factory=dict)
    latencies: dict[str, deque[float]] = field(default_factory=dict)
    flags: deque[tuple[tuple[str, str], ...]] = field(default_factory=deque)
    results: dict[str, dict[str, detectors.DriftResult]] = field(default_factory=dict)
    decisions: dict[str, detectors.DriftResult] = field(default_factory=dict)
    drift_since: dict[str, float] = field(default_factory=dict)
    #: (time, {feature: deciding result}) per evaluation, newest last; bounded by drift.history.
    history: deque[tuple[float, dict[str, detectors.DriftResult]]] = field(default_factory=deque)
    new_events: int = 0
    #: drift.method sequential: the calibrated detector, fed at ingest, and its calibration.
    sequential: SequentialDrift | None = None
    calibration: Calibration | None = None
    calibration_cached: bool = False

    @property
    def drifting(self) -> bool:
        return any(r.drifted for r in self.decisions.values())

    def tracked(self) -> list[str]:
        if self.reference is None:
            return []
        names = self.reference.names()
        if self.section.features is not None:
            names = [n for n in names if n in self.section.features]
        return names

    def observe(
        self,
        features: dict[str, Any],
        latency: float | None,
        adapter: str,
        flags: tuple[tuple[str, str], ...],
    ) -> None:
        for name in self.features:
            value = features.get(name)
            if value is not None:
                self.features[name].append(value)
        if latency is not None:
            window = self.latencies.get(adapter)
            if window is None:
                window = self.latencies[adapter] = deque(maxlen=self.size)
            window.append(latency)
        self.flags.append(flags)
        self.new_events += 1


class Monitor:
    def __init__(self, config: MonitorConfig) -> None:
        self.config = config
        self.started = time.time()
        self.store = Store(config.store.path, config.store.fsync)
        self.counts = Counts(config.latency.buckets)
        self.registry, self.gauges = build_registry(self.counts)
        self.scanners = build_scanners(config.safety.scanners, config.safety)
        #: PII scanners only: they also scrub the strings no safety flag is raised on (labels,
        #: other input fields, categorical features), so no stored string keeps PII.
        self.pii_scanners = [s for s in self.scanners if s.name == "pii"]
        self.capture = Capture(config.capture) if config.capture.dir is not None else None
        self.models = {name: self._model_state(name, s) for name, s in config.models.items()}
        self.alerts: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.evaluated_at: float | None = None
        self.lock = threading.Lock()
        # scipy.stats takes a second or two to import; pay that before serving, not in the
        # first evaluation after traffic arrives.
        import scipy.stats  # noqa: F401

        self._restore()

    # Setup ---------------------------------------------------------------------------------

    def _model_state(self, name: str, section: ModelSection) -> ModelState:
        reference = (
            load_reference(section.reference, section.modality, name)
            if section.reference is not None
            else None
        )
        size = self.config.window.size
        state = ModelState(
            name,
            section,
            reference,
            size,
            flags=deque(maxlen=size),
            history=deque(maxlen=self.config.drift.history),
        )
        if reference is not None:
            if section.features is not None:
                missing = [f for f in section.features if f not in reference.names()]
                if missing:
                    from omnitune.trainers.errors import ConfigError

                    raise ConfigError(
                        f"models.{name}.features: {missing[0]!r} is not in the reference "
                        f"(it has: {', '.join(reference.names())})"
                    )
            for feature in state.tracked():
                state.features[feature] = deque(maxlen=size)
                if feature in reference.scalars:
                    state.scalar_refs[feature] = detectors.ScalarReference.fit(
                        reference.scalars[feature], self.config.drift.psi_bins
                    )
            if self.config.drift.method == "sequential" and state.tracked():
                self._build_sequential(state)
        return state

    def _build_sequential(self, state: ModelState) -> None:
        """The model's online statistics, thresholds from the cached (or a new) calibration."""
        cfg = self.config.drift
        statistics = online_statistics(state.reference, state.tracked())
        state.calibration, state.calibration_cached = calibrate_model(
            state.reference, statistics, cfg
        )
        logger.info(
            "%s: drift thresholds for an ERT of %d events %s (%.2f s)",
            state.name,
            state.calibration.expected_run_events,
            "from the cache" if state.calibration_cached else "calibrated",
            state.calibration.seconds,
        )
        state.sequential = SequentialDrift(
            statistics, state.calibration.thresholds, cfg.windows, cfg.block_events, cfg.dedupe
        )
        self.gauges.drift_expected_run_events.labels(state.name).set(cfg.run_events())

    def _restore(self) -> None:
        """Counters from the store's counts table, windows from each model's newest events."""
        self.counts.add(self.store.counters())
        for name, state in self.models.items():
            recent = self.store.recent(name, state.size)
            for stored in recent:
                flags = tuple(tuple(f.split("@")) for f in stored.flags.split(",") if f)
                state.observe(
                    stored.payload.get("features", {}), stored.latency_s, stored.adapter, flags
                )
            if state.sequential is not None and recent:
                state.sequential.update(
                    [stored.payload.get("features", {}) for stored in recent],
                    [stored.ts for stored in recent],
                    [fingerprint(stored.payload) for stored in recent],
                )
        restored = sum(len(s.flags) for s in self.models.values())
        if restored:
            logger.info("restored %d events into the windows from %s", restored, self.store.path)

    def close(self) -> None:
        self.store.close()

    # Ingest --------------------------------------------------------------------------------

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
        return self._scrub(value)

    def _prepare(
        self, event: Event, arrival: float
    ) -> tuple[Row, dict[str, Any], tuple[tuple[str, str], ...], dict[str, Any]]:
        state = self.models[event.model]
        modality = state.section.modality
        features = self._scrub(event_features(event, modality))
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
            "label": self._scrub(event.label),
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

    def _scrub(self, value: Any) -> Any:
        """`value` with PII in every string inside it replaced by `[CATEGORY]`."""
        if not self.pii_scanners:
            return value
        if isinstance(value, str):
            return redact(value, scan(value, self.pii_scanners, "input"))
        if isinstance(value, dict):
            return {key: self._scrub(item) for key, item in value.items()}
        if isinstance(value, list) and value and isinstance(value[0], str):
            return [self._scrub(item) for item in value]
        return value

    def _after_commit(self, prepared: list[Any], fresh: list[bool]) -> int:
        captures: dict[str, list[dict[str, Any]]] = {}
        capture_counts: dict[CountKey, float] = {}
        online: dict[str, tuple[list[dict[str, Any]], list[float], list[int | None]]] = {}
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
            self._commit_counts(capture_counts)
        return int(sum(capture_counts.values()))

    def reject(self, reason: str) -> None:
        """Count a refused request (kept across restarts like every counter)."""
        self._commit_counts({("rejected", (reason,)): 1.0})

    def _commit_counts(self, delta: dict[CountKey, float]) -> None:
        """Add counter deltas, durably when the disk allows (on a full disk, in memory only:
        the request that caused them was answered already)."""
        try:
            self.store.commit([], lambda _: delta)
        except StoreFull:
            logger.warning("disk full: counters %s kept in memory only", sorted(delta))
        self.counts.add(delta)

    # Evaluation ----------------------------------------------------------------------------

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
            for kind in ("drift", "safety", "latency"):
                active = sum(1 for k in self.alerts if k[0] == model and k[1] == kind)
                self.gauges.alerts.labels(model, kind).set(active)
        self.evaluated_at = now

    def _evaluate_drift(
        self, state: ModelState, snapshot: dict[str, list[Any]], now: float
    ) -> None:
        if state.reference is None:
            return
        if state.sequential is not None:
            results, deciding = self._sequential_results(state, snapshot)
        else:
            results, deciding = self._windowed_results(state, snapshot)
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

    def _sequential_results(
        self, state: ModelState, snapshot: dict[str, list[Any]]
    ) -> tuple[dict[str, dict[str, detectors.DriftResult]], dict[str, detectors.DriftResult]]:
        """Each feature's calibrated statistic (the window nearest its threshold) and alarm; an
        alarm is drift when the shift since its change point is material, else a warning."""
        cfg = self.config.drift
        rule = state.section.material or cfg.material
        with self.lock:
            online = state.sequential.state()
        results: dict[str, dict[str, detectors.DriftResult]] = {}
        deciding: dict[str, detectors.DriftResult] = {}
        for name, now_state in online.items():
            if now_state["scores"] is None:
                continue
            scores = np.asarray(now_state["scores"])
            thresholds = np.asarray(now_state["thresholds"])
            nearest = int(np.argmax(scores / thresholds))
            alarm = now_state["alarm"]
            tests = self._effect_sizes(state, name, snapshot[name]) if name in snapshot else {}
            material = True
            if alarm is not None:
                since = snapshot.get(name, [])[-max(alarm.events_since_change, MIN_EFFECT_EVENTS) :]
                material = self._material(state, name, since, rule)
            decided = detectors.DriftResult(
                now_state["test"],
                float(scores[nearest]),
                float(thresholds[nearest]),
                alarm is not None and material,
                warning=alarm is not None and not material,
                delay_events=None if alarm is None else alarm.delay_events,
                delay_s=None if alarm is None else alarm.delay_s,
                fired_score=None if alarm is None else alarm.score,
                fired_threshold=None if alarm is None else alarm.threshold,
                fired_at=None if alarm is None else alarm.since_ts,
            )
            results[name] = {decided.test: decided, **tests}
            deciding[name] = decided
        return results, deciding

    def _effect_sizes(
        self, state: ModelState, name: str, values: list[Any]
    ) -> dict[str, detectors.DriftResult]:
        """The window's effect sizes, shown beside the calibrated statistic (scalars only: the
        categorical and embedding tests' own scores are the calibrated ones)."""
        cfg = self.config.drift
        reference = state.scalar_refs.get(name)
        if reference is None or len(values) < MIN_EFFECT_EVENTS:
            return {}
        current = np.asarray(values, dtype=np.float64)
        return {
            "psi": detectors.psi(reference, current, cfg.psi_threshold, cfg.psi_warning),
            "ks": detectors.ks(reference, current, cfg.ks_min_effect, 1.0),
            "wasserstein": detectors.wasserstein(reference, current, cfg.wasserstein_threshold),
        }

    def _material(self, state: ModelState, name: str, values: list[Any], rule: str) -> bool:
        """Whether the values since the change point moved at least the rule's effect size.
        Embeddings have no effect-size gate: their calibrated alarm decides."""
        cfg = self.config.drift
        if rule == "none" or not values:
            return True
        if name in state.scalar_refs:
            reference, current = state.scalar_refs[name], np.asarray(values, dtype=np.float64)
            if rule == "psi":
                return detectors.psi(reference, current, cfg.psi_threshold, cfg.psi_warning).drifted
            if rule == "ks":
                return detectors.ks(reference, current, cfg.ks_min_effect, 1.0).drifted
            return detectors.wasserstein(reference, current, cfg.wasserstein_threshold).drifted
        if name in state.reference.categories:
            result = detectors.categorical(
                state.reference.categories[name], [str(v) for v in values], cfg.js_threshold, 1.0
            )
            return result.score >= cfg.js_threshold
        return True

    def _windowed_results(
        self, state: ModelState, snapshot: dict[str, list[Any]]
    ) -> tuple[dict[str, dict[str, detectors.DriftResult]], dict[str, detectors.DriftResult]]:
        """The window re-tested with fixed thresholds, corrected across the model's features."""
        cfg = self.config.drift
        results: dict[str, dict[str, detectors.DriftResult]] = {}
        deciding: dict[str, detectors.DriftResult] = {}
        tested = [n for n, v in snapshot.items() if len(v) >= self.config.window.min_events]
        alpha_each = (
            cfg.alpha / max(1, len(tested)) if cfg.correction == "bonferroni" else cfg.alpha
        )
        for name in tested:
            values = snapshot[name]
            if name in state.scalar_refs:
                current = np.asarray(values, dtype=np.float64)
                reference = state.scalar_refs[name]
                tests = {
                    "psi": detectors.psi(reference, current, cfg.psi_threshold, cfg.psi_warning),
                    "ks": detectors.ks(reference, current, cfg.ks_min_effect, cfg.alpha),
                    "wasserstein": detectors.wasserstein(
                        reference, current, cfg.wasserstein_threshold
                    ),
                }
                deciding[name] = tests[cfg.scalar_test]
            elif name in state.reference.embeddings:
                permutations = max(cfg.mmd_permutations, math.ceil(2 / alpha_each))
                current = np.asarray([v for v in values if isinstance(v, list)], dtype=np.float64)
                result = detectors.mmd(
                    state.reference.embeddings[name],
                    current,
                    cfg.alpha,
                    permutations=permutations,
                    max_samples=cfg.mmd_max_samples,
                )
                tests = {"mmd": result}
                deciding[name] = result
            else:
                result = detectors.categorical(
                    state.reference.categories[name],
                    [str(v) for v in values],
                    cfg.js_threshold,
                    cfg.alpha,
                )
                tests = {"chi2": result}
                deciding[name] = result
            results[name] = tests
        return results, detectors.correct(deciding, cfg.correction, cfg.alpha)

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

    # Reading -------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Drift, safety and latency state per model and the active alerts (GET /v1/status)."""
        models = {}
        for name, state in self.models.items():
            with self.lock:
                latencies = {a: np.asarray(v) for a, v in state.latencies.items()}
                window = len(state.flags)
                results = dict(state.results)
                decisions = dict(state.decisions)
                since = dict(state.drift_since)
            models[name] = {
                "modality": state.section.modality,
                "reference": state.reference.source if state.reference else None,
                "events_total": self.counts.total("events", model=name),
                "window": window,
                "drifting": any(r.drifted for r in decisions.values()),
                "drift_method": "sequential" if state.sequential is not None else "windowed",
                "calibration": self._calibration_summary(state),
                "drift": {
                    feature: {
                        "decision": detectors.describe(decisions[feature]),
                        "tests": {t: detectors.describe(r) for t, r in tests.items()},
                        "since": since.get(feature),
                    }
                    for feature, tests in results.items()
                },
                "latency": {
                    adapter: {
                        "count": len(values),
                        **{k: float(np.quantile(values, q)) for k, q in QUANTILES.items()},
                    }
                    for adapter, values in latencies.items()
                    if len(values)
                },
                "safety": self._safety_totals(name),
            }
        return {
            "status": "ok",
            "uptime_s": round(time.time() - self.started, 3),
            "evaluated_at": self.evaluated_at,
            "models": models,
            "alerts": sorted(self.alerts.values(), key=lambda a: a["since"]),
            "store": {"path": str(self.store.path), "events": self.store.count()},
            "capture": None
            if self.capture is None
            else {
                "dir": str(self.capture.root),
                "files": {m: str(self.capture.file(m)) for m in self.models},
                "samples": {m: self.capture.count(m) for m in self.models},
            },
            "rejected": {
                labels[0]: value
                for (key, labels), value in self.counts.values.copy().items()
                if key == "rejected"
            },
        }

    def _calibration_summary(self, state: ModelState) -> dict[str, Any] | None:
        calibration = state.calibration
        if state.sequential is None or calibration is None:  # windowed, or no reference
            return None
        return {
            "expected_run_events": calibration.expected_run_events,
            "simulated_run_events": calibration.simulated_run_events,
            "windows": state.sequential.windows,
            "block_events": state.sequential.block,
            "material": state.section.material or self.config.drift.material,
            "cached": state.calibration_cached,
            "seconds": calibration.seconds,
            "tested_events": state.sequential.tested,
            "deduplicated_events": state.sequential.deduplicated,
        }

    def _safety_totals(self, model: str) -> dict[str, float]:
        totals: dict[str, float] = {}
        for (key, labels), value in self.counts.values.copy().items():
            if key == "safety_flags" and labels[0] == model:
                totals[f"{labels[1]}@{labels[2]}"] = value
        return totals

    def recent_events(self, **filters: Any) -> list[dict[str, Any]]:
        return [
            {
                "id": e.id,
                "request_id": e.request_id,
                "ts": e.ts,
                "model": e.model,
                "adapter": e.adapter,
                "modality": e.modality,
                "latency_s": e.latency_s,
                "flags": [f for f in e.flags.split(",") if f],
                **e.payload,
            }
            for e in self.store.events(**filters)
        ]

    def drift_history(self, model: str) -> dict[str, Any]:
        """Each feature's deciding score and threshold per evaluation (GET /v1/drift)."""
        state = self._state(model)
        with self.lock:
            history = list(state.history)
        features: dict[str, dict[str, list[Any]]] = {}
        for ts, decisions in history:
            for feature, result in decisions.items():
                series = features.setdefault(
                    feature, {"ts": [], "test": [], "score": [], "threshold": [], "drifted": []}
                )
                series["ts"].append(ts)
                series["test"].append(result.test)
                series["score"].append(result.score)
                series["threshold"].append(result.threshold)
                series["drifted"].append(result.drifted)
        return {"model": model, "features": features}

    def drift_sample(self, model: str, feature: str, limit: int = 1000) -> dict[str, Any]:
        """Reference and current-window values of one feature (GET /v1/drift/sample).

        Scalars and embeddings come back as up to `limit` values (vectors) per side, evenly
        spaced through the reference and the newest of the window; categories as counts.
        """
        state = self._state(model)
        reference = state.reference
        if reference is None or feature not in state.features:
            tracked = ", ".join(state.tracked()) or "none"
            raise KeyError(f"model {model!r} tracks no feature {feature!r} (tracked: {tracked})")
        with self.lock:
            current = list(state.features[feature])[-limit:]
        if feature in reference.categories:
            return {
                "model": model,
                "feature": feature,
                "kind": "categorical",
                "reference": dict(reference.categories[feature]),
                "current": dict(Counter(str(v) for v in current)),
            }
        if feature in reference.embeddings:
            kind, values = "embedding", reference.embeddings[feature]
            current = [v for v in current if isinstance(v, list)]
        else:
            kind, values = "scalar", reference.scalars[feature]
        step = max(1, math.ceil(len(values) / limit))
        return {
            "model": model,
            "feature": feature,
            "kind": kind,
            "reference": values[::step].tolist(),
            "current": current,
        }

    def _state(self, model: str) -> ModelState:
        state = self.models.get(model)
        if state is None:
            raise KeyError(f"unknown model {model!r} (configured: {', '.join(self.models)})")
        return state

    def enforce_retention(self) -> int:
        section = self.config.store
        max_age = section.retention_days * 86400 if section.retention_days else None
        try:
            return self.store.enforce_retention(max_age, section.max_events)
        except sqlite3.Error as exc:
            if not is_disk_full(exc):
                raise
            logger.warning("disk full: retention could not run (%s); it retries", exc)
            return 0


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
