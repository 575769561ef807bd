"""Safety: flag rates per category and side over time, and the latest flagged samples."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from omnitune.dashboard import data, views

config = views.settings()
st.title("Safety")
status = views.daemon_status(config)
if status is not None:
    totals = {
        (model, flag): count
        for model, state in status["models"].items()
        for flag, count in state["safety"].items()
    }
    st.metric("Flagged events (all time)", f"{sum(totals.values()):,.0f}")
    if totals:
        st.dataframe(
            pd.DataFrame(
                [{"model": m, "category@side": f, "count": c} for (m, f), c in totals.items()]
            ),
            hide_index=True,
        )
    events = views.daemon_events(config, limit=5000) or []
    rates = data.safety_over_time(data.events_frame(events))
    rates["series"] = rates["model"] + " " + rates["flag"] if not rates.empty else []
    views.line_chart(rates, "rate", "Share of events flagged")
    flagged = views.daemon_events(config, limit=20, flagged=1) or []
    st.subheader("Latest flagged samples (redacted)")
    if flagged:
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "model": e["model"],
                        "flags": ", ".join(e["flags"]),
                        "input": e["input"] if isinstance(e["input"], str) else str(e["input"]),
                        "output": e["output"],
                    }
                    for e in reversed(flagged)
                ]
            ),
            hide_index=True,
        )
    else:
        st.caption("Nothing flagged yet.")
