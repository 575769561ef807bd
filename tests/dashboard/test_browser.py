"""The dashboard in Debian's headless Chromium (driven by Selenium and Debian's chromedriver), as
a person sees it: every page's charts drew their data marks (read from Vega's SVG scenegraph,
counted against the series the page plots), and the browser console holds no error. A chart
element with axes and no line, which this test once let through, fails here."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from omnitune.dashboard import series
from omnitune.dashboard.sources import Daemon
from tests.dashboard.conftest import start_dashboard, write_registry
from tests.monitor.conftest import free_port

pytestmark = pytest.mark.browser


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    from omnitune.dashboard.browser import BrowserMissing, headless_chromium

    try:
        driver = headless_chromium(tmp_path / "chromium")
    except BrowserMissing as exc:
        pytest.fail(f"{exc} (`make test` installs them)")
    yield driver
    driver.quit()


def write_run(runs: Path) -> None:
    """A finished run's metrics.jsonl: 10 train points and 3 evaluations."""
    run = runs / "text-lora"
    run.mkdir(parents=True)
    rows = [{"kind": "train", "step": 10 * i, "loss": 6.0 - 0.3 * i} for i in range(1, 11)]
    rows += [{"kind": "eval", "step": 50 * i, "loss": 5.5 - 0.4 * i} for i in range(3)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def by_title(marks: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    return {chart["title"]: chart["marks"] for chart in marks}


def open_page(browser: Any, page: str, text: str, charts: int) -> list[dict[str, Any]]:
    """Click `page` in the sidebar; its charts' marks once they drew, after checking that
    neither the browser's console nor Streamlit reported an error."""
    from selenium.webdriver.common.by import By

    from omnitune.dashboard.browser import console_errors, open_from_sidebar, wait_for_marks

    open_from_sidebar(browser, page, text, charts)
    marks = wait_for_marks(browser, charts)
    errors = console_errors(browser)
    assert not errors, errors
    raised = browser.find_elements(By.CSS_SELECTOR, "[data-testid='stException']")
    assert not raised, [e.text for e in raised]
    return marks


def points(frame: Any, column: str) -> int:
    return int(frame[column].notna().sum())


def test_every_page_draws_its_charts_and_logs_no_error(live_daemon, browser, tmp_path):
    daemon, _ = live_daemon
    runs = tmp_path / "runs"
    write_run(runs)
    port = free_port()
    registry = write_registry(tmp_path / "registry")
    app = start_dashboard(
        "--daemon", daemon.url, "--runs", str(runs), "--registry", str(registry), port=port
    )
    base = f"http://127.0.0.1:{port}"
    sources = series.Sources(Daemon(daemon.url), None)
    try:
        from omnitune.dashboard.browser import wait_for_overview

        wait_for_overview(browser, f"{base}/")
        overview = by_title(open_page(browser, "Overview", "Requests (all models)", 3))
        browser.save_screenshot(str(tmp_path / "dashboard-overview.png"))
        traffic = series.traffic(sources, series.TimeRange(15))
        requests = overview["Requests per second"]
        assert requests["line"] == 1 and requests["symbol"] == points(traffic, "requests_per_s")
        assert overview["Error rate"]["symbol"] == points(traffic, "error_rate")
        latency = overview["Latency (s): p50, p95, p99"]
        assert latency["line"] == 3
        assert latency["symbol"] == sum(points(traffic, q) for q in ("p50", "p95", "p99"))

        drift = open_page(browser, "Drift", "Features drifting", 3)
        browser.save_screenshot(str(tmp_path / "dashboard-drift.png"))
        features = len(series.drift_now(sources).drop_duplicates(["model", "feature"]))
        assert drift[0]["marks"]["rect"] == 2 * features  # a bar and a threshold tick each
        history = by_title(drift)["Score ÷ threshold over time (drift at 1)"]
        assert history["line"] == features and history["symbol"] >= features
        assert history["rule"] == 1  # the drift line at 1
        histogram = by_title(drift)["Reference vs current"]
        assert histogram["rect"] >= 2, histogram  # bars of both samples

        safety = by_title(open_page(browser, "Safety", "Flagged events", 1))
        rates = series.safety(sources, series.TimeRange(15))
        flagged = safety["Share of requests flagged, per category@side"]
        assert flagged["line"] == rates.groupby(["model", "flag"]).ngroups
        assert flagged["symbol"] == points(rates, "rate")

        trained = open_page(browser, "Training runs", "train loss", 2)
        assert [chart["marks"].get("line") for chart in trained] == [1, 1]

        loop = by_title(open_page(browser, "Loop", "Gate reports", 2))
        browser.save_screenshot(str(tmp_path / "dashboard-loop.png"))
        gains = loop["Challenger's gain over the champion (90% interval)"]
        assert gains["symbol"] == 4 and gains["rule"] == 4 + 1  # 4 intervals and the zero line
        latency = loop["Latency by version (s)"]
        assert latency["rect"] == 2  # p50 and p95 of v1, the only version with calls
    finally:
        app.terminate()
        app.wait(timeout=30)
