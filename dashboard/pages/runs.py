"""Training runs: loss and eval curves, the config, what is serving, captured datasets."""

from __future__ import annotations

import streamlit as st

from omnitune.dashboard import data, series, views

config = views.settings()
st.title("Training runs")
runs = data.find_runs(config.runs) if config.runs.is_dir() else []
if not runs:
    st.info(f"No runs with a metrics.jsonl under {config.runs}.")
else:
    run = st.selectbox("Run", runs, format_func=lambda p: str(p))
    metrics = data.run_metrics(run)
    for kind in ("train", "eval"):
        rows = metrics[metrics["kind"] == kind] if "kind" in metrics else metrics.iloc[0:0]
        if not rows.empty and "loss" in rows:
            st.subheader(f"{kind} loss")
            st.line_chart(rows.set_index("step")["loss"])
    config_file = run / "config.yaml"
    if config_file.is_file():
        with st.expander("Run config"):
            st.code(config_file.read_text(), language="yaml")

st.subheader("Serving now")
serving = views.shown(series.serving, config.sources)
if serving is not None:
    st.write(", ".join(f"{m}: adapter {a}" for m, a in serving) or "no recent events")
st.subheader("Captured samples waiting for re-training")
captured = views.shown(series.captured, config.sources)
if captured is not None:
    if captured.empty:
        st.caption("Capture is off in the daemon's config.")
    for row in captured.itertuples():
        where = f" in `{row.file}`" if row.file else ""
        st.write(f"{row.model}: {row.samples:,.0f} samples{where}")
