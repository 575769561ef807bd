"""Every dashboard page driven by Streamlit's AppTest against a live daemon and a stopped one."""

from __future__ import annotations

import json
import socket

import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import REPO

APP = str(REPO / "dashboard" / "app.py")


@pytest.fixture
def app(monkeypatch, tmp_path):
    def open_app(url: str) -> AppTest:
        monkeypatch.setenv("OMNITUNE_DAEMON_URL", url)
        monkeypatch.setenv("OMNITUNE_RUNS_DIR", str(tmp_path / "runs"))
        return AppTest.from_file(APP, default_timeout=60).run()

    return open_app


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


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
    "page", ["pages/overview.py", "pages/drift.py", "pages/safety.py", "pages/runs.py"]
)
def test_a_stopped_daemon_gives_a_banner_not_a_traceback(app, page):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    at = app(f"http://127.0.0.1:{port}").switch_page(page).run()
    assert not at.exception
    assert any("Monitor daemon unavailable" in e.value for e in at.error)
