"""What every page shares: settings from the environment, the sources, banners and charts.

`omnitune dashboard` passes its options as environment variables (OMNITUNE_DAEMON_URL,
OMNITUNE_DAEMON_TOKEN, OMNITUNE_PROMETHEUS_URL, OMNITUNE_RUNS_DIR), which Streamlit's AppTest
can set the same way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from omnitune.dashboard.sources import Daemon, Prometheus, SourceDown


@dataclass(frozen=True)
class Settings:
    daemon: Daemon
    prometheus: Prometheus | None
    runs: Path


def settings() -> Settings:
    prometheus = os.environ.get("OMNITUNE_PROMETHEUS_URL")
    return Settings(
        daemon=Daemon(
            os.environ.get("OMNITUNE_DAEMON_URL", "http://127.0.0.1:9108"),
            os.environ.get("OMNITUNE_DAEMON_TOKEN") or None,
        ),
        prometheus=Prometheus(prometheus) if prometheus else None,
        runs=Path(os.environ.get("OMNITUNE_RUNS_DIR", "runs")),
    )


def daemon_status(config: Settings) -> dict[str, Any] | None:
    """The daemon's status, or None after showing a banner that says why."""
    try:
        return config.daemon.status()
    except SourceDown as exc:
        st.error(f"Monitor daemon unavailable: {exc}. Start it with `omnitune monitor serve`.")
        return None


def daemon_events(config: Settings, **filters: Any) -> list[dict[str, Any]] | None:
    try:
        return config.daemon.events(**filters)
    except SourceDown as exc:
        st.error(f"Monitor daemon unavailable: {exc}.")
        return None


def line_chart(frame: pd.DataFrame, y: str, title: str, color: str = "series") -> None:
    if frame.empty:
        st.caption(f"{title}: no data yet")
        return
    chart = (
        alt.Chart(frame, title=title)
        .mark_line(point=True)
        .encode(x=alt.X("time:T", title=None), y=alt.Y(f"{y}:Q", title=None), color=f"{color}:N")
    )
    st.altair_chart(chart, width="stretch")
