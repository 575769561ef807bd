"""Debian's headless Chromium through Selenium, for the browser tests and the docs' screenshots.

The flags are the ones this closed-network machine needs: without the background-networking
ones Chromium keeps trying to reach Google's hosts. The browser's console log is kept, so a
test can check that a page raised no error, and `chart_marks` reads what each chart drew from
Vega's SVG scenegraph (Streamlit renders Vega-Lite as SVG): the test of a chart is that its
marks are there, not that the page has a chart element.
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
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(driver))


#: Per chart on the page, in page order: its title and, per mark type (line, symbol, rect,
#: rule, ...), how many marks Vega drew (a path with geometry, a line): an empty chart has
#: axes and grid lines but no data marks.
_CHART_MARKS = """
return Array.from(document.querySelectorAll("[data-testid='stVegaLiteChart']")).map(chart => {
  const title = chart.querySelector('g.role-title text');
  const marks = {};
  chart.querySelectorAll('g.role-mark').forEach(group => {
    const kind = Array.from(group.classList).find(c => c.startsWith('mark-'));
    if (!kind) return;
    const drawn = Array.from(group.children).filter(item =>
      item.tagName === 'line' || (item.tagName === 'path' && (item.getAttribute('d') || '') !== '')
    ).length;
    marks[kind.slice(5)] = (marks[kind.slice(5)] || 0) + drawn;
  });
  return {title: title ? title.textContent : '', marks: marks};
});
"""


def chart_marks(browser: Any) -> list[dict[str, Any]]:
    """`[{"title": ..., "marks": {"line": 1, "symbol": 61}}, ...]` for the page's charts."""
    return browser.execute_script(_CHART_MARKS)


def wait_for_marks(browser: Any, charts: int, timeout: float = 60) -> list[dict[str, Any]]:
    """The page's chart marks once `charts` charts have each drawn some data mark, or as they
    are when `timeout` runs out (the caller's assertions then say which chart is empty)."""
    import time

    deadline = time.monotonic() + timeout
    found = chart_marks(browser)
    while time.monotonic() < deadline:
        drawn = [c for c in found if sum(c["marks"].values()) > 0]
        if len(found) >= charts and len(drawn) == len(found):
            time.sleep(0.5)  # a re-render in flight (a fragment refresh) settles
            return chart_marks(browser)
        time.sleep(0.3)
        found = chart_marks(browser)
    return found


def console_errors(browser: Any) -> list[str]:
    """The browser console's errors since the last call (Vega's exceptions land there)."""
    return [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]


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


def open_from_sidebar(
    browser: Any, page: str, text: str, charts: int = 0, timeout: float = 60
) -> str:
    """Click `page` in the sidebar, as a person does, and wait until `text` and `charts` charts
    are on the page; returns its text. (Opening a page's own URL makes Streamlit probe
    PAGE/_stcore/health first, a 404 of its own in the console.)"""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    link = f"//*[@data-testid='stSidebarNav']//a[.//*[text()='{page}']]"
    browser.find_element(By.XPATH, link).click()
    WebDriverWait(browser, timeout).until(
        lambda b: (
            text in b.find_element(By.TAG_NAME, "body").text
            and len(b.find_elements(By.CSS_SELECTOR, "[data-testid='stVegaLiteChart']")) >= charts
        )
    )
    return browser.find_element(By.TAG_NAME, "body").text


def wait_for_overview(browser: Any, url: str, timeout: float = 60) -> str:
    """Open the overview and wait until its metrics and charts render; returns the page text."""
    return wait_for_page(browser, url, "Requests (all models)", 1, timeout)
