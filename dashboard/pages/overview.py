"""Overview: traffic, errors and latency per model and adapter, alerts, source reachability."""

from __future__ import annotations

import time

import pandas as pd
import streamlit as st

from omnitune.dashboard import data, views

config = views.settings()
st.title("Overview")


@st.fragment(run_every=st.session_state.get("refresh_s"))
def overview() -> None:
    status = views.daemon_status(config)
    prometheus = "not configured"
    if config.prometheus is not None:
        prometheus = "up" if config.prometheus.reachable() else "down"
    left, right = st.columns(2)
    left.metric("Daemon", "up" if status else "down", help=config.daemon.url)
    right.metric("Prometheus", prometheus)
    if status is None:
        return
    total = sum(m["events_total"] for m in status["models"].values())
    columns = st.columns(len(status["models"]) + 1)
    columns[0].metric("Requests (all models)", f"{total:,.0f}")
    for column, (name, model) in zip(columns[1:], status["models"].items(), strict=True):
        column.metric(f"{name} requests", f"{model['events_total']:,.0f}")
    alerts = status["alerts"]
    st.subheader(f"Active alerts: {len(alerts)}")
    if alerts:
        table = pd.DataFrame(alerts)
        table["since"] = pd.to_datetime(table["since"], unit="s")
        st.dataframe(table[["kind", "model", "subject", "message", "since"]], hide_index=True)
    events = views.daemon_events(config, limit=5000)
    if not events:
        st.caption("No events yet.")
        return
    series = data.traffic_over_time(data.events_frame(events))
    series["series"] = series["model"] + " / " + series["adapter"].replace("", "-")
    views.line_chart(series, "requests_per_s", "Requests per second")
    views.line_chart(series, "error_rate", "Error rate")
    latency = series.melt(
        id_vars=["time", "series"], value_vars=["p50", "p95", "p99"], var_name="quantile"
    )
    latency["series"] = latency["series"] + " " + latency["quantile"]
    views.line_chart(latency, "value", "Latency (s): p50, p95, p99")
    st.caption(f"Updated {time.strftime('%H:%M:%S')}")


overview()
