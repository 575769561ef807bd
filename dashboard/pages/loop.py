"""The loop: a model's served versions, the gate report that let each in, and the serving
version against its canary, live."""

from __future__ import annotations

import json

import altair as alt
import pandas as pd
import streamlit as st

from omnitune.dashboard import data, series, views

config = views.settings()
st.title("Loop")
root = config.registry
models = data.registry_models(root)
if not models:
    st.info(
        f"No served versions under {root} yet: `omnitune loop promote RUN --model NAME` "
        "registers the serving run as v1 (see docs/loop.md)."
    )
    st.stop()

model = st.selectbox("Model", models)
state = data.registry_state(root, model)
left, right, third = st.columns(3)
left.metric("Serving", state.get("serving") or "none")
canary = state.get("canary")
share = state["versions"].get(canary, {}).get("canary_share", 0) if canary else 0
right.metric("Canary", f"{canary} ({share:.0%})" if canary else "none")
third.metric("Versions", len(state["versions"]))
st.subheader("Versions")
views.table(data.versions_table(state))

gated = [v for v in state["versions"] if (root / model / v / "gate.json").is_file()]
st.subheader("Gate reports")
if not gated:
    st.caption("No version got in through a gate yet (the first version needs none).")
else:
    chosen = st.selectbox("Version", gated, index=len(gated) - 1)
    report = json.loads((root / model / chosen / "gate.json").read_text())
    level = f"{report['settings']['confidence']:.0%}"
    verdict = "promote" if report["decision"] == "promote" else "reject"
    st.markdown(f"**{chosen}: {verdict}**. " + " ".join(report["reasons"]))
    table = data.gate_table(report)
    views.table(table)
    shown = table.assign(row=table["slice"] + " · " + table["metric"])
    bars = alt.Chart(shown, title=f"Challenger's gain over the champion ({level} interval)")
    rows = alt.Y("row:N", title=None, sort=None, axis=alt.Axis(labelLimit=400))
    interval = bars.mark_rule().encode(y=rows, x=alt.X("low:Q", title="gain"), x2="high:Q")
    point = bars.mark_point(filled=True, size=60).encode(
        y=rows,
        x="gain:Q",
        color=alt.Color("slice:N", title=None, legend=alt.Legend(orient="bottom")),
        tooltip=["slice", "metric", alt.Tooltip("gain:Q", format="+.4f"), "low", "high"],
    )
    zero = alt.Chart(pd.DataFrame({"gain": [0.0]})).mark_rule(strokeDash=[4, 4]).encode(x="gain:Q")
    st.altair_chart(alt.layer(interval, point, zero), width="stretch")

st.subheader("Serving version and canary, live")
compared = views.shown(series.compare, config.sources, model, views.time_range())
if compared is None:
    pass  # the banner said why (or the daemon does not monitor this model: below)
elif compared.empty:
    st.caption(f"No calls of {model} in this time range.")
else:
    views.table(compared)
    latency = compared.melt(
        id_vars="version", value_vars=["p50_s", "p95_s"], var_name="quantile", value_name="s"
    ).dropna()
    chart = (
        alt.Chart(latency, title="Latency by version (s)")
        .mark_bar()
        .encode(
            x=alt.X("version:N", title=None),
            xOffset="quantile:N",
            y=alt.Y("s:Q", title=None),
            color=alt.Color("quantile:N", title=None, legend=alt.Legend(orient="bottom")),
            tooltip=["version", "quantile", alt.Tooltip("s:Q", format=".3g")],
        )
    )
    st.altair_chart(chart, width="stretch")
