"""The dashboard reading Prometheus (PromQL range queries, its alert API) instead of, and beside,
the daemon: a real Prometheus on loopback scrapes a live daemon while traffic arrives."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from omnitune.monitor import traffic
from tests.dashboard.test_app import charts, metrics
from tests.monitor.conftest import Daemon, Prometheus, free_port, start_daemon, start_prometheus

pytestmark = pytest.mark.prometheus


@pytest.fixture
def scraped(monitor_config, tmp_path) -> Iterator[tuple[Daemon, Prometheus, traffic.Planted]]:
    """600 events in three batches a few scrapes apart, all scraped by Prometheus."""
    daemon = start_daemon(monitor_config())
    folder = tmp_path / "prometheus"
    folder.mkdir()
    prometheus = start_prometheus(daemon.url, folder)
    try:
        prometheus.wait_for('up{job="omnitune-monitor"} == 1')
        events, planted = traffic.make_events(
            600, shift_from=300, pii_every=40, jailbreak_every=45, start_ts=time.time()
        )
        for batch in range(3):
            assert daemon.post(events[batch * 200 : (batch + 1) * 200])[0] == 200
            time.sleep(2.5)
        daemon.evaluated()
        prometheus.wait_for("sum(omnitune_events_total) == 600")
        prometheus.wait_for('omnitune_drift_detected{feature="upper_ratio"} == 1')
        prometheus.wait_for('ALERTS{alertname="OmnituneInputDrift"}')
        time.sleep(2)  # two more scrapes, so that rate() has points after the last batch
        yield daemon, prometheus, planted
    finally:
        prometheus.stop()
        daemon.stop()


def test_prometheus_alone_feeds_every_page(app, scraped):
    _, prometheus, planted = scraped
    at = app(None, prometheus=prometheus.url)
    assert not at.exception and not at.error
    shown = metrics(at)
    assert shown["Daemon"] == "not configured" and shown["Prometheus"] == "up"
    assert shown["Requests (all models)"] == "600"
    alerts = at.dataframe[0].value
    assert "OmnituneInputDrift" in set(alerts["kind"])
    assert alerts.set_index("kind").loc["OmnituneInputDrift", "subject"] == "upper_ratio"
    plotted = charts(at)
    requests = plotted["Requests per second"]
    assert set(requests["series"]) == {"assistant / v1"} and requests["requests_per_s"].max() > 0
    latency = plotted["Latency (s): p50, p95, p99"].dropna(subset=["value"])
    p95 = latency[latency["quantile"] == "p95"]["value"]
    assert not p95.empty and (p95 > 0.05).all() and (p95 <= 1.0).all()
    assert (plotted["Error rate"]["error_rate"].dropna() == 0).all()

    drift = at.switch_page("pages/drift.py").run()
    assert not drift.exception
    assert metrics(drift)["Features drifting"] == "1 of 6"
    assert drift.warning[0].value.startswith("First to drift: assistant / upper_ratio")
    history = charts(drift)["Score ÷ threshold over time (drift at 1)"]
    # Every test Prometheus holds: the calibrated statistic and the window's effect sizes.
    assert set(history["test"]) == {"cvm", "psi", "ks", "wasserstein"}
    psi = history[history["test"] == "psi"].sort_values("time").groupby("feature")["ratio"].last()
    assert psi["upper_ratio"] >= 1 > psi["chars"]
    assert any("needs it" in e.value for e in drift.error)  # distributions come from the daemon

    safety = at.switch_page("pages/safety.py").run()
    assert not safety.exception
    flagged = sum(planted.pii.values()) + planted.jailbreak
    assert metrics(safety)["Flagged events (all time)"] == str(flagged)
    rates = charts(safety)["Share of requests flagged, per category@side"]
    assert "assistant prompt_injection@input" in set(rates["series"])
    assert rates["rate"].max() <= 1

    runs = at.switch_page("pages/runs.py").run()
    assert not runs.exception
    assert "assistant: adapter v1" in [m.value for m in runs.markdown]


def test_with_both_sources_the_series_come_from_prometheus(app, scraped):
    daemon, prometheus, _ = scraped
    at = app(daemon.url, prometheus=prometheus.url)
    assert not at.exception
    shown = metrics(at)
    assert shown["Daemon"] == "up" and shown["Prometheus"] == "up"
    captions = [c.value for c in at.caption]
    assert "time series: Prometheus" in captions and "current state: daemon" in captions
    assert any(c.startswith("Time series from Prometheus") for c in captions)
    drift = at.switch_page("pages/drift.py").run()
    history = charts(drift)["Score ÷ threshold over time (drift at 1)"]
    assert set(history["test"]) == {"cvm"}  # the daemon says which test decides each feature
    assert "Reference vs current" in charts(drift)


def test_a_stopped_prometheus_gives_a_banner(app, live_daemon):
    daemon, _ = live_daemon
    at = app(daemon.url, prometheus=f"http://127.0.0.1:{free_port()}")
    assert not at.exception
    assert metrics(at)["Prometheus"] == "down" and metrics(at)["Daemon"] == "up"
    assert any(e.value.startswith("Prometheus unavailable") for e in at.error)


@pytest.mark.browser
def test_charts_drawn_from_prometheus_show_their_points_in_chromium(scraped, tmp_path):
    """The same pages over Prometheus alone, in headless Chromium: each chart drew a line and
    a point per sample Prometheus returned, and the console has no error."""
    from omnitune.dashboard import series
    from omnitune.dashboard.browser import (
        BrowserMissing,
        console_errors,
        headless_chromium,
        wait_for_marks,
        wait_for_page,
    )
    from omnitune.dashboard.sources import Prometheus as PrometheusSource
    from tests.dashboard.conftest import start_dashboard

    _, prometheus, _ = scraped
    port = free_port()
    dashboard = start_dashboard("--prometheus", prometheus.url, "--runs", str(tmp_path), port=port)
    try:
        browser = headless_chromium(tmp_path / "chromium")
    except BrowserMissing as exc:
        dashboard.terminate()
        pytest.fail(f"{exc} (`make test` installs them)")
    try:
        wait_for_page(browser, f"http://127.0.0.1:{port}/", "Requests (all models)", 3)
        marks = {c["title"]: c["marks"] for c in wait_for_marks(browser, 3)}
        assert not console_errors(browser)
        traffic = series.traffic(
            series.Sources(None, PrometheusSource(prometheus.url)), series.TimeRange(15)
        )
        requests = marks["Requests per second"]
        assert requests["line"] == 1
        # Prometheus gains a sample per scrape while the page is open: at least what we read.
        assert requests["symbol"] >= int(traffic["requests_per_s"].notna().sum()) - 2 > 0
        assert marks["Latency (s): p50, p95, p99"]["line"] == 3
    finally:
        browser.quit()
        dashboard.terminate()
        dashboard.wait(timeout=30)
