"""Drift: each feature's score against its threshold now and over time, which features drifted
first, and reference-vs-current distributions (histograms, category shares, a 2-D projection of
embeddings)."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from omnitune.dashboard import data, series, views

config = views.settings()
st.title("Drift")


def score_bars(table: pd.DataFrame) -> alt.LayerChart:
    """Each feature's score as a bar with a tick at its threshold."""
    base = alt.Chart(table).encode(y=alt.Y("feature:N", title=None))
    bars = base.mark_bar().encode(x=alt.X("score:Q"), color="drifted:N")
    ticks = base.mark_tick(color="black", thickness=2, size=18).encode(x="threshold:Q")
    return alt.layer(bars, ticks).facet(row="model:N")


def distribution(sample: dict) -> alt.Chart | None:
    """The reference and current samples of one feature, drawn for its kind."""
    if sample["kind"] == "categorical":
        rows = [
            {"category": c, "share": n / max(1, sum(counts.values())), "sample": side}
            for side in ("reference", "current")
            for counts in [sample[side]]
            for c, n in counts.items()
        ]
        return (
            alt.Chart(pd.DataFrame(rows), title="Category shares")
            .mark_bar()
            .encode(
                x="share:Q", y=alt.Y("category:N", title=None), color="sample:N", yOffset="sample:N"
            )
        )
    if sample["kind"] == "embedding":
        if len(sample["reference"]) < 3 or len(sample["reference"][0]) < 2:
            return None
        points = data.projection(sample["reference"], sample["current"])
        return (
            alt.Chart(points, title="Embeddings on their first two principal components")
            .mark_circle(opacity=0.5)
            .encode(x="pc1:Q", y="pc2:Q", color="sample:N", tooltip=["sample:N"])
        )
    values = pd.concat(
        [
            pd.DataFrame({"value": sample["reference"], "sample": "reference"}),
            pd.DataFrame({"value": sample["current"], "sample": "current"}),
        ]
    )
    if values.empty:
        return None
    return (
        alt.Chart(values, title="Reference vs current")
        .transform_joinaggregate(total="count()", groupby=["sample"])
        .transform_bin("bin", "value", bin=alt.Bin(maxbins=40))
        .transform_aggregate(count="count()", total="max(total)", groupby=["sample", "bin"])
        .transform_calculate(share="datum.count / datum.total")
        .mark_bar(opacity=0.5)
        .encode(
            # A binned x needs the bin's end too: without x2, Vega drew no bar at all.
            x=alt.X("bin:Q", title=None, bin="binned"),
            x2="bin_end:Q",
            y=alt.Y("share:Q", stack=None, title="share of sample"),
            color="sample:N",
        )
    )


@st.fragment(run_every=st.session_state.get("refresh_s"))
def drift_page() -> None:
    sources = config.sources
    table = views.shown(series.drift_now, sources)
    if table is None:
        return
    if table.empty:
        st.info("No drift evaluation yet: each model needs `window.min_events` events.")
        return
    features = table.drop_duplicates(["model", "feature"])
    drifting = table[table["drifted"]].drop_duplicates(["model", "feature"])
    warned = table[table["warning"] & ~table["drifted"]].drop_duplicates(["model", "feature"])
    left, right = st.columns(2)
    left.metric("Features drifting", f"{len(drifting)} of {len(features)}")
    right.metric("Immaterial alarms (warnings)", len(warned))
    span = views.time_range()
    history = views.shown(series.drift, sources, span)
    if history is not None and sources.daemon is not None:
        # Prometheus holds every test; keep the one that decides each feature.
        deciding = table[["model", "feature", "test"]]
        history = history.merge(deciding, on=["model", "feature", "test"])
    onsets = views.shown(series.drift_onsets, sources, span)
    if onsets is not None and not onsets.empty:
        first = onsets.iloc[0]
        st.warning(f"First to drift: {first['model']} / {first['feature']} since {first['since']}")
    views.table(table)
    st.caption(
        "delay_events / delay_s: from the estimated change point to the calibrated alarm. "
        "warning: an alarm whose shift is below the model's materiality gate (drift.material)."
    )
    st.altair_chart(score_bars(table), width="stretch")
    if history is not None:
        history["series"] = (
            history["model"] + " " + history["feature"] + " (" + history["test"] + ")"
        )
        # symlog: an alarmed feature sits thousands of times over its threshold while the
        # others stay under 1, which a linear axis flattens onto the zero line.
        views.line_chart(
            history,
            "ratio",
            "Score ÷ threshold over time (drift at 1)",
            rule=1.0,
            y_scale="symlog",
        )

    st.subheader("Reference vs current")
    model = st.selectbox("Model", sorted(features["model"].unique()))
    feature = st.selectbox("Feature", sorted(features[features["model"] == model]["feature"]))
    sample = views.shown(series.drift_sample, sources, model, feature)
    if sample is None:
        return
    chart = distribution(sample)
    if chart is None:
        st.caption("No values of this feature yet.")
    else:
        st.altair_chart(chart, width="stretch")
    current = sample["current"]
    count = sum(current.values()) if isinstance(current, dict) else len(current)
    st.caption(f"{sample['kind']} feature; {count} values in the current window")


drift_page()
