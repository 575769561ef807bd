"""Figures that reliability tests measure, written into docs/reliability.md by the run.

A test calls `record(section, title, text, rows)` once its assertions passed; when the session
ends, each recorded section replaces its block between `<!-- figures:SECTION -->` markers in
docs/reliability.md (a new section is appended), stamped with the date and the machine. Runs
of a subset (`make reliability`, one test file) refresh only their own sections, so the page
always holds the figures of the last run of each test.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PAGE = Path(__file__).resolve().parent.parent / "docs" / "reliability.md"


@dataclass
class Section:
    title: str
    text: str
    rows: list[dict[str, Any]] = field(default_factory=list)


RECORDED: dict[str, Section] = {}


def record(section: str, title: str, text: str, rows: list[dict[str, Any]] | None = None) -> None:
    """Keep a section's figures for the page (the last call for a section wins)."""
    RECORDED[section] = Section(title, text, list(rows or []))


def add_row(section: str, title: str, text: str, row: dict[str, Any]) -> None:
    """Add one row to a section that several tests fill (each replaces its own row)."""
    if section not in RECORDED:
        RECORDED[section] = Section(title, text)
    rows = RECORDED[section].rows
    first = next(iter(row.values()))
    rows[:] = [r for r in rows if next(iter(r.values())) != first] + [row]


def table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def render(name: str, section: Section, when: str) -> str:
    body = [f"<!-- figures:{name} -->", f"### {section.title}", "", section.text.strip(), ""]
    if section.rows:
        body += [table(section.rows), ""]
    body += [f"*Measured {when}.*", f"<!-- /figures:{name} -->"]
    return "\n".join(body)


def write_page(page: Path = PAGE) -> None:
    """Replace or append every recorded section's block on the page."""
    if not RECORDED or not page.is_file():
        return
    when = (
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC on {platform.machine()}, "
        f"{os.cpu_count()} CPUs"
    )
    text = page.read_text(encoding="utf-8")
    for name, section in sorted(RECORDED.items()):
        block = render(name, section, when)
        pattern = re.compile(
            rf"<!-- figures:{re.escape(name)} -->.*?<!-- /figures:{re.escape(name)} -->", re.S
        )
        if pattern.search(text):
            text = pattern.sub(block.replace("\\", "\\\\"), text)
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
    page.write_text(text, encoding="utf-8")
