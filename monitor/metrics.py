"""Every metric the daemon exports, declared once, on a registry the daemon instance owns.

Names follow Prometheus conventions: the `omnitune_` prefix, base units (seconds), `_total` on
counters, and label sets bounded by the config (model, adapter, modality, feature, category,
side, test). A registry per instance, not the global default, lets tests run several daemons
in one process.

Counters and the latency histogram are exported by a custom collector from one dictionary of
counts, because they must survive restarts: the store keeps the same counts (incremented in the
transaction that stores the events), and a restarted daemon starts from them. Gauges are
recomputed from the windows at every evaluation, so they are plain prometheus_client Gauges.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

#: A count's identity: (counter name, label values in the order of its spec).
CountKey = tuple[str, tuple[str, ...]]


@dataclass(frozen=True)
class CounterSpec:
    metric: str
    help: str
    labels: tuple[str, ...]


COUNTERS: dict[str, CounterSpec] = {
    "events": CounterSpec(
        "omnitune_events",
        "Inference events ingested (stored and counted).",
        ("model", "adapter", "modality"),
    ),
    "event_errors": CounterSpec(
        "omnitune_event_errors",
        "Ingested events that report a failed inference call.",
        ("model", "adapter"),
    ),
    "call_errors": CounterSpec(
        "omnitune_call_errors",
        "Failed inference calls by class (4xx, 5xx, connect, timeout, protocol), as the "
        "recording proxy or middleware saw them.",
        ("model", "adapter", "class"),
    ),
    "rejected": CounterSpec(
        "omnitune_rejected_requests", "Requests or log lines refused, by reason.", ("reason",)
    ),
    "safety_flags": CounterSpec(
        "omnitune_safety_flags",
        "Events flagged by a safety scanner, per category and side (input or output).",
        ("model", "category", "side"),
    ),
    "captured": CounterSpec(
        "omnitune_captured_samples",
        "Events written to the capture datasets for re-training, by reason.",
        ("model", "reason"),
    ),
    "labels": CounterSpec(
        "omnitune_labels",
        "Labels stored (one per event and annotator), by source: human or teacher.",
        ("model", "source"),
    ),
}

LATENCY_METRIC = "omnitune_inference_latency_seconds"
LATENCY_HELP = "Latency of the monitored inference calls, as the serving process measured it."
TTFT_METRIC = "omnitune_time_to_first_token_seconds"
TTFT_HELP = "Time to the first streamed token (or first byte) of the calls a proxy recorded."


class Counts:
    """The daemon's counters and latency histogram as one dict of counts, safe across threads.

    Latency buckets are stored per bucket (not cumulative) under ("latency_bucket", (model,
    adapter, index)), the sum under ("latency_sum", (model, adapter)).
    """

    def __init__(self, buckets: list[float]) -> None:
        self.buckets = list(buckets)
        self.values: dict[CountKey, float] = {}
        self.lock = threading.Lock()

    def add(self, deltas: dict[CountKey, float]) -> None:
        with self.lock:
            for key, value in deltas.items():
                self.values[key] = self.values.get(key, 0.0) + value

    def latency_deltas(
        self,
        deltas: dict[CountKey, float],
        model: str,
        adapter: str,
        seconds: float,
        kind: str = "latency",
    ) -> None:
        """Add one observation to the `kind` histogram (latency, or ttft)."""
        index = bisect.bisect_left(self.buckets, seconds)
        key = (f"{kind}_bucket", (model, adapter, str(index)))
        deltas[key] = deltas.get(key, 0.0) + 1
        total = (f"{kind}_sum", (model, adapter))
        deltas[total] = deltas.get(total, 0.0) + seconds

    def get(self, name: str, *labels: str) -> float:
        with self.lock:
            return self.values.get((name, labels), 0.0)

    def total(self, name: str, **match: str) -> float:
        """Sum of a counter over the label values that match (`model="m"`)."""
        spec = COUNTERS[name]
        positions = {spec.labels.index(k): v for k, v in match.items()}
        with self.lock:
            return sum(
                value
                for (key, labels), value in self.values.items()
                if key == name and all(labels[i] == v for i, v in positions.items())
            )


class CountsCollector:
    """Exposes a `Counts` as Prometheus counters and a histogram at scrape time."""

    def __init__(self, counts: Counts) -> None:
        self.counts = counts

    def describe(self) -> list[Metric]:
        return []  # unchecked collector: the names are fixed above

    def collect(self) -> Iterator[Metric]:
        with self.counts.lock:
            values = dict(self.counts.values)
        families = {
            name: CounterMetricFamily(spec.metric, spec.help, labels=list(spec.labels))
            for name, spec in COUNTERS.items()
        }
        for (name, labels), value in sorted(values.items()):
            if name in families:
                families[name].add_metric(list(labels), value)
        yield from families.values()
        yield self._histogram(values, "latency", LATENCY_METRIC, LATENCY_HELP)
        yield self._histogram(values, "ttft", TTFT_METRIC, TTFT_HELP)

    def _histogram(
        self, values: dict[CountKey, float], kind: str, metric: str, help_text: str
    ) -> Metric:
        per_series: dict[tuple[str, ...], list[float]] = {}
        sums: dict[tuple[str, ...], float] = {}
        width = len(self.counts.buckets) + 1
        for (name, labels), value in values.items():
            if name == f"{kind}_bucket":
                per_series.setdefault(labels[:2], [0.0] * width)[int(labels[2])] += value
            elif name == f"{kind}_sum":
                sums[labels] = value
        histogram = HistogramMetricFamily(metric, help_text, labels=["model", "adapter"])
        bounds = [*(format(b, "g") for b in self.counts.buckets), "+Inf"]
        for series, counts in sorted(per_series.items()):
            cumulative, running = [], 0.0
            for bound, count in zip(bounds, counts, strict=True):
                running += count
                cumulative.append((bound, running))
            histogram.add_metric(list(series), cumulative, sums.get(series, 0.0))
        return histogram


@dataclass
class Gauges:
    drift_score: Gauge
    drift_threshold: Gauge
    drift_detected: Gauge
    drift_warning: Gauge
    drift_delay_events: Gauge
    drift_delay_seconds: Gauge
    drift_expected_run_events: Gauge
    safety_rate: Gauge
    latency_window: Gauge
    window_events: Gauge
    alerts: Gauge
    stored_events: Gauge
    review_queue: Gauge


def build_registry(counts: Counts) -> tuple[CollectorRegistry, Gauges]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CountsCollector(counts))

    def gauge(name: str, help_text: str, labels: list[str]) -> Gauge:
        return Gauge(name, help_text, labels, registry=registry)

    gauges = Gauges(
        drift_score=gauge(
            "omnitune_drift_score",
            "Drift statistic of a feature's current window against the reference.",
            ["model", "feature", "test"],
        ),
        drift_threshold=gauge(
            "omnitune_drift_threshold",
            "The value of omnitune_drift_score at or above which the test calls drift.",
            ["model", "feature", "test"],
        ),
        drift_detected=gauge(
            "omnitune_drift_detected",
            "1 when the feature's deciding test finds drift (after multiple-testing correction).",
            ["model", "feature"],
        ),
        drift_warning=gauge(
            "omnitune_drift_warning",
            "1 when a calibrated drift alarm is latched but the shift is below the model's "
            "materiality gate (drift.material).",
            ["model", "feature"],
        ),
        drift_delay_events=gauge(
            "omnitune_drift_delay_events",
            "Events from the estimated change point to the latched sequential drift alarm.",
            ["model", "feature"],
        ),
        drift_delay_seconds=gauge(
            "omnitune_drift_delay_seconds",
            "Seconds from the estimated change point to the latched sequential drift alarm.",
            ["model", "feature"],
        ),
        drift_expected_run_events=gauge(
            "omnitune_drift_expected_run_events",
            "The ERT the sequential detector is calibrated to: mean events between false "
            "alarms of the model when nothing drifted.",
            ["model"],
        ),
        safety_rate=gauge(
            "omnitune_safety_flag_ratio",
            "Share of the window's events flagged, per category and side.",
            ["model", "category", "side"],
        ),
        latency_window=gauge(
            "omnitune_window_latency_seconds",
            "Latency percentile (50, 95, 99) over the model's current window.",
            ["model", "adapter", "percentile"],
        ),
        window_events=gauge(
            "omnitune_window_events", "Events in the model's current window.", ["model"]
        ),
        alerts=gauge(
            "omnitune_alerts_active",
            "Active alerts per model and kind (drift, safety, latency).",
            ["model", "kind"],
        ),
        review_queue=gauge(
            "omnitune_review_queue_events",
            "Flagged or captured events of the model that no one has labelled yet.",
            ["model"],
        ),
        stored_events=gauge(
            "omnitune_store_events", "Events held in the store after retention.", []
        ),
    )
    return registry, gauges


#: The recording proxy's call counters (`omnitune monitor proxy`): stats attribute -> help.
PROXY_CALL_COUNTERS = {
    "recorded": "Calls turned into monitor events.",
    "dropped": "Calls not recorded: the recording queue was full.",
    "unmapped": "Calls not recorded: no monitored model for them.",
    "unparsed": "Bodies that could not be read as the API's format.",
}


class ProxyCollector:
    """The recording proxy's metrics (`omnitune_proxy_*`), read from its recorder at scrape
    time: failed calls by class, calls recorded or not and why, and its monitor client's
    dropped and queued events. `recorder` is a `monitor.recording.Recorder`."""

    def __init__(self, recorder: Any, canary: Any = None) -> None:
        self.recorder = recorder
        self.canary = canary or (lambda: None)  # -> the proxy's CanaryRouter, or None

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        stats = self.recorder.stats
        calls = CounterMetricFamily(
            "omnitune_proxy_failed_calls",
            "Calls through the proxy that failed, by class (4xx, 5xx, connect, timeout, protocol).",
            labels=["class"],
        )
        for name, count in sorted(stats.by_class.items()):
            calls.add_metric([name], count)
        yield calls
        for name, text in PROXY_CALL_COUNTERS.items():
            family = CounterMetricFamily(f"omnitune_proxy_{name}_calls", text)
            family.add_metric([], getattr(stats, name))
            yield family
        client = self.recorder.client.stats()
        dropped = CounterMetricFamily(
            "omnitune_proxy_dropped_events",
            "Events the monitor client dropped (the daemon slow or down).",
        )
        dropped.add_metric([], client["dropped"])
        yield dropped
        queued = GaugeMetricFamily(
            "omnitune_proxy_queued_events", "Events waiting to be sent to the daemon."
        )
        queued.add_metric([], client["queued"])
        yield queued
        router = self.canary()
        share = GaugeMetricFamily(
            "omnitune_proxy_canary_share",
            "Share of calls the canary is configured to serve (0: no canary).",
            labels=["adapter"],
        )
        arms = CounterMetricFamily(
            "omnitune_proxy_routed_calls",
            "Recorded-path calls by the arm that served them (champion or canary).",
            labels=["arm"],
        )
        if router is not None:
            share.add_metric([router.section.adapter], router.section.share)
            for arm, count in sorted(router.calls.items()):
                arms.add_metric([arm], count)
        yield share
        yield arms
