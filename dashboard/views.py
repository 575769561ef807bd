"""What every page shares: settings from the environment, the sources, banners and charts.

`omnitune dashboard` passes its options as environment variables (OMNITUNE_DAEMON_URL,
OMNITUNE_DAEMON_TOKEN, OMNITUNE_PROMETHEUS_URL, OMNITUNE_RUNS_DIR, OMNITUNE_REGISTRY_DIR),
which Streamlit's AppTest can set the same way. With only a Prometheus URL the daemon is left
out; with neither, the daemon is expected on its default address.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import altair as alt
import pandas as pd
import streamlit as st

from omnitune.dashboard.series import Sources, TimeRange
from omnitune.dashboard.sources import Daemon, Prometheus, SourceDown

DEFAULT_DAEMON = "http://127.0.0.1:9108"
T = TypeVar("T")


@dataclass(frozen=True)
class Settings:
    sources: Sources
    runs: Path
    registry: Path


def settings() -> Settings:
    prometheus_url = os.environ.get("OMNITUNE_PROMETHEUS_URL") or None
    daemon_url = os.environ.get("OMNITUNE_DAEMON_URL") or (
        None if prometheus_url else DEFAULT_DAEMON
    )
    daemon = (
        Daemon(daemon_url, os.environ.get("OMNITUNE_DAEMON_TOKEN") or None) if daemon_url else None
    )
    prometheus = Prometheus(prometheus_url) if prometheus_url else None
    return Settings(
        Sources(daemon, prometheus),
        Path(os.environ.get("OMNITUNE_RUNS_DIR", "runs")),
        Path(os.environ.get("OMNITUNE_REGISTRY_DIR", "registry")),
    )


def time_range() -> TimeRange:
    return TimeRange(st.session_state.get("range_minutes", 15))


def shown(read: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """`read(*args)`, or None after a banner naming the source that failed and why."""
    try:
        return read(*args, **kwargs)
    except SourceDown as exc:
        hint = " Start it with `omnitune monitor serve`." if exc.source == "Monitor daemon" else ""
        st.error(f"{exc.source} unavailable: {exc}.{hint}")
        return None


#: At most this many ticks on a time axis.
MAX_TIME_TICKS = 8


def time_axis(times: pd.Series) -> alt.Axis:
    """A time axis with at most MAX_TIME_TICKS ticks, never closer than a second apart, whose
    labels say what changes across the range. Vega-Lite's own choice put ticks between seconds
    on a short range (a demo's few seconds of drift history) and labelled every one `.500`.

    The tick count is a plain number with a minimum step (in milliseconds, the unit of a time
    scale): a `{"interval": ..., "step": ...}` tick count made the Vega build in Streamlit
    throw (`Cannot read properties of undefined (reading 'every')`) and draw no line at all."""
    values = pd.to_datetime(times.dropna())
    span = (values.max() - values.min()).total_seconds() if len(values) else 0.0
    if span < 60:
        label = "%H:%M:%S"
    elif span < 86400:
        label = "%H:%M"
    elif span < 365 * 86400:
        label = "%b %d %H:%M" if span < 7 * 86400 else "%b %d"
    else:
        label = "%b %Y"
    return alt.Axis(format=label, tickCount=MAX_TIME_TICKS, tickMinStep=1000, labelOverlap=True)


def table(frame: pd.DataFrame) -> None:
    """`st.dataframe` with empty cells shown empty (Streamlit writes a missing value as
    `None`: an alarm's delay before any alarm, an event without output). A column with a gap
    becomes text (numbers to 4 significant digits), since Arrow takes no column of "" mixed
    with numbers or times."""
    shown = frame.copy()
    for column in shown.columns:
        if shown[column].isna().any():
            shown[column] = [
                "" if pd.isna(v) else (f"{v:.4g}" if isinstance(v, float) else str(v))
                for v in shown[column]
            ]
    st.dataframe(shown, hide_index=True)


def line_chart(
    frame: pd.DataFrame,
    y: str,
    title: str,
    color: str = "series",
    rule: float | None = None,
    axis_format: str | None = None,
    y_scale: str | None = None,
) -> None:
    """A line per `color` over time; `rule` draws a horizontal line (a threshold) at that y;
    `axis_format` is a d3 format for the y axis (".0%" for shares); `y_scale` a Vega scale
    type ("symlog" where one series is thousands of times the others)."""
    if frame.empty or frame[y].isna().all():
        st.caption(f"{title}: no data in this time range yet")
        return
    chart = (
        alt.Chart(frame, title=title)
        .mark_line(point=True)
        .encode(
            x=alt.X("time:T", title=None, axis=time_axis(frame["time"])),
            y=alt.Y(
                f"{y}:Q",
                title=None,
                axis=alt.Axis(format=axis_format) if axis_format else alt.Undefined,
                scale=alt.Scale(type=y_scale) if y_scale else alt.Undefined,
            ),
            # Legend under the plot, untitled: a titled legend at the right overlapped the
            # next chart's title when the series names were long.
            color=alt.Color(f"{color}:N", title=None, legend=alt.Legend(orient="bottom")),
            tooltip=["time:T", f"{color}:N", alt.Tooltip(f"{y}:Q", format=".3g")],
        )
    )
    if rule is not None:
        line = alt.Chart(pd.DataFrame({y: [rule]})).mark_rule(strokeDash=[4, 4]).encode(y=f"{y}:Q")
        chart = alt.layer(chart, line)
    st.altair_chart(chart, width="stretch")
