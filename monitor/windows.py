"""Each model's windows: what the monitor keeps in memory per model, built from the config
and its reference at start-up and refilled from the store's newest events after a restart.

Memory is bounded by the config: each model keeps `window.size` values per tested feature,
latency and safety flag; everything older lives only in the store.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from pydantic_core import to_json

from omnitune.monitor import detectors
from omnitune.monitor.calibration import Calibration, cached_calibration
from omnitune.monitor.config import DriftSection, ModelSection, MonitorConfig
from omnitune.monitor.metrics import Counts, Gauges
from omnitune.monitor.reference import Reference, load_reference
from omnitune.monitor.sequential import SequentialDrift
from omnitune.monitor.store import Store

logger = logging.getLogger("omnitune.monitor")


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

    def kind(self, feature: str) -> str:
        """Which side of the reference `feature` is on: scalar, embedding or categorical."""
        if feature in self.scalar_refs:
            return "scalar"
        return "embedding" if feature in self.reference.embeddings else "categorical"

    def reference_for(self, feature: str) -> Any:
        """What a window test compares `feature` with: the fitted scalar reference, the
        reference embeddings or the reference category counts."""
        kind = self.kind(feature)
        if kind == "scalar":
            return self.scalar_refs[feature]
        if kind == "embedding":
            return self.reference.embeddings[feature]
        return self.reference.categories[feature]

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


def model_state(
    name: str, section: ModelSection, config: MonitorConfig, gauges: Gauges
) -> ModelState:
    """A model's empty windows, its fitted scalar references and, for drift.method
    sequential, its calibrated online detector."""
    reference = (
        load_reference(section.reference, section.modality, name)
        if section.reference is not None
        else None
    )
    size = config.window.size
    state = ModelState(
        name,
        section,
        reference,
        size,
        flags=deque(maxlen=size),
        history=deque(maxlen=config.drift.history),
    )
    if reference is not None:
        if section.features is not None:
            missing = [f for f in section.features if f not in reference.names()]
            if missing:
                from omnitune.core.errors import ConfigError

                raise ConfigError(
                    f"models.{name}.features: {missing[0]!r} is not in the reference "
                    f"(it has: {', '.join(reference.names())})"
                )
        for feature in state.tracked():
            state.features[feature] = deque(maxlen=size)
            if feature in reference.scalars:
                state.scalar_refs[feature] = detectors.ScalarReference.fit(
                    reference.scalars[feature], config.drift.psi_bins
                )
        if config.drift.method == "sequential" and state.tracked():
            _build_sequential(state, config.drift, gauges)
    return state


def _build_sequential(state: ModelState, drift: DriftSection, gauges: Gauges) -> None:
    """The model's online statistics, thresholds from the cached (or a new) calibration."""
    cfg = drift
    statistics = online_statistics(state.reference, state.tracked())
    state.calibration, state.calibration_cached = calibrate_model(state.reference, statistics, cfg)
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
    gauges.drift_expected_run_events.labels(state.name).set(cfg.run_events())


def restore(store: Store, counts: Counts, models: dict[str, ModelState]) -> None:
    """Counters from the store's counts table, windows from each model's newest events."""
    counts.add(store.counters())
    for state in models.values():
        refill(store, state)
    restored = sum(len(s.flags) for s in models.values())
    if restored:
        logger.info("restored %d events into the windows from %s", restored, store.path)


def refill(store: Store, state: ModelState) -> None:
    """Fill `state`'s windows (and its sequential detector) from the model's newest stored
    events: after a restart, or when a new reference replaces the detectors."""
    recent = store.recent(state.name, state.size)
    for stored in recent:
        flags = tuple(tuple(f.split("@")) for f in stored.flags.split(",") if f)
        state.observe(stored.payload.get("features", {}), stored.latency_s, stored.adapter, flags)
    if state.sequential is not None and recent:
        state.sequential.update(
            [stored.payload.get("features", {}) for stored in recent],
            [stored.ts for stored in recent],
            [fingerprint(stored.payload) for stored in recent],
        )
