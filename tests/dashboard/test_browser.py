"""The dashboard in Debian's headless Chromium (driven by Selenium and Debian's chromedriver):
the overview renders the live request count, and a screenshot is saved with the test output."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request

import pytest

from tests.conftest import OMNITUNE, offline_env

pytestmark = pytest.mark.browser


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_overview_renders_the_live_request_count(live_daemon, tmp_path):
    from omnitune.dashboard.browser import BrowserMissing, headless_chromium, wait_for_overview

    daemon, _ = live_daemon
    port = _free_port()
    app = subprocess.Popen(
        [
            str(OMNITUNE),
            "dashboard",
            "--daemon",
            daemon.url,
            "--port",
            str(port),
            "--runs",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=offline_env(),
    )
    browser = None
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2)
                break
            except OSError:
                time.sleep(0.3)
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
