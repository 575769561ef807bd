"""The Loop page in AppTest: the served versions, the gate report that let the canary in,
and the serving version against its canary from the daemon's live comparison."""

from __future__ import annotations

from omnitune.monitor import traffic
from tests.dashboard.conftest import write_registry
from tests.dashboard.test_app import charts, metrics
from tests.monitor.conftest import start_daemon


def test_the_loop_page_shows_versions_the_gate_and_the_live_canary(
    app, monkeypatch, monitor_config, tmp_path
):
    registry = write_registry(tmp_path / "registry")
    daemon = start_daemon(monitor_config())
    try:
        champion, _ = traffic.make_events(90, adapter="v1", seed=1)
        canary, _ = traffic.make_events(10, adapter="v2", seed=2, start_ts=1.8e9 + 1)
        assert daemon.post(champion + canary)[0] == 200
        monkeypatch.setenv("OMNITUNE_REGISTRY_DIR", str(registry))
        at = app(daemon.url)
        at.session_state["range_minutes"] = 10**7  # the synthetic events are dated 2027
        at = at.switch_page("pages/loop.py").run()
        assert not at.exception
        assert metrics(at) == {"Serving": "v1", "Canary": "v2 (20%)", "Versions": "2"}
        versions, gate, compared = (frame.value for frame in at.dataframe)
        assert list(versions["state"]) == ["serving", "canary (20%)"]
        assert list(versions["how"]) == ["first version", "gate: promote"]
        assert len(gate) == 4 and gate["deciding"].sum() == 2
        assert at.markdown[0].value.startswith("**v2: promote**")
        gains = charts(at)["Challenger's gain over the champion (90% interval)"]
        assert sorted(gains["gain"].round(2)) == [0.02, 0.05, 0.22, 0.49]
        by_version = compared.set_index("version")
        assert by_version.loc["v1", "events"] == 90 and by_version.loc["v2", "events"] == 10
        latency = charts(at)["Latency by version (s)"]
        assert set(latency["version"]) == {"v1", "v2"} and len(latency) == 4
    finally:
        daemon.stop()


def test_without_a_registry_the_page_says_how_to_start_one(app, monkeypatch, tmp_path):
    monkeypatch.setenv("OMNITUNE_REGISTRY_DIR", str(tmp_path / "nothing"))
    at = app(None, prometheus="http://127.0.0.1:9").switch_page("pages/loop.py").run()
    assert not at.exception
    assert "omnitune loop promote RUN --model NAME" in at.info[0].value
