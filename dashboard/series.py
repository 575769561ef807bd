"""The numbers each page shows, from whichever source answers them.

Time series come from Prometheus (PromQL range queries over what it scraped) when the dashboard
is given `--prometheus`, else from the daemon (its recent events and its drift history). The
current state (request counts, alerts, what is serving) comes from the daemon when it is
configured, else (or while it is down) from Prometheus's instant queries and alert API.
Both paths return the same columns, so a page does not care which answered. Every function
raises `SourceDown` with a one-line reason, which the pages show as a banner.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import reduce
from typing import Any

import pandas as pd

from omnitune.dashboard import data
from omnitune.dashboard.sources import Daemon, Prometheus, SourceDown

TRAFFIC_COLUMNS = ["time", "model", "adapter", "requests_per_s", "error_rate", "p50", "p95", "p99"]
SAFETY_COLUMNS = ["time", "model", "flag", "rate"]
LATENCY_BUCKETS = "omnitune_inference_latency_seconds_bucket"


@dataclass(frozen=True)
class Sources:
    daemon: Daemon | None
    prometheus: Prometheus | None

    def need_daemon(self) -> Daemon:
        if self.daemon is None:
            raise SourceDown("not configured; this view needs it (give --daemon URL)")
        return self.daemon


@dataclass(frozen=True)
class TimeRange:
    """The last `minutes` up to `end`, split into at most 240 points.

    `end` is fixed when the range is made and aligned to the step, so that every range query
    of one page view is evaluated at the same timestamps and their answers join row by row.
    """

    minutes: float
    end: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        object.__setattr__(self, "end", self.end - self.end % self.step_s)

    @property
    def step_s(self) -> float:
        return max(1.0, self.minutes * 60 / 240)

    @property
    def start(self) -> float:
        return self.end - self.minutes * 60

    @property
    def rate_window(self) -> str:
        """rate()'s look-back: at least a minute, so that it spans four scrapes at the default
        15 s interval, and four steps, so that no sample falls between points."""
        return f"{max(60, round(4 * self.step_s))}s"

    @property
    def bucket(self) -> str:
        return f"{max(10, round(self.minutes * 60 / 120))}s"


# Current state ---------------------------------------------------------------------------------


def _daemon_answers(sources: Sources) -> bool:
    """Whether the current state is read from the daemon: when it is configured and answers,
    or when there is no Prometheus to fall back on (its SourceDown then reaches the page). A
    daemon that is down while Prometheus answers leaves the pages Prometheus's view."""
    if sources.daemon is None:
        return False
    if sources.prometheus is None:
        return True
    try:
        sources.daemon.status()  # reused for a second: the read that follows costs nothing
    except SourceDown:
        return False
    return True


def request_counts(sources: Sources) -> dict[str, float]:
    """Events ingested per model since the daemon's store began."""
    if _daemon_answers(sources):
        return {m: s["events_total"] for m, s in sources.daemon.status()["models"].items()}
    # last_over_time: while the daemon is down its series are stale, and a plain instant
    # query would count nothing; the last scraped totals are still the truth.
    result = _prometheus(sources).instant(
        "sum by (model) (last_over_time(omnitune_events_total[1h]))"
    )
    return {r["metric"].get("model", ""): float(r["value"][1]) for r in result}


def alerts(sources: Sources) -> pd.DataFrame:
    """Active alerts: kind, model, subject, message, since, state."""
    columns = ["kind", "model", "subject", "message", "since", "state"]
    if _daemon_answers(sources):
        rows = [{**a, "state": "active"} for a in sources.daemon.status()["alerts"]]
        frame = pd.DataFrame(rows, columns=[*columns, "value", "threshold"])
        frame["since"] = pd.to_datetime(frame["since"], unit="s").dt.round("s")
        return frame[columns]
    rows = []
    for alert in _prometheus(sources).alerts():
        labels = alert["labels"]
        rows.append(
            {
                "kind": labels.get("alertname", ""),
                "model": labels.get("model", ""),
                "subject": labels.get("feature")
                or labels.get("category")
                or labels.get("adapter", ""),
                "message": alert.get("annotations", {}).get("summary", ""),
                "since": pd.to_datetime(alert.get("activeAt"), utc=True)
                .tz_localize(None)
                .round("s"),
                "state": alert.get("state", ""),
            }
        )
    return pd.DataFrame(rows, columns=columns).sort_values("since", ignore_index=True)


