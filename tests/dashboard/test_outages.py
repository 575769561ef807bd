"""The daemon and Prometheus going away and coming back while a dashboard session is open
(issue 18, dashboard): every page shows a banner naming the missing source, never a traceback,
and its data again once the source is back. Driven by Streamlit's AppTest (one session per
page, re-run at each phase) and by headless Chromium left open on the overview, which its
auto-refresh re-renders."""

from __future__ import annotations

import time

import pytest

from omnitune.monitor import traffic
from tests import reliability
from tests.dashboard.conftest import start_dashboard
from tests.dashboard.test_app import metrics
from tests.monitor.conftest import free_port, start_daemon, start_prometheus

pytestmark = [pytest.mark.prometheus, pytest.mark.reliability]

PAGES = ["pages/overview.py", "pages/drift.py", "pages/safety.py", "pages/runs.py"]
#: What each phase leaves running, and the banners every page may show in it.
PHASES = [
    ("both up", True, True),
    ("daemon down", False, True),
    ("both down", False, False),
    ("daemon back", True, False),
    ("both back", True, True),
]


class Sources:
    """A daemon and a Prometheus that can be stopped and started again on the same ports and
    the same data."""

    def __init__(self, monitor_config, folder) -> None:
        self.config = monitor_config()
        self.daemon_port = free_port()
        self.prometheus_folder = folder / "prometheus"
        self.prometheus_folder.mkdir()
        self.prometheus_port = free_port()
        self.daemon = start_daemon(self.config, port=self.daemon_port)
        self.prometheus = start_prometheus(
            self.daemon.url, self.prometheus_folder, self.prometheus_port
        )

    def set(self, daemon_up: bool, prometheus_up: bool) -> None:
        if daemon_up and self.daemon.process.poll() is not None:
            self.daemon = start_daemon(self.config, port=self.daemon_port)
        if not daemon_up and self.daemon.process.poll() is None:
            self.daemon.stop()
        running = self.prometheus.process.poll() is None
        if prometheus_up and not running:
            self.prometheus = start_prometheus(
                self.daemon.url, self.prometheus_folder, self.prometheus_port
            )
        if not prometheus_up and running:
            self.prometheus.stop()
        time.sleep(1.2)  # past the dashboard's 1-s reuse of a status answer

    def close(self) -> None:
        self.set(False, False)


@pytest.fixture
def sources(monitor_config, tmp_path):
    running = Sources(monitor_config, tmp_path)
    try:
        events, _ = traffic.make_events(400, shift_from=200, pii_every=40, start_ts=time.time())
        assert running.daemon.post(events)[0] == 200
        running.daemon.evaluated()
        running.prometheus.wait_for("sum(omnitune_events_total) == 400")
        yield running
    finally:
        running.close()


def test_every_page_survives_its_sources_going_away_and_coming_back(app, sources):
    sessions = {}
    rows = []
    for phase, daemon_up, prometheus_up in PHASES:
        sources.set(daemon_up, prometheus_up)
        banners = {}
        for page in PAGES:
            if page not in sessions:
                sessions[page] = app(sources.daemon.url, prometheus=sources.prometheus.url)
                sessions[page].switch_page(page)
            at = sessions[page].run()
            assert not at.exception, (phase, page, at.exception)
            errors = [e.value for e in at.error]
            banners[page] = errors
            assert not any("Traceback" in e for e in errors)
            named = {"Monitor daemon": any("Monitor daemon unavailable" in e for e in errors)}
            named["Prometheus"] = any("Prometheus unavailable" in e for e in errors)
            if page == "pages/overview.py":
                shown = metrics(at)
                assert shown["Daemon"] == ("up" if daemon_up else "down"), phase
                assert shown["Prometheus"] == ("up" if prometheus_up else "down"), phase
                if daemon_up or prometheus_up:
                    assert shown["Requests (all models)"] == "400", (phase, shown)
                assert named["Prometheus"] == (not prometheus_up), (phase, errors)
            if daemon_up and prometheus_up:
                assert not errors, (phase, page, errors)
            if not daemon_up and not prometheus_up:
                assert errors, (phase, page)
        rows.append(
            {
                "phase": phase,
                "pages rendered": len(PAGES),
                "tracebacks": 0,
                "pages with a banner": sum(1 for e in banners.values() if e),
            }
        )
    reliability.record(
        "dashboard-outages",
        "Dashboard sources going away and coming back",
        "One AppTest session per page (overview, drift, safety, runs) over a daemon and a "
        "Prometheus scraping it; each phase stops or restarts them (same ports, same store "
        "and time-series folder) and re-runs every page. The browser test leaves headless "
        "Chromium on the overview while both stop and start again: the auto-refresh shows the "
        "banner, then the counts, and never a traceback.",
        rows,
    )


@pytest.mark.browser
def test_an_open_browser_page_shows_the_outage_and_the_recovery(sources, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from omnitune.dashboard.browser import BrowserMissing, headless_chromium, wait_for_overview

    port = free_port()
    dashboard = start_dashboard(
        "--daemon",
        sources.daemon.url,
        "--prometheus",
        sources.prometheus.url,
        "--runs",
        str(tmp_path),
        port=port,
    )
    browser = None
    try:
        try:
            browser = headless_chromium(tmp_path / "chromium")
        except BrowserMissing as exc:
            pytest.fail(f"{exc} (`make test` installs them)")
        text = wait_for_overview(browser, f"http://127.0.0.1:{port}/")
        assert "Traceback" not in text

        def body() -> str:
            return browser.find_element(By.TAG_NAME, "body").text

        sources.set(False, False)  # the page stays open; its 15-s auto-refresh notices
        WebDriverWait(browser, 40).until(lambda _: "Prometheus unavailable" in body())
        assert "Traceback" not in body() and "Requests (all models)" not in body()
        sources.set(True, True)
        sources.prometheus.wait_for("sum(omnitune_events_total) == 400")
        WebDriverWait(browser, 40).until(
            lambda _: "Requests (all models)" in body() and "unavailable" not in body()
        )
        assert "Traceback" not in body()
    finally:
        if browser is not None:
            browser.quit()
        dashboard.terminate()
        dashboard.wait(timeout=30)
