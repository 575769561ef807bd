"""Every dashboard page driven by Streamlit's AppTest against a live daemon and a stopped one."""

from __future__ import annotations

import json
import socket

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from streamlit.testing.v1 import AppTest

from omnitune.monitor import traffic
from tests.monitor.conftest import start_daemon


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def charts(at: AppTest) -> dict[str, pd.DataFrame]:
    """Each titled Altair chart on the page, by title, with the data it was given."""
    found = {}
    for chart in at.get("vega_lite_chart"):
        spec = json.loads(chart.proto.spec)
        titles = [spec.get("title"), *(layer.get("title") for layer in spec.get("layer", []))]
        title = next((t for t in titles if t), None)
        data = chart.proto.datasets[0].data.data
        found[title] = pa.ipc.open_stream(data).read_all().to_pandas()
    return found


def x_axis(at: AppTest, title: str) -> dict:
    """The Vega-Lite x axis of the chart titled `title`."""
    for chart in at.get("vega_lite_chart"):
        spec = json.loads(chart.proto.spec)
        for part in [spec, *spec.get("layer", [])]:
            if part.get("title") == title:
                return part["encoding"]["x"]["axis"]
    raise AssertionError(f"no chart titled {title!r}")


@pytest.mark.parametrize(
    ("span_seconds", "label"),
    [
        (0, "%H:%M:%S"),
        (3, "%H:%M:%S"),
        (600, "%H:%M"),
        (6 * 3600, "%H:%M"),
        (3 * 86400, "%b %d %H:%M"),
        (30 * 86400, "%b %d"),
        (400 * 86400, "%b %Y"),
    ],
)
def test_time_axes_tick_at_most_every_second_with_labels_for_the_range(span_seconds, label):
    """A plain tick count with a minimum step of a second (the browser test checks that the
    lines draw: an interval-object tick count made Vega throw and draw nothing)."""
    from omnitune.dashboard.views import MAX_TIME_TICKS, time_axis

    times = pd.Series(pd.to_datetime([1_796_000_000, 1_796_000_000 + span_seconds], unit="s"))
    axis = time_axis(times).to_dict()
    assert axis["format"] == label
    assert axis["tickCount"] == MAX_TIME_TICKS and axis["tickMinStep"] == 1000


def select(at: AppTest, label: str, value: str) -> AppTest:
    next(box for box in at.selectbox if box.label == label).select(value)
    return at.run()


def test_overview_shows_live_counts_and_alerts(app, live_daemon):
    daemon, _ = live_daemon
    at = app(daemon.url)
    assert not at.exception
    shown = metrics(at)
    assert shown["Daemon"] == "up" and shown["Prometheus"] == "not configured"
    assert shown["Requests (all models)"] == "600" and shown["assistant requests"] == "600"
    assert at.subheader[0].value == "Active alerts: 1"
    assert "upper_ratio drifted" in at.dataframe[0].value["message"].iloc[0]


def test_drift_page_names_the_drifted_feature(app, live_daemon):
    daemon, _ = live_daemon
    at = app(daemon.url).switch_page("pages/drift.py").run()
    assert not at.exception
    assert metrics(at)["Features drifting"] == "1 of 6"
    assert at.warning[0].value.startswith("First to drift: assistant / upper_ratio")
    table = at.dataframe[0].value.set_index("feature")
    assert table.loc["upper_ratio", "drifted"] and not table.loc["chars", "drifted"]
    assert table.loc["upper_ratio", "score"] > table.loc["upper_ratio", "threshold"]
    # Over time, from the daemon's drift history: upper_ratio above its threshold, chars below.
    history = charts(at)["Score ÷ threshold over time (drift at 1)"]
    last = history.sort_values("time").groupby("feature")["ratio"].last()
    assert last["upper_ratio"] >= 1 > last["chars"]
    # Its time axis ticks on whole seconds (the test's history spans a few): no `.500` labels.
    axis = x_axis(at, "Score ÷ threshold over time (drift at 1)")
    assert axis["format"] == "%H:%M:%S" and axis["tickMinStep"] == 1000
    # Reference vs current histogram of the first feature in the list, both samples present.
    shares = charts(at)["Reference vs current"]
    assert set(shares["sample"]) == {"reference", "current"}


