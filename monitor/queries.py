"""The read side of the monitor: what GET /v1/status, /v1/events, /v1/drift and
/v1/drift/sample answer, built from the windows, the evaluation's results and the store."""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from omnitune.monitor import detectors
from omnitune.monitor.capture import Capture
from omnitune.monitor.config import MonitorConfig
from omnitune.monitor.evaluation import QUANTILES, Evaluator
from omnitune.monitor.metrics import Counts
from omnitune.monitor.store import Store
from omnitune.monitor.windows import ModelState


@dataclass
class Queries:
    """Answers questions about the monitor's state; changes nothing."""

    config: MonitorConfig
    models: dict[str, ModelState]
    store: Store
    counts: Counts
    evaluator: Evaluator
    capture: Capture | None
    lock: threading.Lock
    #: each model's reference version (engine.Monitor.load_reference); "config": the file's
    reference_versions: dict[str, str] = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    def compare(self, model: str, since: float) -> dict[str, Any]:
        """Each adapter version's calls since `since` (GET /v1/compare): champion and canary
        side by side on latency, failures, safety flags and feedback. Input drift is the
        model's, not a version's: the proxy routes calls at random, so both see the same
        inputs."""
        if model not in self.models:
            raise KeyError(f"unknown model {model!r} (configured: {', '.join(self.models)})")
        versions = {}
        for adapter, entry in self.store.by_adapter(model, since).items():
            values = np.asarray(entry.pop("latencies"), dtype=np.float64)
            events = entry["events"]
            versions[adapter or "(none)"] = {
                **entry,
                "error_rate": entry["errors"] / events if events else None,
                "flagged_rate": entry["flagged"] / events if events else None,
                "latency": {k: float(np.quantile(values, q)) for k, q in QUANTILES.items()}
                if len(values)
                else {},
            }
        state = self.models[model]
        return {
            "model": model,
            "since": since,
            "drifting": state.drifting,
            "reference_version": self.reference_versions.get(model, "config"),
            "adapters": versions,
        }

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
                "reference_version": self.reference_versions.get(name, "config"),
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
                "labels": self._label_totals(name),
                "review_queue": self.store.queue_length(name),
            }
        return {
            "status": "ok",
            "uptime_s": round(time.time() - self.started, 3),
            "evaluated_at": self.evaluator.evaluated_at,
            "models": models,
            "alerts": sorted(self.evaluator.alerts.values(), key=lambda a: a["since"]),
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

    def _label_totals(self, model: str) -> dict[str, float]:
        """Labels stored for the model, by source (human, teacher)."""
        return {
            labels[1]: value
            for (key, labels), value in self.counts.values.copy().items()
            if key == "labels" and labels[0] == model
        }

    def _safety_totals(self, model: str) -> dict[str, float]:
        totals: dict[str, float] = {}
        for (key, labels), value in self.counts.values.copy().items():
            if key == "safety_flags" and labels[0] == model:
                totals[f"{labels[1]}@{labels[2]}"] = value
        return totals

    def recent_events(self, **filters: Any) -> list[dict[str, Any]]:
        """Stored events (GET /v1/events), each with the labels it has been given and why it
        was queued for review (safety, drift; None if it was not)."""
        events = self.store.events(**filters)
        labels = self.store.labels(e.request_id for e in events if e.request_id)
        queued = self.store.review_reasons(e.request_id for e in events if e.request_id)
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
                "labels": labels.get(e.request_id or "", []),
                "review": queued.get(e.request_id or ""),  # why it was queued, if it was
            }
            for e in events
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