def safety_totals(sources: Sources) -> pd.DataFrame:
    """Flagged events per model and category@side since the store began."""
    columns = ["model", "category@side", "count"]
    if _daemon_answers(sources):
        rows = [
            {"model": model, "category@side": flag, "count": count}
            for model, state in sources.daemon.status()["models"].items()
            for flag, count in state["safety"].items()
        ]
        return pd.DataFrame(rows, columns=columns)
    result = _prometheus(sources).instant(
        "sum by (model, category, side) (omnitune_safety_flags_total)"
    )
    rows = [
        {
            "model": r["metric"].get("model", ""),
            "category@side": f"{r['metric'].get('category')}@{r['metric'].get('side')}",
            "count": float(r["value"][1]),
        }
        for r in result
    ]
    return pd.DataFrame(rows, columns=columns)


def serving(sources: Sources) -> list[tuple[str, str]]:
    """(model, adapter) pairs seen in the newest traffic: the adapter versions serving now."""
    if _daemon_answers(sources):
        events = sources.daemon.events(limit=200)
        return sorted({(e["model"], e["adapter"] or "-") for e in events})
    result = _prometheus(sources).instant(
        "sum by (model, adapter) (increase(omnitune_events_total[5m])) > 0"
    )
    return sorted(
        {(r["metric"].get("model", ""), r["metric"].get("adapter") or "-") for r in result}
    )


def captured(sources: Sources) -> pd.DataFrame:
    """Samples captured for re-training per model, and the file holding them (daemon only)."""
    columns = ["model", "samples", "file"]
    if _daemon_answers(sources):
        capture = sources.daemon.status().get("capture")
        if capture is None:
            return pd.DataFrame(columns=columns)
        rows = [
            {"model": m, "samples": n, "file": capture["files"][m]}
            for m, n in capture["samples"].items()
        ]
        return pd.DataFrame(rows, columns=columns)
    result = _prometheus(sources).instant("sum by (model) (omnitune_captured_samples_total)")
    rows = [
        {"model": r["metric"].get("model", ""), "samples": float(r["value"][1]), "file": ""}
        for r in result
    ]
    return pd.DataFrame(rows, columns=columns)


def drift_now(sources: Sources) -> pd.DataFrame:
    """The latest evaluation per model and feature (`data.DRIFT_NOW_COLUMNS`): test, score,
    threshold, drifted, warning, detection delay, since.

    From the daemon: one row per feature (its deciding test). From Prometheus: one row per
    feature and test, the state and delay from their gauges, `since` unknown.
    """
    if _daemon_answers(sources):
        return data.drift_table(sources.daemon.status())
    prometheus = _prometheus(sources)
    keys = ["model", "feature", "test"]
    frames = []
    for name in ("score", "threshold"):
        result = prometheus.instant(f"omnitune_drift_{name}")
        frames.append(
            pd.DataFrame(
                [
                    {**{k: r["metric"].get(k, "") for k in keys}, name: float(r["value"][1])}
                    for r in result
                ],
                columns=[*keys, name],
            )
        )
    frame = frames[0].merge(frames[1], on=keys)
    pairs = list(zip(frame["model"], frame["feature"], strict=True))
    for column, metric, missing in (
        ("drifted", "omnitune_drift_detected", False),
        ("warning", "omnitune_drift_warning", False),
        ("delay_events", "omnitune_drift_delay_events", None),
        ("delay_s", "omnitune_drift_delay_seconds", None),
    ):
        by_feature = {
            (r["metric"].get("model"), r["metric"].get("feature")): float(r["value"][1])
            for r in prometheus.instant(metric)
        }
        values = [by_feature.get(pair, missing) for pair in pairs]
        frame[column] = [bool(v) for v in values] if missing is False else values
    frame["since"] = None
    return frame[data.DRIFT_NOW_COLUMNS].sort_values(keys, ignore_index=True)


def drift_onsets(sources: Sources, span: TimeRange) -> pd.DataFrame:
    """Features drifting now and since when, earliest first: columns model, feature, since.

    The daemon knows when each current drift began; Prometheus knows the first evaluation in
    the time range at which omnitune_drift_detected was 1 (an earlier, ended drift included).
    """
    if _daemon_answers(sources):
        table = data.drift_table(sources.daemon.status())
        drifting = table[table["drifted"]].rename(columns={"since": "time"})
        return data.first_to_drift(drifting[["time", "model", "feature"]])
    result = _prometheus(sources).range(
        "omnitune_drift_detected == 1", span.start, span.end, span.step_s
    )
    frame = data.prometheus_frame(result)
    return data.first_to_drift(frame[["time", "model", "feature"]] if not frame.empty else frame)


