"""The dashboard in Debian's headless Chromium (driven by Selenium and Debian's chromedriver):
the overview renders the live request count, and a screenshot is saved with the test output."""

from __future__ import annotations

import pytest

from tests.dashboard.conftest import start_dashboard
from tests.monitor.conftest import free_port

pytestmark = pytest.mark.browser


def test_overview_renders_the_live_request_count(live_daemon, tmp_path):
    from omnitune.dashboard.browser import BrowserMissing, headless_chromium, wait_for_overview

    daemon, _ = live_daemon
    port = free_port()
    app = start_dashboard("--daemon", daemon.url, "--runs", str(tmp_path), port=port)
    browser = None
    try:
        try:
            browser = headless_chromium(tmp_path / "chromium")
        except BrowserMissing as exc:
            pytest.fail(f"{exc} (`make test` installs them)")
        text = wait_for_overview(browser, f"http://127.0.0.1:{port}/")
        screenshot = tmp_path / "dashboard-overview.png"
        browser.save_screenshot(str(screenshot))
        lines = text.splitlines()
        count = lines[lines.index("Requests (all models)") + 1]
        assert count == "600"
        assert "Active alerts: 1" in text
        assert screenshot.stat().st_size > 10_000
    finally:
        if browser is not None:
            browser.quit()
        app.terminate()
        app.wait(timeout=30)
