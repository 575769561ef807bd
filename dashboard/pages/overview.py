"""Overview: traffic, errors and latency per model and adapter, alerts, source reachability."""

from __future__ import annotations

import time

import streamlit as st

from omnitune.dashboard import series, views

config = views.settings()
st.title("Overview")


def reachability(source: object, up: bool) -> str:
    if source is None:
        return "not configured"
    return "up" if up else "down"


@st.fragment(run_every=st.session_state.get("refresh_s"))
def overview() -> None:
    sources = config.sources
    daemon_up = sources.daemon is not None and views.shown(sources.daemon.status) is not None
    prometheus_up = sources.prometheus is not None and sources.prometheus.reachable()
    if sources.prometheus is not None and not prometheus_up:
        st.error(f"Prometheus unavailable: {sources.prometheus.url} is not answering.")
    left, right = st.columns(2)
    left.metric(
        "Daemon",
        reachability(sources.daemon, daemon_up),
        help=sources.daemon.url if sources.daemon else None,
    )
    right.metric(
        "Prometheus",
        reachability(sources.prometheus, prometheus_up),
        help=sources.prometheus.url if sources.prometheus else None,
    )
    if not (daemon_up or prometheus_up):
        return
    counts = views.shown(series.request_counts, sources)
    if counts is not None:
        columns = st.columns(len(counts) + 1)
        columns[0].metric("Requests (all models)", f"{sum(counts.values()):,.0f}")
        for column, (name, count) in zip(columns[1:], sorted(counts.items()), strict=True):
            column.metric(f"{name} requests", f"{count:,.0f}")
    alerts = views.shown(series.alerts, sources)
    if alerts is not None:
        st.subheader(f"Active alerts: {len(alerts)}")
        if not alerts.empty:
            views.table(alerts)
    traffic = views.shown(series.traffic, sources, views.time_range())
    if traffic is None:
        return
    traffic["series"] = traffic["model"] + " / " + traffic["adapter"].replace("", "-")
    views.line_chart(traffic, "requests_per_s", "Requests per second")
    views.line_chart(traffic, "error_rate", "Error rate", axis_format=".1%")
    latency = traffic.melt(
        id_vars=["time", "series"], value_vars=["p50", "p95", "p99"], var_name="quantile"
    )
    latency["series"] = latency["series"] + " " + latency["quantile"]
    views.line_chart(latency, "value", "Latency (s): p50, p95, p99")
    source = "Prometheus" if sources.prometheus else "the daemon's events"
    st.caption(f"Time series from {source}. Updated {time.strftime('%H:%M:%S')}")


overview()
