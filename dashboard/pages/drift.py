"""Drift: each feature's score against its threshold, and which features drifted first."""

from __future__ import annotations

import json
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from omnitune.dashboard import data, views

config = views.settings()
st.title("Drift")
status = views.daemon_status(config)
if status is not None:
    table = data.drift_table(status)
    if table.empty:
        st.info("No drift evaluation yet: each model needs `window.min_events` events.")
    else:
        drifted = table[table["drifted"]].sort_values("since")
        st.metric("Features drifting", f"{len(drifted)} of {len(table)}")
        if not drifted.empty:
            first = drifted.iloc[0]
            st.warning(
                f"First to drift: {first['model']} / {first['feature']} since {first['since']}"
            )
        st.dataframe(table, hide_index=True)
        bars = (
            alt.Chart(table)
            .mark_bar()
            .encode(x=alt.X("score:Q"), y=alt.Y("feature:N"), color="drifted:N", row="model:N")
        )
        ticks = (
            alt.Chart(table)
            .mark_tick(color="black", thickness=2)
            .encode(x="threshold:Q", y="feature:N", row="model:N")
        )
        st.altair_chart(alt.layer(bars, ticks, data=table), width="stretch")
        model = st.selectbox("Model", sorted(table["model"].unique()))
        feature = st.selectbox("Feature", sorted(table[table["model"] == model]["feature"]))
        reference_path = status["models"][model]["reference"]
        events = views.daemon_events(config, limit=2000, model=model) or []
        current = [e["features"].get(feature) for e in events if e.get("features")]
        frames = [
            pd.DataFrame(
                {"value": [v for v in current if isinstance(v, (int, float))], "sample": "current"}
            )
        ]
        if (
            reference_path
            and Path(reference_path).suffix == ".json"
            and Path(reference_path).is_file()
        ):
            profile = json.loads(Path(reference_path).read_text())
            values = profile["features"].get(feature, {}).get("values", [])
            frames.append(pd.DataFrame({"value": values, "sample": "reference"}))
        both = pd.concat(frames)
        if both.empty:
            st.caption("No values of this feature yet.")
        else:
            histogram = (
                alt.Chart(both)
                .mark_bar(opacity=0.5)
                .encode(
                    x=alt.X("value:Q", bin=alt.Bin(maxbins=40)),
                    y=alt.Y("count():Q", stack=None),
                    color="sample:N",
                )
            )
            st.altair_chart(histogram, width="stretch")