def drift_sample(sources: Sources, model: str, feature: str) -> dict[str, Any]:
    """Reference and current values of one feature (the daemon holds both)."""
    return sources.need_daemon().drift_sample(model, feature)


# Over time -------------------------------------------------------------------------------------


def traffic(sources: Sources, span: TimeRange) -> pd.DataFrame:
    """Per model, adapter and time: requests/s, error rate, latency p50/p95/p99."""
    if sources.prometheus is None:
        events = sources.need_daemon().events(limit=5000, since=span.start)
        return data.traffic_over_time(data.events_frame(events), span.bucket)
    by, w = "model, adapter", span.rate_window
    requests = f"sum by ({by}) (rate(omnitune_events_total[{w}]))"
    errors = f"sum by ({by}) (rate(omnitune_event_errors_total[{w}]))"
    queries = {
        "requests_per_s": requests,
        # No error counter exists before the first error: count those stretches as 0.
        "error_rate": f"({errors} or {requests} * 0) / {requests}",
        **{
            name: f"histogram_quantile({q}, sum by ({by}, le) (rate({LATENCY_BUCKETS}[{w}])))"
            for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
        },
    }
    frame = _merged(sources, span, queries, ["model", "adapter"])
    return frame[TRAFFIC_COLUMNS]


def drift(sources: Sources, span: TimeRange, model: str | None = None) -> pd.DataFrame:
    """Per time, model, feature and test: the score, its threshold and their ratio."""
    if sources.prometheus is None:
        daemon = sources.need_daemon()
        models = [model] if model else list(daemon.status()["models"])
        frames = [data.drift_history_frame(daemon.drift_history(m)) for m in models]
        frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        if frame.empty:
            return pd.DataFrame(columns=data.DRIFT_COLUMNS)
        return frame[frame["time"] >= pd.to_datetime(span.start, unit="s")]
    selector = f'{{model="{model}"}}' if model else ""
    queries = {
        "score": f"omnitune_drift_score{selector}",
        "threshold": f"omnitune_drift_threshold{selector}",
    }
    frame = _merged(sources, span, queries, ["model", "feature", "test"])
    frame["ratio"] = frame["score"] / frame["threshold"]
    return frame[data.DRIFT_COLUMNS]


def safety(sources: Sources, span: TimeRange) -> pd.DataFrame:
    """Per time, model and category@side: the share of requests flagged."""
    if sources.prometheus is None:
        events = sources.need_daemon().events(limit=5000, since=span.start)
        return data.safety_over_time(data.events_frame(events), span.bucket)
    w = span.rate_window
    query = (
        f"sum by (model, category, side) (rate(omnitune_safety_flags_total[{w}]))"
        f" / on (model) group_left sum by (model) (rate(omnitune_events_total[{w}]))"
    )
    frame = _merged(sources, span, {"rate": query}, ["model", "category", "side"])
    frame["flag"] = frame["category"] + "@" + frame["side"]
    return frame[SAFETY_COLUMNS]


def compare(sources: Sources, model: str, span: TimeRange) -> pd.DataFrame | None:
    """Each adapter version's calls of `model` in the range (the daemon's store: feedback and
    safety flags per version are not Prometheus series); None when the daemon does not
    monitor that model."""
    try:
        compared = sources.need_daemon().compare(model, span.start)
    except SourceDown as exc:
        if "unknown model" in str(exc):
            return None
        raise
    return data.compare_table(compared)


def _merged(
    sources: Sources, span: TimeRange, queries: dict[str, str], labels: list[str]
) -> pd.DataFrame:
    """Range queries joined on time and `labels` (a label Prometheus dropped as empty is "")."""
    prometheus = _prometheus(sources)
    frames = []
    for name, query in queries.items():
        frame = data.prometheus_frame(
            prometheus.range(query, span.start, span.end, span.step_s), name
        )
        for label in labels:
            frame[label] = frame[label].fillna("") if label in frame else ""
        frames.append(frame[["time", *labels, name]])
    return reduce(lambda a, b: a.merge(b, on=["time", *labels], how="outer"), frames)


def _prometheus(sources: Sources) -> Prometheus:
    if sources.prometheus is None:
        raise SourceDown("not configured, and neither is the daemon", "Prometheus")
    return sources.prometheus


def describe(sources: Sources) -> dict[str, str]:
    """Which source answers what, for the sidebar."""
    return {
        "time series": "Prometheus" if sources.prometheus else "daemon",
        "current state": "daemon" if sources.daemon else "Prometheus",
    }
