"""The omnitune health dashboard: `omnitune dashboard` runs this with Streamlit."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

PAGES = Path(__file__).resolve().parent / "pages"

st.set_page_config(page_title="omnitune health", layout="wide")
refresh = st.sidebar.selectbox("Auto-refresh", ["off", "5 s", "15 s", "60 s"], index=2)
st.session_state["refresh_s"] = None if refresh == "off" else float(refresh.split()[0])
navigation = st.navigation(
    [
        st.Page(PAGES / "overview.py", title="Overview", default=True),
        st.Page(PAGES / "drift.py", title="Drift"),
        st.Page(PAGES / "safety.py", title="Safety"),
        st.Page(PAGES / "runs.py", title="Training runs"),
    ]
)
navigation.run()
