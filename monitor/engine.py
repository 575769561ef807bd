"""The daemon's core, a `Monitor`: ingest events durably, keep per-model windows, evaluate the
detectors, answer questions about the state.

`Monitor` knows nothing about HTTP: the Starlette app, the log tailer and the tests all call
`ingest()`, `evaluate()` and `status()`. It wires five parts with one job each and shares one
lock between them:

- `windows`: each model's in-memory windows, built at start and refilled from the store;
- `ingest.Ingestor`: checks and commits events, then feeds windows, counters and capture;
- `evaluation.Evaluator`: drift (`drift_results`), latency and safety checks, gauges, alerts;
- `queries.Queries`: the status, events and drift answers of the HTTP API;
- `labels.Labelling`: feedback and corrections, and the review queue that asks for them.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from typing import Any

from omnitune.monitor.capture import Capture
from omnitune.monitor.config import MonitorConfig
from omnitune.monitor.evaluation import Evaluator
from omnitune.monitor.events import Event
from omnitune.monitor.ingest import Ingestor, IngestResult
from omnitune.monitor.labels import Feedback, Labelling
from omnitune.monitor.metrics import Counts, build_registry
from omnitune.monitor.queries import Queries
from omnitune.monitor.safety import build_scanners
from omnitune.monitor.store import Store, is_disk_full
from omnitune.monitor.versions import ReferenceVersions
from omnitune.monitor.windows import model_state, refill, restore

logger = logging.getLogger("omnitune.monitor")


class Monitor:
    """One daemon's state: the store, the counters and gauges, each model's windows."""

    def __init__(self, config: MonitorConfig) -> None:
        self.config = config
        self.store = Store(config.store.path, config.store.fsync)
        self.counts = Counts(config.latency.buckets)
        self.registry, self.gauges = build_registry(self.counts)
        scanners = build_scanners(config.safety.scanners, config.safety)
        self.capture = Capture(config.capture) if config.capture.dir is not None else None
        self.versions = ReferenceVersions(config.store.path)
        loaded = self.versions.active()
        #: the reference version each model measures drift against ("config": the file's)
        self.reference_versions = {
            name: loaded.get(name, {}).get("version", "config") for name in config.models
        }
        self.models = {
            name: model_state(name, _with_loaded(section, loaded.get(name)), config, self.gauges)
            for name, section in config.models.items()
        }
        self.lock = threading.Lock()
        self.ingestor = Ingestor(
            self.models, self.store, self.counts, scanners, self.capture, self.lock
        )
        self.evaluator = Evaluator(config, self.models, self.store, self.gauges, self.lock)
        self.queries = Queries(
            config,
            self.models,
            self.store,
            self.counts,
            self.evaluator,
            self.capture,
            self.lock,
            self.reference_versions,
        )
        self.labelling = Labelling(config, self.store, self.counts, self.ingestor)
        # scipy.stats takes a second or two to import; pay that before serving, not in the
        # first evaluation after traffic arrives.
        import scipy.stats  # noqa: F401

        restore(self.store, self.counts, self.models)

    # The write side.

    def check(self, events: list[Event]) -> None:
        self.ingestor.check(events)

    def ingest(self, events: list[Event], meta: dict[str, str] | None = None) -> IngestResult:
        """Commit `events` (see `Ingestor.ingest`); when this returns they are on disk."""
        return self.ingestor.ingest(events, meta)

    def reject(self, reason: str) -> None:
        self.ingestor.reject(reason)

    def feedback(self, feedback: Feedback) -> dict[str, Any]:
        """Store a label of a stored event (POST /v1/feedback)."""
        return self.labelling.feedback(feedback)

    def load_reference(self, model: str, version: str, profile: dict[str, Any]) -> dict[str, Any]:
        """Measure `model`'s drift against `profile` (a run's reference.json) from now on,
        without a restart (PUT /v1/models/MODEL/reference). The new detectors are built and
        calibrated first, then refilled from the store's newest events and swapped in under
        the lock; the profile is on disk and named active before this returns. Raises
        KeyError for an unknown model, ValueError for a profile that is not one."""
        if model not in self.models:
            raise KeyError(f"unknown model {model!r} (configured: {', '.join(self.models)})")
        from omnitune.core.errors import ConfigError

        path = self.versions.write_profile(model, version, profile)
        section = self.models[model].section.model_copy(update={"reference": path})
        try:
            state = model_state(model, section, self.config, self.gauges)
        except ConfigError as exc:
            path.unlink(missing_ok=True)
            message = str(exc).replace(f"models.{model}.reference: ", "profile: ")
            raise ValueError(message.replace(str(path), f"version {version}")) from None
        self.versions.activate(model, version, path)
        with self.lock:
            refill(self.store, state)
            self.models[model] = state
            self.reference_versions[model] = version
        logger.info("%s: drift measured against reference version %s from now on", model, version)
        return {
            "model": model,
            "version": version,
            "features": state.tracked(),
            "calibration": "cached" if state.calibration_cached else "calibrated",
            "window": len(state.flags),
        }

    # Evaluation.

    def evaluate(self) -> None:
        self.evaluator.evaluate()

    @property
    def alerts(self) -> dict[tuple[str, str, str], dict[str, Any]]:
        return self.evaluator.alerts

    @property
    def evaluated_at(self) -> float | None:
        return self.evaluator.evaluated_at

    # The read side.

    def status(self) -> dict[str, Any]:
        return self.queries.status()

    def recent_events(self, **filters: Any) -> list[dict[str, Any]]:
        return self.queries.recent_events(**filters)

    def drift_history(self, model: str) -> dict[str, Any]:
        return self.queries.drift_history(model)

    def drift_sample(self, model: str, feature: str, limit: int = 1000) -> dict[str, Any]:
        return self.queries.drift_sample(model, feature, limit)

    def compare(self, model: str, since: float = 0.0) -> dict[str, Any]:
        """Each adapter version's calls since `since`, side by side (GET /v1/compare)."""
        return self.queries.compare(model, since)

    def review(self, model: str, limit: int = 20) -> dict[str, Any]:
        """The model's review queue, most useful first (GET /v1/review)."""
        return self.labelling.review(model, limit)

    # Housekeeping.

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

    def close(self) -> None:
        self.store.close()


def _with_loaded(section: Any, loaded: dict[str, str] | None) -> Any:
    """The model's config section, its reference replaced by one loaded over the API."""
    if not loaded:
        return section
    from pathlib import Path

    return section.model_copy(update={"reference": Path(loaded["path"])})
