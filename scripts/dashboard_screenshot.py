"""Regenerate docs/images/dashboard-overview.png (the README's screenshot of the dashboard) and
docs/images/dashboard-drift.png (docs/dashboard.md's).

Starts a monitor daemon on the synthetic assistant traffic (scripts/make_monitor_traffic.py's
data: drift half way, PII and jailbreaks planted), the dashboard, and Debian's headless
Chromium; everything binds to 127.0.0.1 and stops at the end.

    python scripts/dashboard_screenshot.py
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

from omnitune.dashboard.browser import (
    console_errors,
    headless_chromium,
    open_from_sidebar,
    wait_for_marks,
    wait_for_overview,
)
from omnitune.monitor import traffic

REPO = Path(__file__).resolve().parent.parent
OMNITUNE = str(Path(sys.executable).parent / "omnitune")
IMAGES = REPO / "docs" / "images"


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="omnitune-shot-"))
    reference = traffic.write_reference(work / "reference.json")
    config = work / "monitor.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "store": {"path": str(work / "events.sqlite")},
                "models": {"assistant": {"modality": "text", "reference": str(reference)}},
                "drift": {"interval_s": 0.5},
                "capture": {"dir": str(work / "capture")},
            }
        )
    )
    daemon = subprocess.Popen(
        [OMNITUNE, "monitor", "serve", "--config", str(config), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    url = re.search(r"(http://[\d.]+:\d+)", daemon.stdout.readline()).group(1)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = None
    try:
        start = time.time() - 600  # ten minutes of traffic, ending now
        events, _ = traffic.make_events(
            3000, shift_from=1800, pii_every=40, jailbreak_every=45, start_ts=start
        )
        for event in events:
            event["ts"] = start + (event["ts"] - start) * 20  # 0.01 s apart -> 0.2 s apart
        log = traffic.write_events(work / "traffic.jsonl", events)
        subprocess.run([OMNITUNE, "monitor", "replay", str(log), "--url", url], check=True)
        time.sleep(1.5)
        app = subprocess.Popen(
            [
                OMNITUNE,
                "dashboard",
                "--daemon",
                url,
                "--port",
                str(port),
                "--runs",
                str(REPO / "runs"),
            ],
            stdout=subprocess.DEVNULL,
        )
        for _ in range(200):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2)
                break
            except OSError:
                time.sleep(0.3)
        browser = headless_chromium(work / "chromium")
        try:
            IMAGES.mkdir(parents=True, exist_ok=True)
            wait_for_overview(browser, f"http://127.0.0.1:{port}/")
            show(browser, wait_for_marks(browser, 3), "dashboard-overview.png")
            open_from_sidebar(browser, "Drift", "Features drifting", 3)
            show(browser, wait_for_marks(browser, 3), "dashboard-drift.png")
        finally:
            browser.quit()
        print(IMAGES / "dashboard-overview.png", IMAGES / "dashboard-drift.png")
    finally:
        if app is not None:
            app.terminate()
        daemon.terminate()


def show(browser, marks: list[dict], name: str) -> None:
    """Save the screenshot once every chart drew its marks; refuse an empty chart (the
    screenshots once showed grid lines and no data)."""
    from selenium.webdriver.common.by import By

    empty = [chart["title"] for chart in marks if not sum(chart["marks"].values())]
    if empty:
        sys.exit(f"{name}: these charts drew nothing: {empty}")
    raised = browser.find_elements(By.CSS_SELECTOR, "[data-testid='stException']")
    if raised:
        sys.exit(f"{name}: the page raised: {[e.text for e in raised]}")
    browser.save_screenshot(str(IMAGES / name))
    print(name, {chart["title"]: chart["marks"] for chart in marks}, console_errors(browser))


if __name__ == "__main__":
    main()