def test_safety_page_counts_and_shows_redacted_samples(app, live_daemon):
    daemon, planted = live_daemon
    at = app(daemon.url).switch_page("pages/safety.py").run()
    assert not at.exception
    flagged_events = sum(planted.pii.values()) + planted.jailbreak - 1  # event 359 has both
    assert metrics(at)["Flagged events (all time)"] == str(
        sum(planted.pii.values()) + planted.jailbreak
    )
    samples = at.dataframe[1].value
    assert len(samples) == 20 and flagged_events > 20
    assert not samples["output"].str.contains("4111|jane.doe").any()
    assert samples["output"].str.contains(r"\[PII_").any()


def test_runs_page_shows_curves_serving_adapter_and_captures(app, live_daemon, tmp_path):
    daemon, _ = live_daemon
    run = tmp_path / "runs" / "demo"
    run.mkdir(parents=True)
    rows = [{"kind": "train", "step": s, "loss": 3 - s / 10} for s in range(0, 30, 5)]
    rows += [{"kind": "eval", "step": 30, "loss": 0.5}]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (run / "config.yaml").write_text("output_dir: runs/demo\n")
    at = app(daemon.url).switch_page("pages/runs.py").run()
    assert not at.exception
    assert [s.value for s in at.subheader][:2] == ["train loss", "eval loss"]
    texts = [m.value for m in at.markdown]
    assert "assistant: adapter v1" in texts
    assert any(t.startswith("assistant: ") and "samples in" in t for t in texts)


@pytest.mark.parametrize(
    "page",
    ["pages/overview.py", "pages/drift.py", "pages/safety.py", "pages/review.py", "pages/runs.py"],
)
def test_a_stopped_daemon_gives_a_banner_not_a_traceback(app, page):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    at = app(f"http://127.0.0.1:{port}").switch_page(page).run()
    assert not at.exception
    assert any("Monitor daemon unavailable" in e.value for e in at.error)


def test_drift_page_projects_embeddings_and_shows_the_moved_cloud(app, monitor_config, tmp_path):
    rng = np.random.default_rng(0)

    def encoder_events(count: int, shift: float, seed: int) -> list[dict]:
        vectors = rng.normal(size=(count, 8))
        vectors[:, :2] += shift
        return [
            {"model": "encoder", "input": "a question", "features": {"embedding": v.tolist()}}
            | {"request_id": f"{seed}-{i}", "latency_s": 0.01}
            for i, v in enumerate(vectors)
        ]

    reference = traffic.write_events(
        tmp_path / "encoder-reference.jsonl", encoder_events(300, 0, 0)
    )
    config = monitor_config(models={"encoder": {"modality": "text", "reference": str(reference)}})
    daemon = start_daemon(config)
    try:
        assert daemon.post(encoder_events(300, 2.0, 1))[0] == 200
        daemon.evaluated()
        at = app(daemon.url).switch_page("pages/drift.py").run()
        at = select(select(at, "Model", "encoder"), "Feature", "embedding")
        assert not at.exception
        table = at.dataframe[0].value.set_index(["model", "feature"])
        assert table.loc[("encoder", "embedding"), "test"] == "mmd"
        assert table.loc[("encoder", "embedding"), "drifted"]
        points = charts(at)["Embeddings on their first two principal components"]
        assert (points["sample"] == "reference").sum() == 300
        assert (points["sample"] == "current").sum() == 300
        centres = points.groupby("sample")[["pc1", "pc2"]].mean()
        moved = np.linalg.norm(centres.loc["current"] - centres.loc["reference"])
        assert moved > 2.0  # the +2 shift on two of eight dimensions is √8 ≈ 2.8 away
    finally:
        daemon.stop()


def test_the_newest_traffic_bucket_is_a_rate_over_the_seconds_it_covered():
    """Traffic of 10 requests/s for 25 s in 10-s buckets: the newest bucket has 5 s of it, and
    its rate is 10/s, not 5/s (every live chart once ended in a dip)."""
    from omnitune.dashboard.data import traffic_over_time

    start = 1_796_000_000  # on a bucket boundary
    times = pd.to_datetime([start + i / 10 for i in range(250)], unit="s")
    frame = pd.DataFrame(
        {
            "time": times,
            "model": "m",
            "adapter": "v1",
            "id": range(250),
            "error": False,
            "latency_s": 0.1,
        }
    )
    rates = traffic_over_time(frame, "10s", now=start + 25)["requests_per_s"].tolist()
    assert rates == pytest.approx([10.0, 10.0, 10.0])
