"""The omnitune health dashboard: `omnitune dashboard` runs this with Streamlit."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from omnitune.dashboard import series, views

PAGES = Path(__file__).resolve().parent / "pages"
RANGES = {"5 min": 5, "15 min": 15, "1 h": 60, "6 h": 360, "24 h": 1440}

st.set_page_config(page_title="omnitune health", layout="wide")
refresh = st.sidebar.selectbox("Auto-refresh", ["off", "5 s", "15 s", "60 s"], index=2)
st.session_state["refresh_s"] = None if refresh == "off" else float(refresh.split()[0])
span = st.sidebar.selectbox("Time range", list(RANGES), index=1)
st.session_state["range_minutes"] = RANGES[span]
config = views.settings()
for what, source in series.describe(config.sources).items():
    st.sidebar.caption(f"{what}: {source}")
navigation = st.navigation(
    [
        st.Page(PAGES / "overview.py", title="Overview", default=True),
        st.Page(PAGES / "drift.py", title="Drift"),
        st.Page(PAGES / "safety.py", title="Safety"),
        st.Page(PAGES / "review.py", title="Review"),
        st.Page(PAGES / "runs.py", title="Training runs"),
        st.Page(PAGES / "loop.py", title="Loop"),
    ]
)
navigation.run()
