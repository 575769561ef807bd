"""Debian's headless Chromium through Selenium, for the browser test and the README screenshot.

The flags are the ones this closed-network machine needs: without the background-networking
ones Chromium keeps trying to reach Google's hosts.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1400",
)


class BrowserMissing(RuntimeError):
    pass


def headless_chromium(user_data: Path) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        raise BrowserMissing(
            "chromium and chromedriver are needed: apt-get install chromium chromium-driver"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*FLAGS, f"--user-data-dir={user_data}"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(driver))


def wait_for_page(browser: Any, url: str, text: str, charts: int = 1, timeout: float = 60) -> str:
    """Open `url` and wait until `text` and `charts` charts have rendered; returns the text."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    WebDriverWait(browser, timeout).until(
        lambda b: text in b.find_element(By.TAG_NAME, "body").text
    )
    WebDriverWait(browser, timeout).until(
        lambda b: len(b.find_elements(By.CSS_SELECTOR, "[data-testid='stVegaLiteChart']")) >= charts
    )
    return browser.find_element(By.TAG_NAME, "body").text


def wait_for_overview(browser: Any, url: str, timeout: float = 60) -> str:
    """Open the overview and wait until its metrics and charts render; returns the page text."""
    return wait_for_page(browser, url, "Requests (all models)", 1, timeout)
