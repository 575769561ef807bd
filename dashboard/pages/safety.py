"""Safety: flag rates per category and side over time, and the latest flagged samples."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from omnitune.dashboard import series, views

config = views.settings()
st.title("Safety")


@st.fragment(run_every=st.session_state.get("refresh_s"))
def safety_page() -> None:
    sources = config.sources
    totals = views.shown(series.safety_totals, sources)
    if totals is None:
        return
    st.metric("Flagged events (all time)", f"{totals['count'].sum():,.0f}")
    if not totals.empty:
        views.table(totals)
    rates = views.shown(series.safety, sources, views.time_range())
    if rates is not None:
        rates["series"] = rates["model"] + " " + rates["flag"]
        views.line_chart(
            rates, "rate", "Share of requests flagged, per category@side", axis_format=".0%"
        )
    st.subheader("Latest flagged samples (redacted)")
    if sources.daemon is None:
        st.info("Samples are kept by the monitor daemon: give --daemon URL to see them.")
        return
    flagged = views.shown(sources.daemon.events, limit=20, flagged=1)
    if not flagged:
        st.caption("Nothing flagged yet.")
        return
    rows = [
        {
            "time": pd.to_datetime(e["ts"], unit="s").round("s"),
            "model": e["model"],
            "flags": ", ".join(e["flags"]),
            "input": e["input"] if isinstance(e.get("input"), str) else str(e.get("input")),
            "output": e.get("output"),
        }
        for e in reversed(flagged)
    ]
    views.table(pd.DataFrame(rows))


safety_page()
